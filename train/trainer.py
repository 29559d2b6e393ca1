"""The training function shared by every launcher (plain process, torchrun DDP, Ray Train's TorchTrainer).

Reads top to bottom: config -> distributed setup -> data -> model -> optimizers -> resume -> one loop.
Any registered model works if it provides ``generator_parameters()``, ``discriminator_parameters()``,
``generator_step(batch) -> (loss, logs, images)``, ``discriminator_step(batch) -> (loss, logs)`` and
``model_config()``; the loss terms and their weights live in the model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from core.config import ConfigError, to_dict
from core.errors import BbstError
from train import distributed as D
from train.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from train.config import TrainConfig
from train.data import ShardPairLoader
from train.models import create_model
from train.step import bf16_autocast, make_optimizers, optimizer_step
from train.stylising import cannot_stylise

log = logging.getLogger("bbst.train")
IMAGE_ORDER = ("content", "style", "prior", "output")


class ResumeError(BbstError, ValueError):
    """A resume that cannot continue the run: no checkpoint, another model, or settings that may not change."""


# settings a resumed run must keep: they define the model, its data and the data order (data.root may move)
FIXED_ON_RESUME = ("model", "seed", "loader.seed", "data.content_subset", "data.style_subset", "data.crop_size",
                   "data.short_side_min", "data.short_side_max", "data.hflip", "data.style2",
                   "data.content_weights", "data.style_weights")
CONFIG_FILE = "config.yaml"


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def changed_on_resume(saved: dict, now: dict) -> list[str]:
    """``key (run: a, now: b)`` for every setting in :data:`FIXED_ON_RESUME` that differs."""
    a, b = _flatten(saved), _flatten(now)
    keys = sorted(k for k in set(a) | set(b) if any(k == f or k.startswith(f + ".") for f in FIXED_ON_RESUME))
    return [f"{k} (run: {a.get(k)!r}, now: {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]


def save_run_config(cfg: TrainConfig) -> str:
    """Write the resolved config to ``{logging.dir}/config.yaml``: ``--resume RUN`` rebuilds the run from it."""
    import yaml

    from core.atomic import atomic_write

    path = os.path.join(cfg.logging.dir, CONFIG_FILE)
    saved = json.loads(json.dumps(to_dict(cfg)))

    def pin(p: str) -> str:  # local paths made absolute: the run resumes from any working directory
        return p if not p or "://" in p else os.path.abspath(p)

    root = saved["data"]["root"]
    saved["data"]["root"] = [pin(r) for r in root] if isinstance(root, list) else pin(root)
    saved["logging"]["dir"], saved["checkpoint"]["dir"] = pin(cfg.logging.dir), pin(cfg.checkpoint.dir)
    text = yaml.safe_dump(saved, sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def resolve_run(config: str | None, sets: list[str], resume: bool | str) -> tuple[TrainConfig, bool | str]:
    """The config and the ``resume`` argument of :func:`train` for a command's ``--config``, ``--set``, ``--resume``.

    ``resume`` is a run folder (its ``config.yaml`` unless ``config`` is given, and its newest checkpoint), a
    checkpoint file (which describes its own run), True (the newest checkpoint of ``config``'s run) or False.
    """
    from core.config import load_config

    if isinstance(resume, str) and os.path.isdir(resume):
        run_config = os.path.join(resume, CONFIG_FILE)
        if not os.path.exists(run_config):
            raise ResumeError(f"--resume {resume}: not a run folder (no {CONFIG_FILE}); pass a run folder, a "
                              "checkpoint file, or --config with a bare --resume")
        cfg = load_config(TrainConfig, config or run_config, sets=sets)
        cfg.logging.dir = resume  # the folder the user named is the run, wherever it was started from
        return cfg, True
    if resume is True and not config:
        raise ResumeError("--resume without a run folder needs --config (or use --resume RUN)")
    if isinstance(resume, str) and not config:
        saved = load_checkpoint(resume)["config"]
        return load_config(TrainConfig, None, overrides=saved, sets=sets), resume
    return load_config(TrainConfig, config, sets=sets), resume


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def console_line(step: int, max_steps: int, logs: dict[str, float], sec_per_step: float, samples_per_step: int) -> str:
    """``step N/M | main losses | s/step | samples/s | ETA``: the one line a person reads; the rest is in the files."""
    main = [k for k in ("loss_g", "loss_d") if k in logs]
    losses = " ".join(f"{k} {logs[k]:.4f}" for k in main)
    rate = samples_per_step / sec_per_step if sec_per_step > 0 else 0.0
    eta = _duration((max_steps - step) * sec_per_step)
    return f"step {step}/{max_steps} | {losses} | {sec_per_step:.3f} s/step | {rate:.1f} samples/s | ETA {eta}"


def lr_at(step: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then the inverse decay lr0 / (1 + decay * step) of PAMA / ContraAST."""
    warm = min(1.0, (step + 1) / cfg.schedule.warmup_steps) if cfg.schedule.warmup_steps > 0 else 1.0
    return base * warm / (1.0 + cfg.schedule.lr_decay * step)


def checkpoint_dir(cfg: TrainConfig) -> str:
    return cfg.checkpoint.dir or os.path.join(cfg.logging.dir, "checkpoints")


def _image_grid(images: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    from torchvision.utils import make_grid

    names = [k for k in IMAGE_ORDER if k in images] + sorted(k for k in images if k not in IMAGE_ORDER)
    rows = [images[k][:n].detach().float().clamp(0, 1).cpu() for k in names]
    n = min(r.shape[0] for r in rows)
    size = rows[0].shape[-2:]
    rows = [torch.nn.functional.interpolate(r[:n], size=size, mode="bilinear") if r.shape[-2:] != size else r[:n]
            for r in rows]
    return make_grid(torch.cat(rows), nrow=n, padding=2)


def micro_batches_per_step(cfg: TrainConfig, world_size: int) -> int:
    """``optim.grad_accum``, or with ``optim.contrastive_batch`` the micro-batches that make up that many pairs."""
    if cfg.optim.contrastive_batch <= 0:
        return cfg.optim.grad_accum
    per_micro = cfg.loader.batch_size * world_size
    n, rest = divmod(cfg.optim.contrastive_batch, per_micro)
    if rest or n < 1:
        raise ConfigError(f"optim.contrastive_batch={cfg.optim.contrastive_batch} must be a multiple of "
                         f"loader.batch_size x world size = {per_micro}")
    if cfg.optim.grad_accum not in (1, n):
        raise ConfigError(f"optim.grad_accum={cfg.optim.grad_accum} contradicts optim.contrastive_batch="
                         f"{cfg.optim.contrastive_batch} ({n} micro-batches of {per_micro} pairs); set one of them")
    return n


def train(cfg: TrainConfig, resume: bool | str = False,
          on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.model.name`` on ``cfg.data``; ``resume`` = True (latest checkpoint) or a checkpoint path.

    Returns ``{"step", "logs", "checkpoint"}`` of the last step. ``on_log(step, logs)`` is called on every rank
    at every logging step (Ray Train reports through it).
    """
    # ---------------------------------------------------------------------------------------------- setup
    dist = D.setup(cfg.distributed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = dist.device
    autocast = bf16_autocast(device, cfg.optim.bf16)
    ckpt_dir = checkpoint_dir(cfg)
    if dist.is_main:
        os.makedirs(cfg.logging.dir, exist_ok=True)

    # ---------------------------------------------------------------------------------------------- data
    loader = ShardPairLoader(cfg.data, cfg.loader, rank=dist.rank, world_size=dist.world_size, device=device)
    samples_per_step = cfg.loader.batch_size * cfg.optim.grad_accum * dist.world_size

    # ---------------------------------------------------------------------------------------------- model
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank (and rank 0's is broadcast anyway)
    kwargs = {**cfg.model.kwargs, **({"style_loss": cfg.model.style_loss} if cfg.model.style_loss else {})}
    model = create_model(cfg.model.name, **kwargs).to(device)
    D.broadcast_module(model, dist)
    torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # per-rank randomness inside the steps (patch sampling)

    n_micro = micro_batches_per_step(cfg, dist.world_size)
    accumulate_logits = cfg.optim.contrastive_batch > 0
    if accumulate_logits and not hasattr(model, "contrastive_embeddings"):
        raise ConfigError(f"optim.contrastive_batch: model {cfg.model.name!r} has no contrastive terms to accumulate")

    # ---------------------------------------------------------------------------------------------- optimizers
    opts = make_optimizers(model, cfg.optim)
    opt_g, opt_d = opts.g, opts.d

    # ---------------------------------------------------------------------------------------------- resume
    step = 0
    if resume:
        path = resume if isinstance(resume, str) else latest_checkpoint(ckpt_dir)
        if path is None:
            raise ResumeError(f"--resume: no checkpoint in {ckpt_dir}")
        ck = load_checkpoint(path, map_location=device)
        if ck["model_name"] != cfg.model.name:
            raise ResumeError(f"{path}: checkpoint is for model {ck['model_name']!r}, config asks for "
                              f"{cfg.model.name!r}")
        changed = changed_on_resume(ck.get("config") or {}, to_dict(cfg))
        if changed:
            raise ResumeError(f"{path}: these settings cannot change on resume: {'; '.join(changed)}",
                              hint="drop those --set values, or start a new run in another logging.dir")
        model.load_state_dict(ck["model"])
        opt_g.load_state_dict(ck["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(ck["opt_d"])
        loader.load_state_dict(ck["loader"])  # every rank's: another world size re-deals the rest of the epoch
        if len(ck["rng"]) == dist.world_size:
            restore_rng_state(ck["rng"][dist.rank])
        step = int(ck["step"])
        if dist.is_main:
            log.info("resumed from %s at step %d (epoch %d)", path, step, loader.position.epoch)

    # ---------------------------------------------------------------------------------------------- logging
    writer = None
    metrics_path = os.path.join(cfg.logging.dir, "metrics.jsonl")
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(cfg.logging.dir, purge_step=step + 1 if step else None)
        if os.path.exists(metrics_path):  # drop lines a killed run wrote after its last checkpoint
            with open(metrics_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
            with open(metrics_path, "w") as f:
                f.writelines(kept)

    if dist.is_main:
        config_path = save_run_config(cfg)
        log.info("training %s on %d rank(s) x %d loader worker(s), %d samples/step; %d content samples = %d "
                 "steps/epoch; steps %d -> %d", cfg.model.name, dist.world_size, loader.num_workers,
                 samples_per_step, loader.samples_per_epoch(loader.position.epoch),
                 loader.batches_per_epoch(loader.position.epoch) // cfg.optim.grad_accum, step,
                 cfg.schedule.max_steps)
        cannot = cannot_stylise(model.model_config(), cfg.schedule.max_steps)
        if cannot:
            log.warning("this run cannot stylise: %s", cannot)
        log.info("run folder %s: config %s, metrics %s, TensorBoard events; checkpoints in %s "
                 "(continue with --resume %s)", cfg.logging.dir, config_path, metrics_path, ckpt_dir,
                 cfg.logging.dir)

    # ---------------------------------------------------------------------------------------------- checkpoints
    def write_checkpoint(step: int) -> str | None:
        """Every rank's loader and RNG state, and (rank 0) the checkpoint file; returns its path on rank 0."""
        loader_states = D.all_gather_object(loader.state_dict(), dist)
        rng_states = D.all_gather_object(capture_rng_state(), dist)
        path = None
        if dist.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model_name": cfg.model.name,
                "model_config": model.model_config(),
                "model": model.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict() if opt_d is not None else None,
                "loader": loader_states,
                "rng": rng_states,
                "step": step,
                "config": to_dict(cfg),
                "world_size": dist.world_size,
                "versions": {"torch": torch.__version__},
            }
            path = save_checkpoint(state, ckpt_dir, step, keep=cfg.checkpoint.keep)
            writer.flush()
        D.barrier(dist)
        return path

    last_ckpt = None
    if cfg.checkpoint.at_start and step == 0:  # the untrained model: the baseline a comparison starts from
        last_ckpt = write_checkpoint(0)

    # ---------------------------------------------------------------------------------------------- loop
    t_start, step_start = time.perf_counter(), step
    model.train()
    data_iter = iter(loader)
    last_logs: dict[str, float] = {}
    fixed: list[dict] = []
    t0 = time.perf_counter()
    while step < cfg.schedule.max_steps:
        lr_g, lr_d = lr_at(step, cfg.optim.lr, cfg), lr_at(step, cfg.optim.lr_d, cfg)
        for group in opt_g.param_groups:
            group["lr"] = lr_g
        if cfg.schedule.overfit_batches and fixed:
            micro = fixed
        else:
            micro = [next(data_iter) for _ in range(n_micro)]
            if cfg.schedule.overfit_batches:
                fixed = micro  # debugging mode: every step trains on these same micro-batches
        if opt_d is not None:
            for group in opt_d.param_groups:
                group["lr"] = lr_d
        result = optimizer_step(model, micro, opts, autocast=autocast, grad_clip=cfg.optim.grad_clip, dist=dist,
                                train_discriminator=cfg.schedule.d_every > 0 and step % cfg.schedule.d_every == 0,
                                contrastive=accumulate_logits, step=step)
        sums, images, grad_norm = result.logs, result.images, result.grad_norm
        step += 1

        # ------------------------------------------------------------------------------------------ logging
        if step % cfg.logging.log_every == 0 or step == cfg.schedule.max_steps:
            stats = loader.stats()
            logs = D.mean_across_ranks({**sums, **stats}, dist)
            for k in stats:  # counters: the sum over ranks
                logs[k] *= dist.world_size
            logs.update(lr=lr_g, epoch=float(micro[-1]["epoch"]))
            if cfg.optim.grad_clip > 0:
                logs["grad_norm_g"] = grad_norm
            keys = D.all_gather_object([(b["content_key"], b["style_key"]) for b in micro], dist)
            if dist.is_main:
                elapsed = time.perf_counter() - t0
                logs["sec_per_step"] = elapsed / cfg.logging.log_every
                for k, v in logs.items():
                    writer.add_scalar(k if "/" in k else f"train/{k}", v, step)
                record = {"step": step, **logs,
                          "content_keys": [[k for c, _ in rank for k in c] for rank in keys],
                          "style_keys": [[k for _, s in rank for k in s] for rank in keys]}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                log.info("%s", console_line(step, cfg.schedule.max_steps, logs, logs["sec_per_step"],
                                            samples_per_step))
            t0 = time.perf_counter()
            last_logs = logs
            if on_log is not None:
                on_log(step, logs)
        if dist.is_main and cfg.logging.image_every > 0 and step % cfg.logging.image_every == 0 and images:
            grid = _image_grid(images, cfg.logging.max_images)
            writer.add_image("images/" + "_".join(k for k in IMAGE_ORDER if k in images), grid, step)

        # ------------------------------------------------------------------------------------------ checkpoint
        if step % cfg.checkpoint.every == 0 or step == cfg.schedule.max_steps:
            last_ckpt = write_checkpoint(step)

    if writer is not None:
        writer.close()
        done = step - step_start
        log.info("finished at step %d/%d (%d steps in %s); last checkpoint %s; logs in %s (metrics.jsonl, "
                 "TensorBoard: tensorboard --logdir %s)", step, cfg.schedule.max_steps, done,
                 _duration(time.perf_counter() - t_start), last_ckpt or latest_checkpoint(ckpt_dir),
                 cfg.logging.dir, cfg.logging.dir)
    D.cleanup(dist)
    return {"step": step, "logs": last_logs, "checkpoint": last_ckpt}
