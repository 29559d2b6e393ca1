"""Loss registry for style-transfer models: feature-statistics, perceptual, identity, adversarial, contrastive."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from train.models.layers import mean_std, mean_variance_norm

_LOSSES: dict[str, Callable[..., torch.Tensor]] = {}


def register_loss(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Register a loss function under its ``__name__`` so configs can refer to it by name."""
    if fn.__name__ in _LOSSES:
        raise ValueError(f"loss {fn.__name__!r} is already registered")
    _LOSSES[fn.__name__] = fn
    return fn


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """Look a loss up by name; unknown names raise with the list of known ones."""
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[name]


def list_losses() -> list[str]:
    return sorted(_LOSSES)


# ------------------------------------------------------------------------------------------ feature-space losses
@register_loss
def style_mean_std(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                   layers: tuple[str, ...] | None = None) -> torch.Tensor:
    """NeAT Eq. 1 / AdaIN: sum over layers of MSE(mean) + MSE(std) of VGG features."""
    layers = layers or tuple(style_feats)
    total = 0.0
    for name in layers:
        mo, so = mean_std(out_feats[name])
        ms, ss = mean_std(style_feats[name])
        total = total + F.mse_loss(mo.float(), ms.float()) + F.mse_loss(so.float(), ss.float())
    return total


@register_loss
def content_perceptual(out_feat: torch.Tensor, content_feat: torch.Tensor) -> torch.Tensor:
    """NeAT Eq. 3: MSE between conv4_2 (or any single tap) features of output and content."""
    return F.mse_loss(_at_least_float32(out_feat), _at_least_float32(content_feat))


@register_loss
def content_normalized(out_feats: dict[str, torch.Tensor], target_feats: dict[str, torch.Tensor],
                       layers: tuple[str, ...] = ("relu4_1", "relu5_1")) -> torch.Tensor:
    """SANet / IEContraAST / RAST content loss: sum over layers of MSE between mean-variance-normalised features."""
    return sum(F.mse_loss(mean_variance_norm(out_feats[n].float()), mean_variance_norm(target_feats[n].float()))
               for n in layers)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors (autocast) computed in float32; float64 kept (gradient checks run in double)."""
    return x if x.dtype == torch.float64 else x.float()


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C*H*W (MetaStyle/Johnson convention), (B, C, C)."""
    b, c, h, w = feat.shape
    f = _at_least_float32(feat).reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def _layer_weights(layers: tuple[str, ...], layer_weights: tuple[float, ...] | None) -> tuple[float, ...]:
    if layer_weights is None:
        return (1.0,) * len(layers)
    if len(layer_weights) != len(layers):
        raise ValueError(f"{len(layer_weights)} layer weights for {len(layers)} layers {layers}")
    return tuple(layer_weights)


def gram_layer_terms(out_feat: torch.Tensor, style_feat: torch.Tensor) -> dict[str, torch.Tensor]:
    """One layer's per-sample Gram terms, each (B,), for output features P and style features S.

    ``classic``: Eq. 3/6 of Cheng et al., the MSE between the two Gram matrices (mean over the C*C entries);
    ``supremum``: Eq. 11, (||G(S)||^2 + ||G(P)||^2) / N with N = C*C, the same normaliser as ``classic`` (the paper
    writes N as the spatial size; with any N shared by both, the ratio below is the same and lies in [0, 1]);
    ``frobenius``: ||G(P) - G(S)||_F^2 (MetaStyle's per-layer style loss).
    """
    go, gs = gram_matrix(out_feat), gram_matrix(style_feat)
    entries = go[0].numel()
    frob = (go - gs).pow(2).flatten(1).sum(1)
    sq = go.pow(2).flatten(1).sum(1) + gs.pow(2).flatten(1).sum(1)
    return {"classic": frob / entries, "supremum": sq / entries, "frobenius": frob}


def gram_style_per_sample(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                          layers: tuple[str, ...] | None = None,
                          layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Classic Gram style loss of every sample, (B,): Eq. 5, sum over layers of w^l * Gram MSE (w^l = 1)."""
    layers = layers or tuple(style_feats)
    weights = _layer_weights(layers, layer_weights)
    return sum(w * gram_layer_terms(out_feats[n], style_feats[n])["classic"] for n, w in zip(layers, weights))


@register_loss
def gram_style(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
               layers: tuple[str, ...] | None = None, layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Classic Gram style loss (Gatys; Cheng et al. Eqs. 5 and 8): sum over layers of the Gram MSE, batch mean."""
    return gram_style_per_sample(out_feats, style_feats, layers, layer_weights).mean()


@register_loss
def gram_frobenius_style(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                         layers: tuple[str, ...] | None = None) -> torch.Tensor:
    """MetaStyle's style loss: sum over layers of ||G(phi_i(I_s)) - G(phi_i(I_x))||_F^2, G = psi psi^T / CHW;
    batch mean."""
    layers = layers or tuple(style_feats)
    return sum(gram_layer_terms(out_feats[n], style_feats[n])["frobenius"] for n in layers).mean()


def _balanced_gram_layer(out_feat: torch.Tensor, style_feat: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ||G(P) - G(S)||^2 / (||G(P)||^2 + ||G(S)||^2) at one layer, (B,); denominator without gradient."""
    t = gram_layer_terms(out_feat, style_feat)
    # The supremum of the classic loss (Cheng et al. 2021, Eq. 11): Gram entries of ReLU features are >= 0, so
    # <G(P), G(S)> >= 0 and the ratio lies in [0, 1] whatever the Gram scaling. It is a per-sample task weight only:
    # no gradient flows through it (the paper's choice, for stable training).
    return t["classic"] / (t["supremum"].detach() + eps)


def balanced_gram_per_sample(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                             layers: tuple[str, ...] | None = None,
                             layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Balanced style loss of every sample, (B,): sum over layers of w^l times the supremum-normalised Gram loss
    (Eq. 13 in the sum of Eq. 5); in [0, sum of w^l]."""
    layers = layers or tuple(style_feats)
    weights = _layer_weights(layers, layer_weights)
    return sum(w * _balanced_gram_layer(out_feats[n], style_feats[n]) for n, w in zip(layers, weights))


@register_loss
def balanced_gram_style(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                        layers: tuple[str, ...] | None = None,
                        layer_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """Style-aware normalised ("balanced") Gram loss of Cheng et al. (CVPR 2021).

    Each sample's layer loss is divided by its own supremum (||G(S)||^2 + ||G(P)||^2) / N, so every style in a batch
    weighs the same whatever its feature magnitude (the cause of under- and over-stylisation with the classic loss).
    Summed over layers (each layer in [0, 1]) and averaged over the batch.
    """
    return balanced_gram_per_sample(out_feats, style_feats, layers, layer_weights).mean()


def gram_supremum_per_sample(out_feats: dict[str, torch.Tensor], style_feats: dict[str, torch.Tensor],
                             layers: tuple[str, ...] | None = None) -> torch.Tensor:
    """Sum over layers of each layer's supremum of the classic loss, (B,) (>= :func:`gram_style_per_sample`)."""
    layers = layers or tuple(style_feats)
    return sum(gram_layer_terms(out_feats[n], style_feats[n])["supremum"] for n in layers)


def matching_style_weight(content: torch.Tensor, style: torch.Tensor, w_content: float = 1.0) -> float:
    """beta with beta * style = w_content * content for these (detached) loss values: the trade-off at which the two
    terms have the same magnitude (the balanced-loss paper's rule for its beta). Averaged over the ranks of a
    distributed run, so every rank trains with the same beta."""
    ratio = (w_content * content.detach() / style.detach().clamp_min(1e-12)).float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(ratio)
        ratio /= torch.distributed.get_world_size()
    return float(ratio)


# The style losses a model config can name in its ``style_loss`` field (TrainConfig ``model.style_loss`` sets it
# for every model at once): "mean_std" (AdaIN moments), "gram" (classic), "balanced_gram" (Cheng et al.).
STYLE_LOSSES = {"mean_std": style_mean_std, "gram": gram_style, "balanced_gram": balanced_gram_style}


def style_loss_fn(name: str) -> Callable[..., torch.Tensor]:
    """The style loss called ``name`` (one of :data:`STYLE_LOSSES`); unknown names raise with the choices."""
    if name not in STYLE_LOSSES:
        raise ValueError(f"style_loss {name!r} not in {sorted(STYLE_LOSSES)}")
    return STYLE_LOSSES[name]


@register_loss
def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, averaged over the batch (0 at the prior)."""
    mu, logvar = mu.float().flatten(1), logvar.float().flatten(1)
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def kl_warmup_weight(step: int, start: int = 0, ramp: int = 0) -> float:
    """KL weight multiplier: 0 before ``start``, then a linear ramp to 1 over ``ramp`` steps (0 = jump to 1)."""
    if step < start:
        return 0.0
    return 1.0 if ramp <= 0 else min(1.0, (step - start) / ramp)


@register_loss
def identity_pixel(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NeAT Eq. 4, first term: pixel MSE of I_cc vs I_c (call once per pair and add)."""
    return F.mse_loss(recon.float(), target.float())


@register_loss
def identity_feature(recon_feats: dict[str, torch.Tensor], target_feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """NeAT Eq. 4, second term: sum over VGG layers of feature MSE."""
    return sum(F.mse_loss(recon_feats[n].float(), target_feats[n].float()) for n in target_feats)


# ------------------------------------------------------------------------------------------------- adversarial
ADV_TYPES = ("nsgan", "hinge", "lsgan")


@register_loss
def adversarial_g(fake_logits: list[torch.Tensor] | torch.Tensor, kind: str = "nsgan") -> torch.Tensor:
    """Generator side of a GAN loss, summed over a list of (multi-scale) logits."""
    logits = fake_logits if isinstance(fake_logits, (list, tuple)) else [fake_logits]
    total = 0.0
    for x in logits:
        x = x.float()
        if kind == "nsgan":
            total = total + F.softplus(-x).mean()
        elif kind == "hinge":
            total = total - x.mean()
        elif kind == "lsgan":
            total = total + (x - 1).pow(2).mean()
        else:
            raise ValueError(f"adversarial loss {kind!r} not in {ADV_TYPES}")
    return total


@register_loss
def adversarial_d(real_logits: list[torch.Tensor] | torch.Tensor, fake_logits: list[torch.Tensor] | torch.Tensor,
                  kind: str = "nsgan") -> torch.Tensor:
    """Discriminator side: real -> 1, fake -> 0 (non-saturating log loss of Eq. 2, hinge, or least squares)."""
    reals = real_logits if isinstance(real_logits, (list, tuple)) else [real_logits]
    fakes = fake_logits if isinstance(fake_logits, (list, tuple)) else [fake_logits]
    total = 0.0
    for r, f in zip(reals, fakes):
        r, f = r.float(), f.float()
        if kind == "nsgan":
            total = total + F.softplus(-r).mean() + F.softplus(f).mean()
        elif kind == "hinge":
            total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
        elif kind == "lsgan":
            total = total + (r - 1).pow(2).mean() + f.pow(2).mean()
        else:
            raise ValueError(f"adversarial loss {kind!r} not in {ADV_TYPES}")
    return total


@register_loss
def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty 0.5 * E||grad_x D(x)||^2 on real inputs (inputs must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_inputs, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean()


# ------------------------------------------------------------------------------------------------- contrastive
@register_loss
def info_nce(query: torch.Tensor, keys: torch.Tensor, positive_mask: torch.Tensor, tau: float,
             exclude_mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with possibly several positives per query (each positive scored against all negatives).

    query (N, D) and keys (M, D) are L2-normalised; positive_mask (N, M) bool; keys that are neither positive nor
    excluded (``exclude_mask``, e.g. the query itself) are negatives. Queries without a positive or without a negative
    are skipped; returns the mean over (query, positive) pairs, 0 when there is none (e.g. a batch of one).
    """
    logits = query.float() @ keys.float().t() / tau  # N, M
    if exclude_mask is None:
        exclude_mask = torch.zeros_like(positive_mask)
    positive_mask = positive_mask & ~exclude_mask
    neg_mask = ~positive_mask & ~exclude_mask
    neg_lse = torch.logsumexp(logits.masked_fill(~neg_mask, float("-inf")), dim=1, keepdim=True)  # N, 1
    # -log(e^p / (e^p + sum e^n)) = logaddexp(p, lse_n) - p
    per_pair = torch.logaddexp(logits, neg_lse.expand_as(logits)) - logits
    valid = positive_mask & neg_mask.any(1, keepdim=True)
    if not valid.any():
        return logits.sum() * 0.0
    return per_pair[valid].mean()


def roll_pair_masks(batch: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive masks for 2B stylisations built with IEContraAST's roll trick.

    Stylisation i < B is (content i, style i); B + i is (content (i+1) % B, style i). Returns (same_style,
    same_content) boolean (2B, 2B) masks with the diagonal cleared.
    """
    idx = torch.arange(2 * batch, device=device)
    style_id = idx % batch
    content_id = torch.where(idx < batch, idx, (idx - batch + 1) % batch)
    eye = torch.eye(2 * batch, dtype=torch.bool, device=device)
    same_style = (style_id[:, None] == style_id[None, :]) & ~eye
    same_content = (content_id[:, None] == content_id[None, :]) & ~eye
    return same_style, same_content


@register_loss
def stylization_contrastive(embeddings: torch.Tensor, positive_mask: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """IEContraAST / NeAT Eqs. 5-6: among stylisations, pull together those sharing a style (or a content)."""
    eye = torch.eye(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    return info_nce(embeddings, embeddings, positive_mask, tau, exclude_mask=eye)
