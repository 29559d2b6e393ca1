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
from contextlib import nullcontext
from typing import Any

import torch

from curate.config import to_dict
from train import distributed as D
from train.checkpoint import capture_rng_state, latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from train.config import TrainConfig
from train.data import ShardPairLoader
from train.models import create_model

log = logging.getLogger("bbst.train")
CHECKPOINT_FORMAT = "bbst-train-checkpoint-v1"
IMAGE_ORDER = ("content", "style", "prior", "output")


def lr_at(step: int, base: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then the inverse decay lr0 / (1 + decay * step) of PAMA / ContraAST."""
    warm = min(1.0, (step + 1) / cfg.schedule.warmup_steps) if cfg.schedule.warmup_steps > 0 else 1.0
    return base * warm / (1.0 + cfg.schedule.lr_decay * step)


def checkpoint_dir(cfg: TrainConfig) -> str:
    return cfg.checkpoint.dir or os.path.join(cfg.logging.dir, "checkpoints")


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    if max_norm > 0 and params:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return 0.0


def _image_grid(images: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    from torchvision.utils import make_grid

    names = [k for k in IMAGE_ORDER if k in images] + sorted(k for k in images if k not in IMAGE_ORDER)
    rows = [images[k][:n].detach().float().clamp(0, 1).cpu() for k in names]
    n = min(r.shape[0] for r in rows)
    size = rows[0].shape[-2:]
    rows = [torch.nn.functional.interpolate(r[:n], size=size, mode="bilinear") if r.shape[-2:] != size else r[:n]
            for r in rows]
    return make_grid(torch.cat(rows), nrow=n, padding=2)


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
    use_bf16 = cfg.optim.bf16 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext
    ckpt_dir = checkpoint_dir(cfg)
    if dist.is_main:
        os.makedirs(cfg.logging.dir, exist_ok=True)

    # ---------------------------------------------------------------------------------------------- data
    loader = ShardPairLoader(cfg.data, cfg.loader, rank=dist.rank, world_size=dist.world_size, device=device)

    # ---------------------------------------------------------------------------------------------- model
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank (and rank 0's is broadcast anyway)
    kwargs = {**cfg.model.kwargs, **({"style_loss": cfg.model.style_loss} if cfg.model.style_loss else {})}
    model = create_model(cfg.model.name, **kwargs).to(device)
    D.broadcast_module(model, dist)
    torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)  # per-rank randomness inside the steps (patch sampling)

    # ---------------------------------------------------------------------------------------------- optimizers
    g_params = [p for p in model.generator_parameters() if p.requires_grad]
    d_params = [p for p in model.discriminator_parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(g_params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)
    opt_d = torch.optim.Adam(d_params, lr=cfg.optim.lr_d, betas=tuple(cfg.optim.betas_d),
                             weight_decay=cfg.optim.weight_decay) if d_params else None

    # ---------------------------------------------------------------------------------------------- resume
    step = 0
    if resume:
        path = resume if isinstance(resume, str) else latest_checkpoint(ckpt_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
        ck = load_checkpoint(path, map_location=device)
        if ck["model_name"] != cfg.model.name:
            raise ValueError(f"{path}: checkpoint is for model {ck['model_name']!r}, config asks for "
                             f"{cfg.model.name!r}")
        if len(ck["loader"]) != dist.world_size:
            raise ValueError(f"{path}: written by {len(ck['loader'])} rank(s), now {dist.world_size}; the data "
                             f"stream only resumes exactly with the same world size")
        model.load_state_dict(ck["model"])
        opt_g.load_state_dict(ck["opt_g"])
        if opt_d is not None:
            opt_d.load_state_dict(ck["opt_d"])
        loader.load_state_dict(ck["loader"][dist.rank])
        restore_rng_state(ck["rng"][dist.rank])
        step = int(ck["step"])
        if dist.is_main:
            log.info("resumed from %s at step %d", path, step)

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

    # ---------------------------------------------------------------------------------------------- loop
    model.train()
    data_iter = iter(loader)
    last_logs: dict[str, float] = {}
    last_ckpt = None
    fixed: list[dict] = []
    t0 = time.perf_counter()
    while step < cfg.schedule.max_steps:
        lr_g, lr_d = lr_at(step, cfg.optim.lr, cfg), lr_at(step, cfg.optim.lr_d, cfg)
        for group in opt_g.param_groups:
            group["lr"] = lr_g
        if cfg.schedule.overfit_batches and fixed:
            micro = fixed
        else:
            micro = [next(data_iter) for _ in range(cfg.optim.grad_accum)]
            if cfg.schedule.overfit_batches:
                fixed = micro  # debugging mode: every step trains on these same micro-batches
        sums: dict[str, float] = {}

        def add(logs: dict[str, float], sums: dict[str, float] = sums, n: int = len(micro)) -> None:
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v) / n

        # discriminator first, on the same micro-batches the generator then trains on (detached outputs inside)
        if opt_d is not None and cfg.schedule.d_every > 0 and step % cfg.schedule.d_every == 0:
            for group in opt_d.param_groups:
                group["lr"] = lr_d
            opt_d.zero_grad(set_to_none=True)
            for batch in micro:
                with autocast():
                    loss_d, logs_d = model.discriminator_step(batch)
                (loss_d / len(micro)).backward()
                add({"loss_d": float(loss_d.detach()), **{k if "/" in k else f"d/{k}": v for k, v in logs_d.items()}})
            D.average_gradients(d_params, dist)
            _clip(d_params, cfg.optim.grad_clip)
            opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        images: dict[str, torch.Tensor] = {}
        for batch in micro:
            with autocast():
                loss_g, logs_g, images = model.generator_step(batch)
            if not torch.isfinite(loss_g):
                raise FloatingPointError(f"step {step}: generator loss is {float(loss_g)} "
                                         f"(content {batch['content_key']}, style {batch['style_key']})")
            (loss_g / len(micro)).backward()
            add({"loss_g": float(loss_g.detach()), **{k if "/" in k else f"g/{k}": v for k, v in logs_g.items()}})
        D.average_gradients(g_params, dist)
        grad_norm = _clip(g_params, cfg.optim.grad_clip)
        opt_g.step()
        step += 1

        # ------------------------------------------------------------------------------------------ logging
        if step % cfg.logging.log_every == 0 or step == cfg.schedule.max_steps:
            logs = D.mean_across_ranks(sums, dist)
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
                log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items())))
            t0 = time.perf_counter()
            last_logs = logs
            if on_log is not None:
                on_log(step, logs)
        if dist.is_main and cfg.logging.image_every > 0 and step % cfg.logging.image_every == 0 and images:
            grid = _image_grid(images, cfg.logging.max_images)
            writer.add_image("images/" + "_".join(k for k in IMAGE_ORDER if k in images), grid, step)

        # ------------------------------------------------------------------------------------------ checkpoint
        if step % cfg.checkpoint.every == 0 or step == cfg.schedule.max_steps:
            loader_states = D.all_gather_object(loader.state_dict(), dist)
            rng_states = D.all_gather_object(capture_rng_state(), dist)
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
                last_ckpt = save_checkpoint(state, ckpt_dir, step, keep=cfg.checkpoint.keep)
                writer.flush()
            D.barrier(dist)

    if writer is not None:
        writer.close()
    D.cleanup(dist)
    return {"step": step, "logs": last_logs, "checkpoint": last_ckpt}
