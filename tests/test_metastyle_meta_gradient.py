"""MetaStyle's bilevel formulas: the meta-gradient through the inner steps, the paper's style loss, adaptation data."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from train import losses as L
from train.inference import load_adaptation_contents
from train.models import create_model


def _directional_derivatives(second_order: bool, inner_lr: float = 0.1, inner_steps: int = 2):
    """<dE/dtheta, v> from autograd and from a central finite difference of the outer loss E(theta), in double."""
    torch.manual_seed(0)
    model = create_model("metastyle_tiny", inner_steps=inner_steps, inner_lr=inner_lr, w_style=1.0,
                         second_order=second_order).double()
    gen = torch.Generator().manual_seed(1)
    batch = {"content": torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64),
             "style": torch.rand(1, 3, 16, 16, generator=gen, dtype=torch.float64)}
    params = model.generator_parameters()
    grads = torch.autograd.grad(model.generator_step(batch)[0], params)
    gen_v = torch.Generator().manual_seed(2)
    v = [torch.randn(p.shape, generator=gen_v, dtype=torch.float64) for p in params]
    analytic = float(sum((g * d).sum() for g, d in zip(grads, v)))

    def outer(eps: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(eps * d)
        value = float(model.generator_step(batch)[0].detach())
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(eps * d)
        return value

    # a small step: the outer loss is only piecewise smooth (ReLUs, max-pooling inside the inner gradients)
    eps = 1e-7
    return analytic, (outer(eps) - outer(-eps)) / (2 * eps)


def test_second_order_meta_gradient_matches_a_finite_difference():
    analytic, numeric = _directional_derivatives(second_order=True)
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_first_order_approximation_does_not():
    # the check above can tell: dropping the inner gradients' dependence on theta changes the meta-gradient
    analytic, numeric = _directional_derivatives(second_order=False)
    assert abs(analytic - numeric) > 0.1 * abs(numeric)


def test_without_inner_steps_effect_the_meta_gradient_is_the_plain_gradient():
    a1, n1 = _directional_derivatives(second_order=True, inner_lr=0.0)
    a2, _ = _directional_derivatives(second_order=False, inner_lr=0.0)
    assert a1 == pytest.approx(n1, rel=1e-5) and a1 == pytest.approx(a2, rel=1e-9)


def test_defaults_are_the_papers_bilevel_problem_and_style_loss():
    model = create_model("metastyle_tiny")
    cfg = model.cfg
    assert cfg.second_order and cfg.inner_params == "all" and cfg.style_loss == "gram_frobenius"
    # the style term is sum_i ||G(phi_i(I_s)) - G(phi_i(I_x))||_F^2 with G = psi psi^T / CHW
    torch.manual_seed(0)
    out, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    fo, fs = model.loss_vgg(out, cfg.style_layers), model.loss_vgg(style, cfg.style_layers)
    expected = 0.0
    for n in cfg.style_layers:
        _, c, h, w = fo[n].shape
        go = fo[n].reshape(c, h * w) @ fo[n].reshape(c, h * w).T / (c * h * w)
        gs = fs[n].reshape(c, h * w) @ fs[n].reshape(c, h * w).T / (c * h * w)
        expected += float(((go - gs) ** 2).sum())
    _, terms = model.perceptual_loss(out, out, fs)
    assert float(terms["style"]) == pytest.approx(expected, rel=1e-5)
    assert float(L.gram_frobenius_style(fo, fs)) == pytest.approx(expected, rel=1e-5)
    # beta measured on the first batch: the two terms start at the same magnitude, then beta stays
    content = torch.rand(1, 3, 32, 32)
    _, terms = model.perceptual_loss(out, content, fs)
    assert float(model.beta) * float(terms["style"]) == pytest.approx(float(terms["content"]), rel=1e-4)


def test_adaptation_with_the_inner_loops_rule_takes_plain_gradient_steps():
    torch.manual_seed(0)
    model = create_model("metastyle_tiny", adapt_optimizer="sgd", inner_lr=1e-3, w_style=1.0)
    contents, style = torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loss, _ = model.perceptual_loss(model.transformer(contents), contents, model.style_targets(style))
    grads = torch.autograd.grad(loss, list(model.transformer.parameters()))
    adapted, _ = model.adapt(style, contents, steps=1)
    for (n, p), p0, g in zip(adapted.transformer.named_parameters(), model.transformer.parameters(), grads):
        assert torch.allclose(p, p0 - 1e-3 * g, atol=1e-7), n


def test_adaptation_content_refuses_the_evaluations_test_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "train" / "a.png")
    Image.new("RGB", (20, 20), (200, 20, 30)).save(tmp_path / "test" / "t.png")
    images = load_adaptation_contents([tmp_path / "train" / "a.png"], 16, held_out=[tmp_path / "test" / "t.png"])
    assert len(images) == 1 and images[0].shape[-1] >= 16
    # the same test image under another name in the training folder
    (tmp_path / "train" / "copy.png").write_bytes((tmp_path / "test" / "t.png").read_bytes())
    with pytest.raises(ValueError, match="copy.png is one of the evaluation's test images"):
        load_adaptation_contents([tmp_path / "train" / "a.png", tmp_path / "train" / "copy.png"], 16,
                                 held_out=[tmp_path / "test" / "t.png"])
