"""One optimiser step of a style-transfer model: the discriminator's, then the generator's, over micro-batches.

The trainer's loop and the training-step benchmarks call the same :func:`optimizer_step`, so a benchmark times
exactly what training does: for each optimiser, zero the gradients, forward and backward every micro-batch
(loss / number of micro-batches, under ``autocast``), average the gradients over ranks, clip, update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from train import distributed as D
from train.config import OptimConfig


@dataclass
class Optimizers:
    """The generator's Adam and (if the model has a discriminator) the discriminator's, with their parameters."""

    g: torch.optim.Optimizer
    d: torch.optim.Optimizer | None
    g_params: list[torch.nn.Parameter]
    d_params: list[torch.nn.Parameter]


@dataclass
class StepResult:
    logs: dict[str, float]  # means over the micro-batches: loss_d, d/<term>..., loss_g, g/<term>...
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # the last micro-batch's images (for grids)
    grad_norm: float = 0.0  # the generator's gradient norm before clipping (0 when grad_clip is off)


def make_optimizers(model: torch.nn.Module, cfg: OptimConfig) -> Optimizers:
    """Adam for ``model.generator_parameters()`` and, when there are any, ``model.discriminator_parameters()``."""
    g_params = [p for p in model.generator_parameters() if p.requires_grad]
    d_params = [p for p in model.discriminator_parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(g_params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=tuple(cfg.betas_d),
                             weight_decay=cfg.weight_decay) if d_params else None
    return Optimizers(opt_g, opt_d, g_params, d_params)


def bf16_autocast(device: torch.device, enabled: bool = True) -> Callable[[], AbstractContextManager]:
    """The autocast the trainer uses: bf16 on CUDA when ``enabled``, nothing otherwise."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def _clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    if max_norm > 0 and params:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return 0.0


def optimizer_step(model: torch.nn.Module, micro: Sequence[dict], opts: Optimizers, *,
                   autocast: Callable[[], AbstractContextManager] = nullcontext, train_discriminator: bool = True,
                   grad_clip: float = 0.0, dist: D.DistInfo | None = None, contrastive: bool = False,
                   step: int = 0) -> StepResult:
    """One optimiser step on the micro-batches ``micro`` (gradient accumulation when there are several).

    The discriminator steps first (when it exists and ``train_discriminator``), on the same micro-batches the
    generator then trains on (the models detach their outputs inside ``discriminator_step``). ``contrastive``:
    the big-batch contrastive gradients of ``train.contrastive`` first, then each micro-batch re-forwarded with
    its share. ``dist`` averages the gradients over ranks; ``step`` names the step in the error a non-finite
    generator loss raises.
    """
    sums: dict[str, float] = {}
    n = len(micro)

    def add(logs: dict[str, float]) -> None:
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + float(v) / n

    if opts.d is not None and train_discriminator:
        opts.d.zero_grad(set_to_none=True)
        for batch in micro:
            with autocast():
                loss_d, logs_d = model.discriminator_step(batch)
            (loss_d / n).backward()
            add({"loss_d": float(loss_d.detach()), **{k if "/" in k else f"d/{k}": v for k, v in logs_d.items()}})
        if dist is not None:
            D.average_gradients(opts.d_params, dist)
        _clip(opts.d_params, grad_clip)
        opts.d.step()

    opts.g.zero_grad(set_to_none=True)
    images: dict[str, torch.Tensor] = {}
    c_grads: list[dict[str, torch.Tensor]] = []
    if contrastive:
        from train.contrastive import accumulated_contrastive_grads

        rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
        c_grads, c_logs = accumulated_contrastive_grads(model, list(micro), rank, world, autocast)
        add({f"g/{k}": v * n for k, v in c_logs.items()})
    for i, batch in enumerate(micro):
        with autocast():
            if contrastive:
                loss_g, logs_g, images = model.generator_step(batch, contrastive_grads=c_grads[i])
            else:
                loss_g, logs_g, images = model.generator_step(batch)
        if not torch.isfinite(loss_g):
            raise FloatingPointError(f"step {step}: generator loss is {float(loss_g)} "
                                     f"(content {batch.get('content_key')}, style {batch.get('style_key')})")
        (loss_g / n).backward()
        add({"loss_g": float(loss_g.detach()), **{k if "/" in k else f"g/{k}": v for k, v in logs_g.items()}})
    if dist is not None:
        D.average_gradients(opts.g_params, dist)
    grad_norm = _clip(opts.g_params, grad_clip)
    opts.g.step()
    if hasattr(model, "after_optimizer_step"):  # models that schedule by update count (the variational KL warm-up)
        model.after_optimizer_step()
    return StepResult(sums, images, grad_norm)
