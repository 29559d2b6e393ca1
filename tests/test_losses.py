"""Loss registry and loss functions: values on known cases, finiteness, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from train import losses as L


def test_registry_rejects_unknown_names():
    assert {"style_mean_std", "content_perceptual", "identity_pixel", "identity_feature", "adversarial_g",
            "adversarial_d", "info_nce", "stylization_contrastive", "gram_style", "r1_penalty"} <= set(L.list_losses())
    assert L.get_loss("gram_style") is L.gram_style
    with pytest.raises(ValueError, match="known losses"):
        L.get_loss("nope")


def test_style_and_content_losses_zero_on_identical_and_differentiable():
    feats = {"a": torch.randn(2, 4, 8, 8), "b": torch.randn(2, 8, 4, 4)}
    assert float(L.style_mean_std(feats, feats)) == pytest.approx(0.0, abs=1e-10)
    assert float(L.gram_style(feats, feats)) == 0.0
    x = {k: (v + torch.randn_like(v)).requires_grad_() for k, v in feats.items()}
    for loss in (L.style_mean_std(x, feats), L.gram_style(x, feats), L.identity_feature(x, feats),
                 L.content_perceptual(x["a"], feats["a"])):
        assert torch.isfinite(loss) and loss > 0
        (g,) = torch.autograd.grad(loss, x["a"])
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_style_mean_std_matches_definition():
    a, b = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    fa, fb = a.flatten(2), b.flatten(2)
    ref = ((fa.mean(-1) - fb.mean(-1)) ** 2).mean() + \
        (((fa.var(-1, unbiased=False) + 1e-5).sqrt() - (fb.var(-1, unbiased=False) + 1e-5).sqrt()) ** 2).mean()
    assert float(L.style_mean_std({"x": a}, {"x": b})) == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("kind", L.ADV_TYPES)
def test_adversarial_losses_push_the_right_way(kind):
    fake = torch.full((4, 1, 3, 3), 0.5, requires_grad=True)
    (g,) = torch.autograd.grad(L.adversarial_g([fake], kind), fake)
    assert (g < 0).all()  # generator wants fake logits up
    real = torch.full((4, 1, 3, 3), 0.5, requires_grad=True)
    gr, gf = torch.autograd.grad(L.adversarial_d([real], [fake], kind), (real, fake))
    assert (gr < 0).all() and (gf > 0).all()
    if kind == "nsgan":
        zero = torch.zeros(2, 1, 4, 4)
        assert float(L.adversarial_d(zero, zero, kind)) == pytest.approx(2 * math.log(2), rel=1e-6)
    with pytest.raises(ValueError):
        L.adversarial_g(fake, "wgan")


def test_r1_penalty_of_linear_discriminator():
    x = torch.randn(3, 2, requires_grad=True)
    w = torch.tensor([3.0, 4.0])
    assert float(L.r1_penalty(x @ w, x)) == pytest.approx(0.5 * 25.0)


def test_info_nce_known_values():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pos = torch.tensor([[True, False, False]])
    tau = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2)))
    assert float(L.info_nce(q, keys, pos, tau)) == pytest.approx(expected, rel=1e-6)
    # no negatives -> skipped, zero but still a graph-connected tensor
    z = L.info_nce(q.requires_grad_(), keys[:1], pos[:, :1], tau)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_roll_pair_masks_and_stylization_contrastive():
    same_style, same_content = L.roll_pair_masks(3)
    # stylisation 0 = (c0, s0); 3 = (c1, s0); 5 = (c0, s2)
    assert same_style[0].nonzero().flatten().tolist() == [3]
    assert same_content[0].nonzero().flatten().tolist() == [5]
    assert not same_style.diagonal().any()
    emb = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_()
    loss = L.stylization_contrastive(emb, same_style, tau=0.2)
    assert torch.isfinite(loss)
    (g,) = torch.autograd.grad(loss, emb)
    assert g.abs().sum() > 0
    # embeddings clustered by style give a lower loss than embeddings clustered by content
    style_id = torch.tensor([0, 1, 2, 0, 1, 2])
    by_style = torch.nn.functional.one_hot(style_id, 8).float()
    by_content = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 2, 0]), 8).float()
    assert L.stylization_contrastive(by_style, same_style) < L.stylization_contrastive(by_content, same_style)


# ------------------------------------------------------------------------------------------ balanced style loss, KL
def test_balanced_gram_lies_in_unit_interval_and_is_zero_for_identical_grams():
    torch.manual_seed(0)
    feats = {"a": torch.rand(3, 8, 6, 6), "b": torch.rand(3, 16, 3, 3)}  # non-negative, like ReLU taps
    assert float(L.balanced_gram_style(feats, feats)) == 0.0
    # the same Gram matrix from a spatially shuffled map: still exactly zero
    perm = {k: v.flatten(2)[..., torch.randperm(v.shape[2] * v.shape[3])].view_as(v) for k, v in feats.items()}
    assert float(L.balanced_gram_style(perm, feats)) == pytest.approx(0.0, abs=1e-6)
    for scale in (1e-4, 1.0, 1e4):  # any magnitude of style features: each layer still in [0, 1]
        other = {k: torch.relu(torch.randn_like(v)) * scale for k, v in feats.items()}
        per = L.balanced_gram_per_sample(other, feats, layers=("a",))
        assert per.shape == (3,) and ((per >= 0) & (per <= 1)).all()
    zeros = {k: torch.zeros_like(v) for k, v in feats.items()}  # all-black output: the supremum itself, 1 per layer
    assert float(L.balanced_gram_style(zeros, feats)) == pytest.approx(2.0, abs=1e-6)


def _worked_example() -> tuple[dict, dict]:
    """Two layers, one sample, worked by hand (G = F F^T / CHW).

    layer a: C=2, H=1, W=2. P = [[1, 1], [0, 2]] -> G(P) = [[2, 2], [2, 4]] / 4; S = [[2, 0], [0, 0]] -> G(S) =
    [[1, 0], [0, 0]]. ||G(P) - G(S)||^2 = 0.25 + 0.25 + 0.25 + 1 = 1.75, ||G(P)||^2 = 1.75, ||G(S)||^2 = 1:
    classic (MSE over 4 entries) 0.4375, supremum 2.75 / 4, balanced 1.75 / 2.75 = 7/11.
    layer b: C=H=W=1. P = 3, S = 1 -> G = 9 and 1: classic 64, supremum 82, balanced 64/82 = 32/41.
    """
    p = {"a": torch.tensor([[[[1.0, 1.0]], [[0.0, 2.0]]]]), "b": torch.tensor([[[[3.0]]]])}
    s = {"a": torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]]), "b": torch.tensor([[[[1.0]]]])}
    return p, s


def test_balanced_and_classic_losses_on_a_hand_worked_example():
    p, s = _worked_example()
    assert torch.allclose(L.gram_matrix(p["a"]), torch.tensor([[[0.5, 0.5], [0.5, 1.0]]]))
    # Eq. 5 sums the layers (w = 1); Eq. 13 divides each layer by its supremum (Eq. 11)
    assert float(L.gram_style(p, s)) == pytest.approx(0.4375 + 64.0)
    assert float(L.gram_supremum_per_sample(p, s)[0]) == pytest.approx(2.75 / 4 + 82.0)
    assert float(L.balanced_gram_style(p, s)) == pytest.approx(7 / 11 + 32 / 41, rel=1e-6)
    assert float(L.balanced_gram_style(p, s, layer_weights=(1.0, 0.5))) == pytest.approx(7 / 11 + 16 / 41, rel=1e-6)
    assert float(L.gram_frobenius_style(p, s)) == pytest.approx(1.75 + 64.0)
    # Eq. 8: the batch loss is the mean of the per-sample losses
    p2 = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in p.items()}
    s2 = {k: torch.cat([v, v]) for k, v in s.items()}  # sample 1: an all-black output, balanced loss 1 per layer
    assert torch.allclose(L.balanced_gram_per_sample(p2, s2), torch.tensor([7 / 11 + 32 / 41, 2.0]))
    assert float(L.balanced_gram_style(p2, s2)) == pytest.approx((7 / 11 + 32 / 41 + 2.0) / 2, rel=1e-6)


def test_balanced_gram_has_no_gradient_through_its_supremum():
    torch.manual_seed(1)
    s = {"x": torch.rand(2, 4, 5, 5)}
    p = {"x": torch.rand(2, 4, 5, 5).requires_grad_()}
    sup = L.gram_supremum_per_sample(p, s)
    (g_bal,) = torch.autograd.grad(L.balanced_gram_per_sample(p, s).sum(), p["x"])
    (g_ref,) = torch.autograd.grad((L.gram_style_per_sample(p, s) / sup.detach()).sum(), p["x"])
    (g_through,) = torch.autograd.grad((L.gram_style_per_sample(p, s) / sup).sum(), p["x"])
    assert torch.allclose(g_bal, g_ref, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(g_bal, g_through, rtol=1e-2)  # the check above can tell the two apart


def test_each_samples_balanced_loss_ignores_its_styles_feature_magnitude_while_the_classic_loss_does_not():
    # The multi-task view (Section 4.1): a style whose features are 100x larger (and an output at its scale) weighs
    # 100^4 = 1e8 times more in the classic batch loss; its balanced loss is unchanged.
    torch.manual_seed(2)
    s = {"x": torch.rand(2, 4, 5, 5), "y": torch.rand(2, 8, 3, 3)}
    p = {k: torch.rand_like(v) for k, v in s.items()}
    s100 = {k: torch.cat([v[:1] * 100, v[1:]]) for k, v in s.items()}
    p100 = {k: torch.cat([v[:1] * 100, v[1:]]) for k, v in p.items()}
    classic, classic100 = L.gram_style_per_sample(p, s), L.gram_style_per_sample(p100, s100)
    balanced, balanced100 = L.balanced_gram_per_sample(p, s), L.balanced_gram_per_sample(p100, s100)
    assert float(classic100[0] / classic[0]) == pytest.approx(1e8, rel=1e-3)
    assert float(balanced100[0]) == pytest.approx(float(balanced[0]), rel=1e-5)
    assert float(classic100[1]) == pytest.approx(float(classic[1]))  # the other sample is untouched either way
    # so in the batch loss the scaled sample dominates the classic loss and not the balanced one
    assert float(classic100[0] / classic100.sum()) > 0.999
    assert float(balanced100[0] / balanced100.sum()) == pytest.approx(float(balanced[0] / balanced.sum()), rel=1e-5)


def test_style_loss_switch_names():
    assert L.style_loss_fn("balanced_gram") is L.balanced_gram_style
    assert L.style_loss_fn("mean_std") is L.style_mean_std
    with pytest.raises(ValueError, match="balanced_gram"):
        L.style_loss_fn("nope")


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    mu, logvar = torch.zeros(4, 16), torch.zeros(4, 16)
    assert float(L.kl_divergence(mu, logvar)) == 0.0
    assert float(L.kl_divergence(mu + 1.0, logvar)) == pytest.approx(8.0)  # 0.5 * sum(mu^2) = 0.5 * 16
    assert float(L.kl_divergence(mu, logvar + 1.0)) > 0
    assert L.kl_warmup_weight(0, start=2, ramp=4) == 0.0
    assert L.kl_warmup_weight(4, start=2, ramp=4) == 0.5
    assert L.kl_warmup_weight(100, start=2, ramp=4) == 1.0
    assert L.kl_warmup_weight(0) == 1.0


def test_matching_style_weight_makes_the_two_terms_equal():
    content, style = torch.tensor(0.3), torch.tensor(1.5e-4)
    beta = L.matching_style_weight(content, style, w_content=2.0)
    assert beta * float(style) == pytest.approx(2.0 * float(content))
