"""Tests for train.step: the optimiser step the trainer and the training-step benchmarks share."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from train.config import OptimConfig
from train.step import make_optimizers, optimizer_step


class ToyGAN(nn.Module):
    """A generator (one conv) and a discriminator (one linear) with the trainer's model interface."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gen = nn.Conv2d(3, 3, 1)
        self.disc = nn.Linear(3, 1)
        self.calls: list[str] = []

    def generator_parameters(self):
        return self.gen.parameters()

    def discriminator_parameters(self):
        return self.disc.parameters()

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self.disc(x.mean((2, 3)))

    def discriminator_step(self, batch):
        self.calls.append("d")
        fake = self.gen(batch["content"]).detach()
        loss = (self._score(fake) - self._score(batch["style"])).mean()
        return loss, {"real": float(self._score(batch["style"]).mean())}

    def generator_step(self, batch):
        self.calls.append("g")
        out = self.gen(batch["content"])
        loss = (out - batch["style"]).pow(2).mean() - 0.1 * self._score(out).mean()
        return loss, {"l2": float((out - batch["style"]).pow(2).mean())}, {"output": out}


def _batch(seed: int, n: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"content": torch.rand(n, 3, 8, 8, generator=g), "style": torch.rand(n, 3, 8, 8, generator=g)}


def test_accumulated_micro_batches_equal_one_big_batch():
    a, b = _batch(1), _batch(2)
    whole = {k: torch.cat([a[k], b[k]]) for k in a}
    m1, m2 = ToyGAN(), ToyGAN()
    o1, o2 = make_optimizers(m1, OptimConfig()), make_optimizers(m2, OptimConfig())
    r1 = optimizer_step(m1, [a, b], o1)
    optimizer_step(m2, [whole], o2)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q)
    assert m1.calls == ["d", "d", "g", "g"]  # discriminator first, on the same micro-batches
    assert set(r1.logs) == {"loss_d", "d/real", "loss_g", "g/l2"} and "output" in r1.images


def test_discriminator_is_left_alone_when_not_its_step():
    model = ToyGAN()
    before = copy.deepcopy(model.disc.state_dict())
    gen_before = model.gen.weight.detach().clone()
    result = optimizer_step(model, [_batch(3)], make_optimizers(model, OptimConfig()), train_discriminator=False)
    for k, v in model.disc.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(model.gen.weight, gen_before)
    assert "loss_d" not in result.logs and model.calls == ["g"]


def test_a_non_finite_generator_loss_names_the_step():
    model = ToyGAN()
    batch = _batch(4)
    batch["style"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 7"):
        optimizer_step(model, [batch], make_optimizers(model, OptimConfig()), train_discriminator=False, step=7)


def test_grad_clip_reports_the_norm_before_clipping():
    model = ToyGAN()
    result = optimizer_step(model, [_batch(5)], make_optimizers(model, OptimConfig()), grad_clip=1e-6)
    assert result.grad_norm > 1e-6
