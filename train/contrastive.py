"""Contrastive terms over a large batch: logit accumulation (ALADIN / NeAT) across micro-batches and ranks.

A model with contrastive losses exposes

* ``contrastive_embeddings(batch) -> dict[name, ContrastiveTerm]``: the embeddings of one micro-batch with their
  group ids (two embeddings with the same group id are a positive pair) and the term's weight and temperature;
* ``generator_step(batch, contrastive_grads=None)``: with ``None`` the terms are computed inside the micro-batch as
  usual; with a dict ``{name: grad}`` the model skips them and adds the surrogate ``(embeddings * grad).sum()``, so
  back-propagating its loss sends exactly the big-batch gradient of each term into the network.

:func:`accumulated_contrastive_grads` is the three-step procedure the NeAT paper borrows from ALADIN:

1. embed every micro-batch of the optimizer step without gradients;
2. gather the embeddings of every rank and compute each contrastive loss over all of them (negatives from every
   micro-batch and every rank), taking the gradient with respect to the embeddings only;
3. hand each micro-batch its slice of that gradient; the trainer re-forwards the micro-batch with gradients and the
   surrogate term carries the slice through the network.

The result equals the gradient of one big batch (tests/test_contrastive.py checks it on CPU); memory is that of one
micro-batch plus an (N, D) embedding matrix. The cost is one extra forward per micro-batch without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.losses import stylization_contrastive


@dataclass
class ContrastiveTerm:
    embeddings: torch.Tensor  # (N, D) L2-normalised embeddings of one micro-batch's stylisations
    groups: torch.Tensor  # (N,) int64 group ids local to the micro-batch: equal ids are positives
    weight: float  # the term's loss weight in the model's total loss
    tau: float  # InfoNCE temperature

    def loss(self) -> torch.Tensor:
        """The term over this micro-batch alone (no accumulation), unweighted."""
        return group_contrastive(self.embeddings, self.groups, self.tau)


def group_contrastive(embeddings: torch.Tensor, groups: torch.Tensor, tau: float) -> torch.Tensor:
    """IEContraAST stylisation contrastive loss where positives are the other embeddings of the same group."""
    eye = torch.eye(len(groups), dtype=torch.bool, device=groups.device)
    positive = (groups[:, None] == groups[None, :]) & ~eye
    return stylization_contrastive(embeddings, positive, tau)


def _gather_rows(x: torch.Tensor, world_size: int) -> tuple[torch.Tensor, list[int]]:
    """Concatenate the rows of ``x`` from every rank (sizes may differ); returns (all rows, rows per rank)."""
    if world_size == 1:
        return x, [x.shape[0]]
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes_i), *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes_i)]), sizes_i


def accumulated_contrastive_grads(model: torch.nn.Module, micro: list[dict], rank: int = 0, world_size: int = 1,
                                  autocast: Callable[[], object] = nullcontext,
                                  ) -> tuple[list[dict[str, torch.Tensor]], dict[str, float]]:
    """Steps 1-2 of logit accumulation: per-micro-batch gradients of the big-batch contrastive losses.

    Returns ``(grads, logs)``: ``grads[m][name]`` is the gradient of ``weight * loss(all embeddings)`` with respect
    to micro-batch m's embeddings, pre-scaled so that the trainer's usual ``(loss_g / len(micro)).backward()``
    followed by a mean of gradients over ranks yields exactly the gradient of the big-batch loss. ``logs[name]`` is
    the unweighted big-batch loss (the same on every rank).
    """
    per_micro: list[dict[str, ContrastiveTerm]] = []
    with torch.no_grad(), autocast():
        for batch in micro:
            per_micro.append(model.contrastive_embeddings(batch))
    if not per_micro or not per_micro[0]:
        return [{} for _ in micro], {}
    names = list(per_micro[0])
    grads: list[dict[str, torch.Tensor]] = [{} for _ in micro]
    logs: dict[str, float] = {}
    for name in names:
        terms = [t[name] for t in per_micro]
        # group ids become unique per micro-batch, then per rank, so only true positives share an id
        offset, groups = 0, []
        for t in terms:
            groups.append(t.groups + offset)
            offset += int(t.groups.max()) + 1 if t.groups.numel() else 0
        local_emb = torch.cat([t.embeddings.float() for t in terms])
        local_groups = torch.cat(groups)
        all_emb, sizes = _gather_rows(local_emb, world_size)
        offsets = [0] * world_size
        if world_size > 1:
            spans, _ = _gather_rows(torch.tensor([offset], device=local_groups.device), world_size)
            offsets = torch.cumsum(torch.cat([spans.new_zeros(1), spans[:-1]]), 0).tolist()
        all_groups, _ = _gather_rows(local_groups + offsets[rank], world_size)
        leaf = all_emb.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = group_contrastive(leaf, all_groups, terms[0].tau)
            (grad,) = torch.autograd.grad(loss * terms[0].weight, leaf)
        logs[name] = float(loss.detach())
        start = sum(sizes[:rank])
        # x len(micro): the trainer divides each micro-batch loss by it; x world_size: gradients are averaged
        local_grad = grad[start:start + sizes[rank]] * (len(micro) * world_size)
        row = 0
        for m, t in enumerate(terms):
            n = t.embeddings.shape[0]
            grads[m][name] = local_grad[row:row + n].to(t.embeddings.dtype)
            row += n
    return grads, logs


def surrogate(term: ContrastiveTerm, grad: torch.Tensor) -> torch.Tensor:
    """Step 3: a scalar whose gradient w.r.t. the network is ``grad`` pushed through the re-forwarded embeddings."""
    if grad.shape != term.embeddings.shape:
        raise ValueError(f"contrastive gradient {tuple(grad.shape)} does not match the re-forwarded embeddings "
                         f"{tuple(term.embeddings.shape)}: the micro-batch changed between the two passes")
    return (term.embeddings.float() * grad.float()).sum()
