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


def test_kl_warmup_counts_optimiser_steps():
    """Three micro-batches per update (gradient accumulation): the warm-up advances once per update."""
    from train.config import OptimConfig
    from train.step import make_optimizers, optimizer_step

    torch.manual_seed(0)
    model = create_model("variational_tiny", kl_warmup_start=2, kl_warmup_steps=4)
    micro = [{"content": torch.rand(2, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)} for _ in range(3)]
    opts = make_optimizers(model, OptimConfig(lr=3e-3))
    kl_w = [optimizer_step(model, micro, opts).logs["g/kl_weight"] for _ in range(12)]
    # updates 0-2 at weight 0, then w_kl * (step - 2) / 4 until the ramp ends at update 6
    assert kl_w[:3] == [0.0, 0.0, 0.0] and kl_w[4] == pytest.approx(0.5e-3) and kl_w[-1] == pytest.approx(1e-3)
    assert int(model.steps_done) == 12  # buffer: checkpoints carry the warm-up position


def test_style_encoder_is_the_content_encoder_with_adaptive_pooling():
    model = create_model("variational_tiny")
    content_layers = [type(m) for m in model.content_encoder.modules()]
    style_layers = [type(m) for m in model.style_encoder.encoder.modules()]
    assert style_layers == content_layers and torch.nn.InstanceNorm2d in style_layers
    assert isinstance(model.style_encoder.head, torch.nn.Conv2d) and model.style_encoder.head.kernel_size == (1, 1)


def test_styles_are_encoded_at_the_training_scale():
    """``style_size`` (the training crop): a style given at 64 px is encoded as the same style at 32 px."""
    torch.manual_seed(0)
    model = create_model("variational_tiny").eval()
    assert model.cfg.style_size == 32
    big = torch.rand(1, 3, 64, 96)
    small = torch.nn.functional.interpolate(big, size=(32, 48), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(model.encode_style_image(big), model.encode_style(small))
    content = torch.rand(1, 3, 40, 40)
    torch.testing.assert_close(model.stylize(content, big), model.stylize(content, small))
    assert not torch.allclose(model.encode_style(big)[0], model.encode_style(small)[0])


def test_decoder_uses_every_u_net_skip_and_the_kl_term_is_the_gaussian_formula():
    torch.manual_seed(0)
    model = create_model("variational_tiny").eval()
    for p in model.decoder.parameters():  # away from the identity-like init, so every path carries signal
        torch.nn.init.normal_(p, std=0.2)
    content, z = torch.rand(1, 3, 32, 32), torch.randn(1, model.cfg.style_dim)
    with torch.no_grad():
        feats = model.content_encoder(content)
        out = model.decoder(feats, z)
        for i in range(len(feats) - 1):  # each skip resolution (the last entry is the bottleneck input)
            changed = list(feats)
            changed[i] = feats[i] + 1.0
            assert not torch.allclose(model.decoder(changed, z), out), f"skip {i} is not used"
    mu, logvar = torch.randn(3, model.cfg.style_dim), torch.randn(3, model.cfg.style_dim)
    expected = (0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)).mean()
    batch = {"content": torch.rand(3, 3, 32, 32), "style": torch.rand(3, 3, 32, 32)}
    terms = model.losses(batch["content"], batch["style"], batch["content"], mu, logvar)
    torch.testing.assert_close(terms["kl"], expected)
