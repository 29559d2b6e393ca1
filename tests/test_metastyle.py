"""MetaStyle: network shapes, inner/outer steps (first and second order), adaptation, interpolation."""

from __future__ import annotations

import pytest
import torch

from train.models import create_model
from train.models.metastyle import TransformerNet, interpolate_models, norm_parameter_names


def test_transformer_shapes_and_norm_parameters():
    net = TransformerNet(width=1.0, res_blocks=5)
    assert 1.6e6 < sum(p.numel() for p in net.parameters()) < 1.8e6  # Johnson et al.: ~1.68M parameters
    tiny = TransformerNet(width=1 / 8, res_blocks=1)
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, 30, 41))  # padded to a multiple of 4 inside, cropped back
    assert out.shape == (2, 3, 30, 41) and 0 <= float(out.min()) and float(out.max()) <= 1
    names = norm_parameter_names(tiny)
    assert names and all(n.endswith(("weight", "bias")) for n in names)
    assert len(names) == 2 * 7  # 3 down + 2 in the residual block + 2 up instance norms, scale and shift each


@pytest.mark.parametrize("second_order", [False, True])
def test_meta_step_gradients_reach_theta(second_order):
    torch.manual_seed(0)
    model = create_model("metastyle_tiny", second_order=second_order, inner_steps=2)
    batch = {"content": torch.rand(4, 3, 32, 32), "style": torch.rand(2, 3, 32, 32)}
    loss, logs, images = model.generator_step(batch)
    loss.backward()
    grads = [p.grad for p in model.generator_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert {"outer", "content", "style"} <= set(logs) and images["output"].shape == (2, 3, 32, 32)


def test_second_order_differs_from_first_order():
    batch = {"content": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "style": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    grads = {}
    for order in (False, True):
        torch.manual_seed(0)
        model = create_model("metastyle_tiny", second_order=order, inner_lr=1e-2)
        model.generator_step(batch)[0].backward()
        grads[order] = torch.cat([p.grad.flatten() for p in model.generator_parameters()])
    assert not torch.allclose(grads[False], grads[True])


def test_adaptation_lowers_the_style_loss_on_an_unseen_style_and_interpolates():
    torch.manual_seed(0)
    model = create_model("metastyle_tiny", adapt_steps=15)
    gen = torch.Generator().manual_seed(5)
    contents = torch.rand(2, 3, 32, 32, generator=gen)
    style_a = torch.rand(1, 3, 32, 32, generator=gen) ** 3  # dark, high-contrast: far from theta's outputs
    style_b = 1 - torch.rand(1, 3, 32, 32, generator=gen) ** 3

    def style_loss(m):
        with torch.no_grad():
            return float(m.perceptual_loss(m.transformer(contents), contents, m.style_targets(style_a))[1]["style"])

    before = style_loss(model)
    adapted_a, info = model.adapt(style_a, contents, style_name="a")
    assert len(info["losses"]) == 15 and info["seconds"] > 0
    assert style_loss(adapted_a) < 0.5 * before  # within the configured steps
    assert adapted_a.cfg.adapted_style == "a" and model.cfg.adapted_style == ""  # theta untouched
    out = adapted_a.stylize(contents)
    assert out.shape == contents.shape
    adapted_b, _ = model.adapt(style_b, lambda step: contents, steps=5, params="norm", style_name="b")
    theta = dict(model.transformer.named_parameters())
    changed = {n for n, p in adapted_b.transformer.named_parameters() if not torch.equal(p, theta[n])}
    assert changed and changed <= norm_parameter_names(model.transformer)  # only scale/shift adapted
    mid = interpolate_models([adapted_a, adapted_b], [0.5, 0.5])
    for (n, p), pa, pb in zip(mid.transformer.named_parameters(), adapted_a.transformer.parameters(),
                              adapted_b.transformer.parameters()):
        assert torch.allclose(p, 0.5 * (pa + pb)), n
    assert torch.equal(interpolate_models([adapted_a, adapted_b], [1.0, 0.0]).stylize(contents), out)
    with pytest.raises(ValueError, match="sum to 1"):
        interpolate_models([adapted_a, adapted_b], [0.7, 0.7])
