"""Variational style transfer: module shapes, KL at the prior, reparameterisation, a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch

from train.models import create_model
from train.models.variational import AdaIN, Decoder, Encoder, StyleEncoder


def test_module_shapes():
    torch.manual_seed(0)
    enc = Encoder(base=4, num_down=3, norm=True)
    feats = enc(torch.rand(2, 3, 48, 40))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 48, 40), (2, 8, 24, 20), (2, 16, 12, 10), (2, 32, 6, 5)]
    mu, logvar = StyleEncoder(4, 3, style_dim=6)(torch.rand(2, 3, 37, 53))  # any style size: adaptive pooling
    assert mu.shape == logvar.shape == (2, 6)
    with torch.no_grad():
        out = Decoder(4, 3, bottleneck_blocks=2, style_dim=6)(feats, mu)
    assert out.shape == (2, 3, 48, 40) and 0 <= float(out.min()) and float(out.max()) <= 1
    # AdaIN starts as plain instance norm and then follows the code
    ada, x = AdaIN(5, 6), torch.randn(2, 5, 4, 4)
    assert torch.allclose(ada(x, torch.randn(2, 6)), torch.nn.functional.instance_norm(x), atol=1e-5)


def test_model_codes_prior_sampling_and_any_size():
    torch.manual_seed(0)
    model = create_model("variational_tiny").eval()
    content, style = torch.rand(1, 3, 30, 45), torch.rand(1, 3, 20, 20)
    out = model.stylize(content, style)
    assert out.shape == content.shape
    z = model.sample_prior(3, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, model.cfg.style_dim)
    assert model.decode(content.expand(3, -1, -1, -1), z).shape == (3, 3, 30, 45)
    mu, logvar = torch.zeros(10000, 2), torch.full((10000, 2), 2 * torch.log(torch.tensor(3.0)).item())
    zs = model.reparameterise(mu + 1.0, logvar)
    assert zs.mean().item() == pytest.approx(1.0, abs=0.1) and zs.std().item() == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="no content prior"):
        model.stylize(content, style, blur=1.0)


def test_kl_warmup_and_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = create_model("variational_tiny", kl_warmup_start=2, kl_warmup_steps=4)
    batch = {"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)}
    opt = torch.optim.Adam(model.generator_parameters(), lr=3e-3)
    losses, kl_w = [], []
    for _ in range(12):
        loss, logs, images = model.generator_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        kl_w.append(logs["kl_weight"])
    assert kl_w[:3] == [0.0, 0.0, 0.0] and kl_w[4] == pytest.approx(0.5e-3) and kl_w[-1] == pytest.approx(1e-3)
    assert int(model.steps_done) == 12  # buffer: checkpoints carry the warm-up position
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
    assert set(images) == {"content", "style", "output"}
