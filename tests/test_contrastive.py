"""train/contrastive.py: logit accumulation gives the gradient of one big batch (micro-batches and ranks, CPU)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train.contrastive import accumulated_contrastive_grads, group_contrastive
from train.models import create_model

TINY_NO_GAN = {"neat_tiny": {"w_adv": 0.0, "w_patch_simple": 0.0, "w_patch_complex": 0.0, "w_style_nce": 0.0},
               "rast_tiny": {"w_adv": 0.0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _micro(n: int, b: int = 2, size: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"content": torch.rand(b, 3, size, size, generator=g), "style": torch.rand(b, 3, size, size, generator=g)}
            for _ in range(n)]


def _big_batch_grads(model, micro: list[dict]) -> dict[str, torch.Tensor]:
    """Reference: mean of the per-micro-batch losses + each contrastive term over all embeddings at once."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    embs: dict[str, list] = {}
    offset = 0
    for batch in micro:
        loss, _, _ = model.generator_step(batch, contrastive_grads={})  # {}: the local contrastive terms are off
        total = total + loss / len(micro)
        terms = model.contrastive_embeddings(batch)
        for name, t in terms.items():
            embs.setdefault(name, []).append((t.embeddings, t.groups + offset, t.weight, t.tau))
        offset += int(next(iter(terms.values())).groups.max()) + 1
    for parts in embs.values():
        e = torch.cat([p[0] for p in parts])
        g = torch.cat([p[1] for p in parts])
        total = total + parts[0][2] * group_contrastive(e, g, parts[0][3])
    total.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _accumulated_grads(model, micro: list[dict], rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    grads, logs = accumulated_contrastive_grads(model, micro, rank, world)
    assert set(logs) == {"contrast_style", "contrast_content"}
    for batch, g in zip(micro, grads):
        loss, _, _ = model.generator_step(batch, contrastive_grads=g)
        (loss / len(micro)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["neat_tiny", "rast_tiny"])
def test_logit_accumulation_equals_the_big_batch_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY_NO_GAN[name])
    micro = _micro(3)
    ref = _big_batch_grads(model, micro)
    acc = _accumulated_grads(model, micro)
    assert set(ref) == set(acc) and ref
    for k in ref:
        torch.testing.assert_close(acc[k], ref[k], rtol=1e-4, atol=max(1e-7, 1e-6 * float(ref[k].abs().max())), msg=k)
    # and it differs from per-micro-batch contrastive terms (the thing it replaces): the negatives matter
    model.zero_grad(set_to_none=True)
    for batch in micro:
        (model.generator_step(batch)[0] / len(micro)).backward()
    head = "style_head.mlp.0.weight"
    assert not torch.allclose(model.get_parameter(head).grad, ref[head], rtol=1e-3)


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("rast_tiny", **TINY_NO_GAN["rast_tiny"])
    micro = _micro(4)[2 * rank:2 * rank + 2]  # rank 0 gets micro-batches 0-1, rank 1 gets 2-3
    grads = _accumulated_grads(model, micro, rank, world)
    for g in grads.values():  # what train.distributed.average_gradients does
        dist.all_reduce(g)
        g.div_(world)
    if rank == 0:
        torch.save(grads, os.path.join(out_dir, "grads.pt"))
    dist.barrier()  # neither rank tears gloo down while the other still uses it (that aborts the process)
    dist.destroy_process_group()


def test_negatives_are_gathered_from_every_rank(tmp_path):
    with socket.socket() as sock:  # a free loopback port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_rank_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    two_ranks = torch.load(tmp_path / "grads.pt", weights_only=True)
    torch.manual_seed(0)
    model = create_model("rast_tiny", **TINY_NO_GAN["rast_tiny"])
    ref = _big_batch_grads(model, _micro(4))
    for k in ref:
        torch.testing.assert_close(two_ranks[k], ref[k], rtol=1e-4, atol=max(1e-7, 1e-6 * float(ref[k].abs().max())), msg=k)


def test_groups_define_positives():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]), dim=1)
    aligned = group_contrastive(e, torch.tensor([0, 0, 1, 1]), 0.2)
    crossed = group_contrastive(e, torch.tensor([0, 1, 0, 1]), 0.2)
    assert aligned < 0.05 and crossed > 1.0
