"""RAST: restorable arbitrary style transfer via multi-restoration, with the follow-up paper's enhancements.

T(x, y) = decoder(transform(VGG(x) as content, VGG(y) as style)). A training step runs both directions with two
restorations each (RAST, WACV 2023; weights of its public code, docs/rast.md):

    right: out1 = T(c, s),  rc1 = T(out1, c)  (restore the content),  rs1 = T(s, out1)  (restore the style)
    left:  out2 = T(s, c),  rc2 = T(c, out2),                         rs2 = T(out2, s)

and the enhancements of "Enhancing methods for RAST" (seed 000), each behind a weight or a switch: an idempotency
loss ||T(T(c, s), s) - T(c, s)||^2, multi-restoration at low resolutions, an LPIPS loss and a simplified
transformation. Transformation modules: SANet attention at relu4_1 + relu5_1 (RAST's default) or AdaIN.

The seed's objective L = l_c L_c + l_s L_s + l_r L_r + l_a L_a + l_id L_id + l_mr L_mr + l_LPIPS L_LPIPS maps onto
the logged terms as ``LOSS_GROUPS`` says; ``rast_enhanced`` trains all of them (``SEED_OBJECTIVE``), and each row
of the seed's Table 1 sets exactly one group's weights to 0 (train/configs/rast_ablation/, docs/rast.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train import losses as L
from train.contrastive import ContrastiveTerm, surrogate
from train.models import build_from_config, register_model
from train.models.layers import ATTENTION_MODES, attention, cap_tokens, mean_std, mean_variance_norm, pad_to_multiple
from train.models.neat import STYLE_WEIGHTS, ContrastHead, DeltaDecoder, MultiScaleDiscriminator
from train.models.vgg import STYLE_LAYERS, VGG19Encoder, feature_channels

TRANSFORMS = ("sanet", "adain")


@dataclass
class RASTConfig:
    """Everything needed to rebuild a RAST model; ``model_config()`` returns it as a dict."""

    # --- encoder
    vgg_weights: str | None = "auto"  # "auto" = $BBST_VGG19_WEIGHTS or torch hub cache; a path; None = random init
    vgg_width: float = 1.0  # channel multiplier of the VGG (1.0 = real VGG-19; tiny values only for tests)
    vgg_format: str | None = None  # "torchvision" or "normalised" (AdaIN/SANet); None = detect from the weights
    # --- transformation and decoder
    transform: str = "sanet"  # "sanet" (SANet at relu4_1 + relu5_1, merged; RAST default) or "adain"
    simplified: bool = False  # seed 000's simplified architecture: SANet at relu4_1 only, no relu5_1 branch/merge
    attention_mode: str = "chunked"  # "chunked", "sdpa" or "full" (see train.models.layers.attention)
    attention_chunk: int = 4096  # content tokens per attention chunk (bounds memory at high resolution)
    max_style_tokens: int = 4096  # style relu4_1 positions kept (relu5_1: a quarter); 4096 = a 512 px style
    decoder_width: float = 1.0  # channel multiplier of the decoder
    # --- loss weights: RAST's public code (IEAST backbone, "replaced" strategy); 0 switches a term off
    w_content: float = 0.0  # L_c(out1, c) + L_c(out2, s); 0 in RAST ("replaced"), 0.25 in the "combined" variant
    w_style: float = 0.0  # L_s(out1, s) + L_s(out2, c); 0 in RAST ("replaced"), 0.25 in the "combined" variant
    # (the restoration terms below restore content and style; "replaced" trains the stylisation through them alone)
    w_content_transitive: float = 2.0  # L_c(rc1, c) + L_c(rs2, s)
    w_style_transitive: float = 2.0  # L_s(rs1, s) + L_s(rc2, c)
    w_style_diff: float = 2.0  # inverse style difference 1/L_s(out1, c) + 1/L_s(out2, s)
    w_content_restoration: float = 1.0  # multi-restoration consistency L_c(rc1, rc2) + L_c(rs1, rs2)
    w_style_restoration: float = 1.0  # multi-restoration consistency L_s(rc1, rc2) + L_s(rs1, rs2)
    w_identity_pixel: float = 50.0  # ||T(c, c) - c||^2 + ||T(s, s) - s||^2 (SANet / IEContraAST)
    w_identity_feature: float = 1.0  # the same over VGG features relu1_1..relu5_1
    w_contrast_style: float = 1.0  # IEContraAST: stylisations sharing a style (relu3_1 head)
    w_contrast_content: float = 1.0  # IEContraAST: stylisations sharing a content (relu4_1 head)
    w_adv: float = 5.0  # two LSGAN discriminators: styles vs out1, contents vs out2
    # --- seed 000's enhancements (off by default: the seed gives no weights)
    w_idempotency: float = 0.0  # ||T(T(c, s), s) - T(c, s)||^2
    w_lowres: float = 0.0  # seed's L_mr: sum over sizes r of ||T(S_r(T(c, s)), S_r(c)) - S_r(c)||^2
    lowres_sizes: tuple[int, ...] = (256, 128, 64)  # the sizes r of L_mr, squares (multiples of 16; seed Table 2)
    w_lpips: float = 0.0  # LPIPS(out1, c) + LPIPS(rs1, s): stylisation vs its content, restored style vs the style
    lpips_net: str = "alex"  # LPIPS backbone ("alex" or "vgg"), as in train.metrics.LPIPSMetric
    lpips_backbone: str | None = "auto"  # LPIPS backbone weights: "auto" (local cache), a path, None = random init
    # --- loss details
    content_layers: tuple[str, ...] = ("relu4_1", "relu5_1")  # taps of L_c (SANet / RAST)
    style_layers: tuple[str, ...] = STYLE_LAYERS  # taps of L_s and of the feature identity loss
    style_loss: str = "mean_std"  # L_s: "mean_std" (RAST), "gram" or "balanced_gram" (Cheng et al. 2021, in [0, 1])
    style_loss_scale: float | None = None  # L_s multiplier; None = STYLE_WEIGHTS[style_loss] / STYLE_WEIGHTS["mean_std"]
    style_diff_eps: float = 1e-5  # keeps the inverse style difference finite
    adv_type: str = "lsgan"  # RAST / IEContraAST use least squares; "nsgan" and "hinge" also available
    contrast_tau: float = 0.2  # IEContraAST temperature
    roll_pairs: bool = True  # also stylise (content i+1, style i): positives for the contrastive terms
    # --- discriminators and heads
    disc_width: int = 64  # first-layer channels of each multi-scale discriminator
    disc_scales: int = 3  # scales per discriminator (IEContraAST: 3)
    proj_dim: int = 128  # embedding size of the contrastive projection heads (IEContraAST: 128)

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform {self.transform!r} not in {TRANSFORMS}")
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {self.attention_mode!r} not in {ATTENTION_MODES}")
        if self.adv_type not in L.ADV_TYPES:
            raise ValueError(f"adv_type {self.adv_type!r} not in {L.ADV_TYPES}")
        bad = [s for s in self.lowres_sizes if s < 16 or s % 16]
        if bad:
            raise ValueError(f"lowres_sizes must be multiples of 16 (relu5_1 is at stride 16), got {bad}")
        self.lowres_sizes = tuple(int(s) for s in self.lowres_sizes)
        self.content_layers = tuple(self.content_layers)
        self.style_layers = tuple(self.style_layers)
        L.style_loss_fn(self.style_loss)  # raises on an unknown name
        if self.style_loss_scale is None:
            # RAST's weights are tuned for the moment loss; another style loss is brought to its scale once, so the
            # inverse style difference and the style terms keep their balance against the content terms
            self.style_loss_scale = STYLE_WEIGHTS[self.style_loss] / STYLE_WEIGHTS["mean_std"]

    def loss_weights(self) -> dict[str, float]:
        """Term name -> weight, the names ``RAST.generator_step`` logs."""
        c = self
        return {"content": c.w_content, "style": c.w_style, "content_transitive": c.w_content_transitive,
                "style_transitive": c.w_style_transitive, "style_diff": c.w_style_diff,
                "content_restoration": c.w_content_restoration, "style_restoration": c.w_style_restoration,
                "identity_pixel": c.w_identity_pixel, "identity_feature": c.w_identity_feature, "adv": c.w_adv,
                "contrast_style": c.w_contrast_style, "contrast_content": c.w_contrast_content,
                "idempotency": c.w_idempotency, "lowres_restoration": c.w_lowres, "lpips": c.w_lpips}


# The seed's loss names -> the logged terms (weights ``w_*``) that make each up. Content and style act on the
# stylisations (out1 = T(c, s), out2 = T(s, c)); the inverse style difference is a style term (it pushes the
# stylisation's style statistics away from its content's). Restoration is RAST's: the images restored from the
# stylisations against the originals (transitive) and the two restorations against each other (consistency).
# The IEContraAST backbone's identity and contrastive terms belong to no seed loss and stay in every row.
LOSS_GROUPS: dict[str, tuple[str, ...]] = {
    "content": ("content",),
    "style": ("style", "style_diff"),
    "restoration": ("content_transitive", "style_transitive", "content_restoration", "style_restoration"),
    "adversarial": ("adv",),
    "idempotency": ("idempotency",),
    "lowres_restoration": ("lowres_restoration",),
    "lpips": ("lpips",),
}
BACKBONE_TERMS = ("identity_pixel", "identity_feature", "contrast_style", "contrast_content")
# The seed's full objective over RAST's public weights: the direct content and style terms at the weights of RAST's
# "combined" strategy (the "replaced" default has none, so a "no content loss" row would remove nothing), and the
# three enhancements at 1 (the seed gives no weights).
SEED_OBJECTIVE = {"w_content": 0.25, "w_style": 0.25, "w_idempotency": 1.0, "w_lowres": 1.0, "w_lpips": 1.0}


# ------------------------------------------------------------------------------------------------ transformations
class SANet(nn.Module):
    """Style-attentional block (Park & Lee 2019): attention of normalised content over normalised style, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Conv2d(channels, channels, 1)
        self.g = nn.Conv2d(channels, channels, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, fc: torch.Tensor, fs: torch.Tensor, mode: str = "chunked", chunk_size: int = 4096,
                ) -> torch.Tensor:
        b, c, h, w = fc.shape
        q = self.f(mean_variance_norm(fc)).flatten(2).transpose(1, 2)
        k = self.g(mean_variance_norm(fs)).flatten(2).transpose(1, 2)
        v = self.h(fs).flatten(2).transpose(1, 2)
        o = attention(q, k, v, mode=mode, chunk_size=chunk_size, scale=1.0)  # SANet: no 1/sqrt(d)
        return fc + self.out(o.transpose(1, 2).reshape(b, c, h, w))


def adain(fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation: content features with the style features' channel mean and std."""
    mc, sc = mean_std(fc)
    ms, ss = mean_std(fs)
    return (fc - mc) / sc * ss + ms


def scale_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """S_r of seed 000's L_mr: ``img`` resized to ``size`` x ``size`` (bilinear, antialiased; as is at that size)."""
    if tuple(img.shape[-2:]) == (size, size):
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class SANetTransform(nn.Module):
    """RAST / IEContraAST transform: SANet at relu4_1 and relu5_1, upsampled and summed, then a 3x3 merge conv."""

    def __init__(self, c4: int, c5: int, simplified: bool = False):
        super().__init__()
        self.sanet4 = SANet(c4)
        self.simplified = simplified
        if not simplified:
            if c5 != c4:
                raise ValueError("relu4_1 and relu5_1 must have the same width")
            self.sanet5 = SANet(c5)
            self.merge = nn.Conv2d(c4, c4, 3, padding=1, padding_mode="reflect")

    def forward(self, fc: dict, fs: dict, mode: str, chunk_size: int, max_tokens: int) -> torch.Tensor:
        o = self.sanet4(fc["relu4_1"], cap_tokens(fs["relu4_1"], max_tokens), mode, chunk_size)
        if self.simplified:
            return o
        o5 = self.sanet5(fc["relu5_1"], cap_tokens(fs["relu5_1"], max(1, max_tokens // 4)), mode, chunk_size)
        return self.merge(o + F.interpolate(o5, size=o.shape[-2:], mode="nearest"))


# ------------------------------------------------------------------------------------------------------------ model
class RAST(nn.Module):
    """RAST generator (transform + decoder), its two discriminators and contrastive heads, with the step interface."""

    def __init__(self, cfg: RASTConfig):
        super().__init__()
        self.cfg = cfg
        self.vgg = VGG19Encoder(cfg.vgg_weights, width=cfg.vgg_width, fmt=cfg.vgg_format)
        cfg.vgg_format = self.vgg.fmt
        ch = feature_channels(cfg.vgg_width)
        self.transform = (SANetTransform(ch["relu4_1"], ch["relu5_1"], cfg.simplified)
                          if cfg.transform == "sanet" else None)
        self.decoder = DeltaDecoder(ch["relu4_1"], cfg.decoder_width, zero_init=False)
        self.style_head = ContrastHead(ch["relu3_1"], cfg.proj_dim)
        self.content_head = ContrastHead(ch["relu4_1"], cfg.proj_dim)
        self.disc_style = MultiScaleDiscriminator(cfg.disc_width, cfg.disc_scales)  # real = style images
        self.disc_content = MultiScaleDiscriminator(cfg.disc_width, cfg.disc_scales)  # real = content images
        self.lpips = None
        if cfg.w_lpips:
            from train.metrics import LPIPSMetric

            self.lpips = LPIPSMetric(cfg.lpips_net, cfg.lpips_backbone)
        need_t = ("relu4_1",) if cfg.transform == "adain" or cfg.simplified else ("relu4_1", "relu5_1")
        self._t_layers = need_t
        self._feat_layers = tuple(dict.fromkeys(cfg.style_layers + cfg.content_layers + need_t + ("relu3_1",)))

    # ------------------------------------------------------------------------------------------ parameter groups
    def generator_parameters(self) -> list[nn.Parameter]:
        mods = [self.decoder, self.style_head, self.content_head] + ([self.transform] if self.transform else [])
        return [p for m in mods for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.disc_style.parameters()) + list(self.disc_content.parameters())

    def model_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---------------------------------------------------------------------------------------------- transfer
    def encode(self, img: torch.Tensor, layers: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        return self.vgg(img, layers or self._feat_layers)

    def transform_features(self, fc: dict, fs: dict) -> torch.Tensor:
        """Stylised relu4_1 features from content and style feature dicts."""
        if self.transform is None:
            return adain(fc["relu4_1"], cap_tokens(fs["relu4_1"], self.cfg.max_style_tokens))
        return self.transform(fc, fs, self.cfg.attention_mode, self.cfg.attention_chunk, self.cfg.max_style_tokens)

    def transfer(self, fc: dict, fs: dict) -> torch.Tensor:
        """T(x, y) on encoded inputs: the decoded image (unclamped, for the losses)."""
        return self.decoder(self.transform_features(fc, fs))

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0, steps: int = 1,
                ) -> torch.Tensor:
        """Inference: content (B,3,H,W) in [0,1] at any size, style (B or 1,3,h,w) -> stylised (B,3,H,W) in [0,1].

        ``alpha`` interpolates the decoder input between the content's and the stylised features (> 1 extrapolates);
        ``steps`` applies the transfer repeatedly (RAST's ``--steps``).
        """
        h, w = content.shape[-2:]
        if style.shape[0] == 1 and content.shape[0] > 1:
            style = style.expand(content.shape[0], -1, -1, -1)
        fs = self.encode(style, self._t_layers)
        x = pad_to_multiple(content, 16)
        for _ in range(max(1, steps)):
            fc = self.encode(x, self._t_layers)
            feat = self.transform_features(fc, fs)
            if alpha != 1.0:
                feat = fc["relu4_1"] + alpha * (feat - fc["relu4_1"])
            x = self.decoder(feat)[..., :x.shape[-2], :x.shape[-1]].clamp(0, 1)
        return x[..., :h, :w]

    def restore_content(self, stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """rc = T(stylised, content): the content image recovered from its stylisation (no grad, clamped)."""
        return self.stylize(stylised, content)

    def restore_style(self, style: torch.Tensor, stylised: torch.Tensor) -> torch.Tensor:
        """rs = T(style, stylised): the style image recovered from a stylisation (no grad, clamped)."""
        return self.stylize(style, stylised)

    # ------------------------------------------------------------------------------------------ training steps
    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator"):
        if step == "generator":
            return self.generator_step(batch)
        if step == "discriminator":
            return self.discriminator_step(batch)
        raise ValueError(f"step must be 'generator' or 'discriminator', got {step!r}")

    def _pairs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs (c_i, s_i) and, with roll_pairs, (c_{i+1}, s_i) (IEContraAST's batch); index tensors."""
        for key in ("content", "style"):
            h, w = batch[key].shape[-2:]
            if h % 16 or w % 16:
                raise ValueError(f"batch[{key!r}] is {h}x{w}: training crops must be multiples of 16 "
                                 "(stylize() pads arbitrary sizes itself)")
        b = batch["content"].shape[0]
        idx = torch.arange(b, device=batch["content"].device)
        if self.cfg.roll_pairs and b > 1:
            return torch.cat([idx, (idx + 1) % b]), torch.cat([idx, idx])
        return idx, idx

    def _contrastive_terms(self, f_out1: dict, ci: torch.Tensor, si: torch.Tensor) -> dict[str, ContrastiveTerm]:
        if len(ci) == len(torch.unique(ci)) and len(si) == len(torch.unique(si)):
            return {}
        cfg = self.cfg
        terms = {}
        if cfg.w_contrast_style:
            terms["contrast_style"] = ContrastiveTerm(self.style_head(f_out1["relu3_1"]), si, cfg.w_contrast_style,
                                                      cfg.contrast_tau)
        if cfg.w_contrast_content:
            terms["contrast_content"] = ContrastiveTerm(self.content_head(f_out1["relu4_1"]), ci,
                                                        cfg.w_contrast_content, cfg.contrast_tau)
        return terms

    def contrastive_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, ContrastiveTerm]:
        """The contrastive embeddings of out1 = T(c, s) alone (logit accumulation's first pass)."""
        ci, si = self._pairs(batch)
        fc = self.encode(batch["content"][ci], self._t_layers)
        fs = self.encode(batch["style"][si], self._t_layers)
        out1 = self.transfer(fc, fs)
        return self._contrastive_terms(self.encode(out1, ("relu3_1", "relu4_1")), ci, si)

    def generator_step(self, batch: dict[str, torch.Tensor],
                       contrastive_grads: dict[str, torch.Tensor] | None = None):
        """The weighted RAST losses of one micro-batch; ``contrastive_grads`` = big-batch gradients
        (train/contrastive.py). Only terms with a non-zero weight are computed and logged."""
        cfg = self.cfg
        w = self.loss_weights()
        ci, si = self._pairs(batch)
        c, s = batch["content"][ci], batch["style"][si]
        with torch.no_grad():
            fc, fs = self.encode(c), self.encode(s)
        t = self.transfer
        out1 = t(fc, fs)
        f1 = self.encode(out1)
        out2 = t(fs, fc)
        f2 = self.encode(out2)

        def lc(a: dict, b: dict) -> torch.Tensor:
            return L.content_normalized(a, b, cfg.content_layers)

        style_fn, style_scale = L.style_loss_fn(cfg.style_loss), cfg.style_loss_scale

        def ls(a: dict, b: dict) -> torch.Tensor:
            return style_scale * style_fn(a, b, cfg.style_layers)

        restored: dict[str, torch.Tensor] = {}
        feats: dict[str, dict] = {}

        def rf(name: str) -> dict:
            """Features of a restoration, computed once: rc1 = T(out1, c), rs1 = T(s, out1), rc2, rs2 alike."""
            if name not in feats:
                x, y = {"rc1": (f1, fc), "rs1": (fs, f1), "rc2": (fc, f2), "rs2": (f2, fs)}[name]
                restored[name] = t(x, y)
                feats[name] = self.encode(restored[name])
            return feats[name]

        terms: dict[str, torch.Tensor] = {}
        if w["content"]:
            terms["content"] = lc(f1, fc) + lc(f2, fs)
        if w["style"]:
            terms["style"] = ls(f1, fs) + ls(f2, fc)
        if w["style_diff"]:
            eps = cfg.style_diff_eps
            terms["style_diff"] = 1.0 / (ls(f1, fc) + eps) + 1.0 / (ls(f2, fs) + eps)
        if w["content_transitive"]:
            terms["content_transitive"] = lc(rf("rc1"), fc) + lc(rf("rs2"), fs)
        if w["style_transitive"]:
            terms["style_transitive"] = ls(rf("rs1"), fs) + ls(rf("rc2"), fc)
        if w["content_restoration"]:
            terms["content_restoration"] = lc(rf("rc1"), rf("rc2")) + lc(rf("rs1"), rf("rs2"))
        if w["style_restoration"]:
            terms["style_restoration"] = ls(rf("rc1"), rf("rc2")) + ls(rf("rs1"), rf("rs2"))
        if w["identity_pixel"] or w["identity_feature"]:
            i_cc, i_ss = t(fc, fc), t(fs, fs)
            if w["identity_pixel"]:
                terms["identity_pixel"] = L.identity_pixel(i_cc, c) + L.identity_pixel(i_ss, s)
            if w["identity_feature"]:
                fcc, fss = self.encode(i_cc, cfg.style_layers), self.encode(i_ss, cfg.style_layers)
                terms["identity_feature"] = (L.identity_feature(fcc, {k: fc[k] for k in cfg.style_layers})
                                             + L.identity_feature(fss, {k: fs[k] for k in cfg.style_layers}))
        if w["adv"]:
            terms["adv"] = (L.adversarial_g(self.disc_style(out1), cfg.adv_type)
                            + L.adversarial_g(self.disc_content(out2), cfg.adv_type))
        if w["idempotency"]:
            terms["idempotency"] = self.idempotency_loss(out1, fs, f1)
        if w["lowres_restoration"]:
            terms["lowres_restoration"] = self.lowres_restoration_loss(out1, c)
        if w["lpips"]:
            rf("rs1")
            terms["lpips"] = self.lpips.distance(out1, c).mean() + self.lpips.distance(restored["rs1"], s).mean()
        accumulated = 0.0
        for name, term in self._contrastive_terms(f1, ci, si).items():
            if contrastive_grads is None:
                terms[name] = term.loss()
            elif name in contrastive_grads:
                accumulated = accumulated + surrogate(term, contrastive_grads[name])
        loss = sum(w[k] * v for k, v in terms.items()) + accumulated
        logs = {k: float(v.detach()) for k, v in terms.items()}
        b = batch["content"].shape[0]
        images = {"content": c[:b].detach(), "style": s[:b].detach(), "output": out1[:b].detach().clamp(0, 1)}
        for key, name in (("restored_content", "rc1"), ("restored_style", "rs1")):
            if name in restored:
                images[key] = restored[name][:b].detach().clamp(0, 1)
        return loss, logs, images

    def loss_weights(self) -> dict[str, float]:
        """Term name -> weight, the names ``generator_step`` logs."""
        return self.cfg.loss_weights()

    def idempotency_loss(self, out: torch.Tensor, fs: dict, f_out: dict | None = None) -> torch.Tensor:
        """||T(T(c, s), s) - T(c, s)||^2 for ``out`` = T(c, s) (mean over pixels)."""
        f_out = f_out if f_out is not None else self.encode(out, self._t_layers)
        return F.mse_loss(self.transfer(f_out, fs).float(), out.float())

    def lowres_restoration_loss(self, stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Seed 000's multi-restoration loss for low resolutions, in this order (section 3.3):

            L_mr = sum over r in lowres_sizes of mean( (R_r(S_r(T(c, s))) - S_r(c))^2 ),   R_r(x) = T(x, S_r(c))

        ``stylised`` = T(c, s) at the training size (with its gradient). S_r resizes to r x r (bilinear,
        antialiased): the stylisation is scaled down *after* stylising, then restored by RAST's restoration (the
        transfer with the content as the style reference) given the content at the same size, and compared with
        that scaled content: the seed's I_c, at the size R's output has.
        """
        total = 0.0
        for size in self.cfg.lowres_sizes:
            c_r = scale_to(content, size)
            restored = self.transfer(self.encode(scale_to(stylised, size), self._t_layers),
                                     self.encode(c_r, self._t_layers))
            total = total + F.mse_loss(restored.float(), c_r.float())
        return total

    def discriminator_step(self, batch: dict[str, torch.Tensor]):
        cfg = self.cfg
        ci, si = self._pairs(batch)
        c, s = batch["content"][ci], batch["style"][si]
        terms: dict[str, torch.Tensor] = {}
        if cfg.w_adv:
            with torch.no_grad():
                fc, fs = self.encode(c, self._t_layers), self.encode(s, self._t_layers)
                out1, out2 = self.transfer(fc, fs), self.transfer(fs, fc)
            terms["adv_style"] = L.adversarial_d(self.disc_style(s), self.disc_style(out1), cfg.adv_type)
            terms["adv_content"] = L.adversarial_d(self.disc_content(c), self.disc_content(out2), cfg.adv_type)
            loss = cfg.w_adv * (terms["adv_style"] + terms["adv_content"])
        else:
            loss = sum(p.sum() * 0.0 for p in self.discriminator_parameters())
        return loss, {k: float(v.detach()) for k, v in terms.items()}


# --------------------------------------------------------------------------------------------------------- registry
_TINY = {"vgg_weights": None, "vgg_width": 1 / 16, "decoder_width": 1 / 16, "max_style_tokens": 256,
         "attention_chunk": 64, "disc_width": 8, "disc_scales": 2, "proj_dim": 16, "lowres_sizes": (32, 16),
         "lpips_backbone": None}
# AdaIN backbone of the TOMM version (AdaIN-combined weights): L_c at relu4_1, no identity or contrastive terms
_ADAIN = {"transform": "adain", "content_layers": ("relu4_1",), "style_layers": STYLE_LAYERS[:4],
          "w_content": 2.0, "w_style": 2.0, "w_content_transitive": 4.0, "w_style_transitive": 4.0,
          "w_style_diff": 4.0, "w_content_restoration": 2.0, "w_style_restoration": 2.0, "w_identity_pixel": 0.0,
          "w_identity_feature": 0.0, "w_contrast_style": 0.0, "w_contrast_content": 0.0}


def _build(defaults: dict, overrides: dict) -> RAST:
    return build_from_config(RAST, RASTConfig, "RAST", defaults, overrides)


@register_model
def rast(**kwargs) -> RAST:
    """RAST with SANet attention (IEContraAST backbone), the WACV code's loss weights; VGG-19 from the local cache."""
    return _build({}, kwargs)


@register_model
def rast_adain(**kwargs) -> RAST:
    """RAST on the AdaIN transformation (TOMM "AdaIN-combined" weights)."""
    return _build(_ADAIN, kwargs)


@register_model
def rast_simple(**kwargs) -> RAST:
    """Seed 000's simplified architecture: one SANet at relu4_1, no relu5_1 branch and merge conv."""
    return _build({"simplified": True}, kwargs)


@register_model
def rast_enhanced(**kwargs) -> RAST:
    """Seed 000's full objective (``SEED_OBJECTIVE``): RAST with direct content and style terms, idempotency,
    low-resolution multi-restoration and LPIPS."""
    return _build(SEED_OBJECTIVE, kwargs)


@register_model
def rast_tiny(**kwargs) -> RAST:
    """Random-init tiny RAST (VGG width 1/16, small discriminators) for CPU tests at 32-64 px."""
    return _build(_TINY, kwargs)

