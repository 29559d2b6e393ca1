"""NeAT: PAMA-style attention over frozen VGG-19 features, decoding RGB deltas over a recoloured content prior."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from train import losses as L
from train.contrastive import ContrastiveTerm, surrogate
from train.models import build_from_config, register_model
from train.models.layers import (
    ATTENTION_MODES,
    PAMABlock,
    bilateral_filter,
    cap_tokens,
    gaussian_blur,
    pad_to_multiple,
    recolour,
    sobel_magnitude,
)
from train.models.vgg import STYLE_LAYERS, VGG16Encoder, VGG19Encoder, feature_channels

# Default style weight per style loss: 3 for mean/std (SANet/ContraAST); the balanced loss lies in [0, 1] per layer
# and, summed over the five style layers, a weight of 2 puts it at the content term's magnitude at the start of
# training (the balanced-loss paper's rule for its weight); the Gram MSE of C*H*W-normalised Grams, summed over the
# layers, is ~5e-4 of the mean/std loss, hence 2e3.
STYLE_WEIGHTS = {"mean_std": 3.0, "gram": 2e3, "balanced_gram": 2.0}


@dataclass
class NeATConfig:
    """Everything needed to rebuild a NeAT model; ``model_config()`` returns it as a dict."""

    # --- encoder
    vgg_weights: str | None = "auto"  # "auto" = $BBST_VGG19_WEIGHTS or torch hub cache; a path; None = random init
    vgg_width: float = 1.0  # channel multiplier of the VGG (1.0 = real VGG-19; tiny values only for tests)
    vgg_format: str | None = None  # "torchvision" or "normalised" (AdaIN/PAMA); None = detect from the weights
    # --- transformation
    num_blocks: int = 4  # PAMA blocks applied progressively at relu4_1 (NeAT: 4)
    attention_mode: str = "chunked"  # "chunked", "sdpa" or "full" (reference, quadratic memory)
    attention_chunk: int = 4096  # content tokens per attention chunk; bounds peak memory at chunk x style tokens
    max_style_tokens: int = 4096  # style relu4_1 positions kept (area-pooled above this; 4096 = a 512 px style)
    decoder_width: float = 1.0  # channel multiplier of the decoder
    # --- content prior
    # True (paper): the decoder outputs RGB deltas added to the weighted, filtered, recoloured content prior.
    # False: it outputs the image itself (no prior; the prior_* fields are unused): Table 1's "no prior deltas".
    prior_deltas: bool = True
    prior_weight: float = 0.5  # the prior is scaled by this before the deltas are added (paper: 0.5)
    prior_blur_kernel: int = 7  # Gaussian blur kernel in px (paper: 7); 0 = off
    prior_blur_sigma: float = 0.0  # Gaussian sigma; 0 = OpenCV's rule for the kernel size
    prior_bilateral_diameter: int = 25  # bilateral filter window (paper: 25); 0 = off
    prior_bilateral_sigma_color: float = 100.0  # on the 0-255 scale (paper: 100)
    prior_bilateral_sigma_space: float = 100.0  # in pixels (paper: 100)
    prior_recolour: bool = True  # match the prior's RGB mean/covariance to the style image
    # --- loss weights (sources in docs/neat.md)
    w_style: float | None = None  # style loss weight; None = the default of style_loss (STYLE_WEIGHTS)
    w_content: float = 1.0  # conv4_2 perceptual loss
    w_identity_pixel: float = 50.0  # ||I_cc - I_c|| + ||I_ss - I_s|| (ContraAST)
    w_identity_feature: float = 1.0  # VGG-feature identity (ContraAST)
    w_adv: float = 5.0  # domain-level adversarial loss (ContraAST)
    w_contrast_style: float = 0.3  # stylisations sharing a style (ContraAST)
    w_contrast_content: float = 0.3  # stylisations sharing a content (ContraAST)
    w_style_nce: float = 0.05  # output vs two crops of its style image, generator side (CAST lambda_NCE_G)
    w_style_nce_d: float = 1.0  # style-crop vs style-crop NCE training the style projector (CAST lambda_NCE_D)
    w_patch_simple: float = 0.25  # Sobel-simple patch co-occurrence loss (paper: 0.25)
    w_patch_complex: float = 0.75  # Sobel-complex patch co-occurrence loss (paper: 0.75)
    w_r1: float = 0.0  # R1 penalty on real images for the domain discriminator (0 = off)
    w_patch_r1: float = 0.0  # R1 penalty on real style patches of both patch discriminators (Swapping AE: 1.0)
    style_layers: tuple[str, ...] = STYLE_LAYERS  # VGG taps of the style and identity-feature losses
    style_loss: str = "mean_std"  # "mean_std" (AdaIN moments), "gram" or "balanced_gram" (Cheng et al. 2021)
    content_layer: str = "conv4_2"  # VGG tap of the content loss
    loss_network: str = "encoder"  # style/content loss features: "encoder" (the VGG-19 above) or "vgg16" (separate)
    loss_vgg_weights: str | None = "auto"  # VGG-16 weights when loss_network="vgg16" ("auto" = local cache; None)
    adv_type: str = "nsgan"  # "nsgan" (paper Eq. 2), "hinge" or "lsgan"
    contrast_tau: float = 0.2  # temperature of the stylisation contrastive losses (ContraAST)
    nce_tau: float = 0.07  # temperature of the style-crop NCE (CAST)
    nce_queue_size: int = 4096  # MoCo-style queue of past style-crop embeddings used as extra negatives (CAST: 4096)
    roll_pairs: bool = True  # also stylise (content i+1, style i) so same-style/same-content positives exist
    # --- discriminators and heads
    disc_width: int = 64  # first-layer channels of the multi-scale domain discriminator
    disc_scales: int = 3  # scales of the domain discriminator (ContraAST: 3)
    patch_size: int = 64  # patches are resampled to this square size for the co-occurrence discriminators
    patch_num_crops: int = 8  # patches per tier (simple/complex) and image; 2x this are sampled and sorted
    patch_min_scale: float = 0.125  # patch side as a fraction of the image's short side (Swapping AE: 1/8..1/4)
    patch_max_scale: float = 0.25
    patch_disc_width: int = 32  # first-layer channels of each patch discriminator
    patch_disc_max_width: int = 384  # channel cap of the patch encoder (Swapping AE: 384)
    patch_mlp_width: int = 1024  # hidden width of the co-occurrence MLP
    proj_dim: int = 128  # embedding size of the contrastive projection heads
    style_nce_layers: tuple[str, ...] = ("relu2_1", "relu3_1", "relu4_1")  # taps of the CAST-style projector

    def __post_init__(self):
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {self.attention_mode!r} not in {ATTENTION_MODES}")
        if self.adv_type not in L.ADV_TYPES:
            raise ValueError(f"adv_type {self.adv_type!r} not in {L.ADV_TYPES}")
        L.style_loss_fn(self.style_loss)  # raises on an unknown name
        if self.w_style is None:
            self.w_style = STYLE_WEIGHTS[self.style_loss]
        if self.loss_network not in ("encoder", "vgg16"):
            raise ValueError(f"loss_network {self.loss_network!r} not in ('encoder', 'vgg16')")
        if self.patch_num_crops < 2:
            raise ValueError("patch_num_crops must be >= 2 (each patch is compared with the others of its tier)")
        self.style_layers = tuple(self.style_layers)
        self.style_nce_layers = tuple(self.style_nce_layers)


# --------------------------------------------------------------------------------------------------------- decoder
def _conv(cin: int, cout: int, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")]
    return layers + [nn.ReLU(inplace=True)] if act else layers


class DeltaDecoder(nn.Module):
    """AdaIN-mirror decoder from relu4_1 (stride 8) to 3 channels (no output activation).

    NeAT decodes an RGB delta and starts from a zero last layer; RAST decodes the image itself (``zero_init=False``).
    """

    def __init__(self, in_channels: int, width: float = 1.0, zero_init: bool = True):
        super().__init__()
        c256, c128, c64 = (max(2, round(c * width)) for c in (256, 128, 64))
        up = [nn.Upsample(scale_factor=2, mode="nearest")]
        self.net = nn.Sequential(
            *_conv(in_channels, c256), *up,
            *_conv(c256, c256), *_conv(c256, c256), *_conv(c256, c256), *_conv(c256, c128), *up,
            *_conv(c128, c128), *_conv(c128, c64), *up,
            *_conv(c64, c64), *_conv(c64, 3, act=False),
        )
        if zero_init:
            # Start as "no edit": the first outputs are the (weighted) prior itself, a sane image from step 0.
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        else:
            # He init keeps the signal alive through the 9 convs (the default init shrinks it ~3x per layer, so an
            # untrained image decoder would start from a flat image with nearly no gradient)
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


# --------------------------------------------------------------------------------------------------- discriminators
class MultiScaleDiscriminator(nn.Module):
    """Domain-level discriminator (ContraAST): PatchGAN at several image scales, one logit map per scale."""

    def __init__(self, width: int = 64, scales: int = 3):
        super().__init__()

        def one() -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = width
            for _ in range(3):
                layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.InstanceNorm2d(2 * c), nn.LeakyReLU(0.2, inplace=True)]
                c *= 2
            return nn.Sequential(*layers, nn.Conv2d(c, 1, 3, padding=1))

        self.nets = nn.ModuleList(one() for _ in range(scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
                if min(x.shape[-2:]) < 32:  # four stride-2 convs would leave < 2x2 for instance norm
                    break
            outs.append(net(x))
        return outs


class _ResDown(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.AvgPool2d(2))
        self.skip = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.body(x) + self.skip(x)) * 2 ** -0.5


class PatchCooccurrenceDiscriminator(nn.Module):
    """Swapping-Autoencoder patch co-occurrence D: is ``query`` a patch of the image the reference patches come from?

    A residual encoder maps each patch to a vector; the references are averaged, concatenated with the query and
    scored by an MLP.
    """

    def __init__(self, patch_size: int = 64, width: int = 32, max_width: int = 384, mlp_width: int = 1024):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c, size = width, patch_size
        while size > 4:
            nc = min(2 * c, max_width)
            layers.append(_ResDown(c, nc))
            c, size = nc, size // 2
        layers += [nn.Conv2d(c, c, 3), nn.LeakyReLU(0.2, inplace=True), nn.Flatten()]
        self.encoder = nn.Sequential(*layers)
        feat_dim = c * max(1, size - 2) ** 2
        self.classifier = nn.Sequential(
            nn.Linear(2 * feat_dim, mlp_width), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(mlp_width, mlp_width // 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(mlp_width // 2, 1),
        )

    def forward(self, query_feat: torch.Tensor, ref_feat: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([query_feat, ref_feat], dim=1)).squeeze(1)


def sample_patch_boxes(batch: int, num: int, height: int, width: int, min_scale: float, max_scale: float,
                       device: torch.device) -> torch.Tensor:
    """Random square boxes (roi_align format [b, x1, y1, x2, y2]), ``num`` per image, side a fraction of min(H, W)."""
    side = (torch.rand(batch, num, device=device) * (max_scale - min_scale) + min_scale) * min(height, width)
    x1 = torch.rand(batch, num, device=device) * (width - side)
    y1 = torch.rand(batch, num, device=device) * (height - side)
    bidx = torch.arange(batch, device=device, dtype=side.dtype).view(-1, 1).expand(batch, num)
    return torch.stack([bidx, x1, y1, x1 + side, y1 + side], dim=-1).reshape(-1, 5)


def sobel_split(img: torch.Tensor, guide: torch.Tensor, num_per_tier: int, min_scale: float, max_scale: float,
                patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample 2*num_per_tier patches per image, sort them by mean Sobel magnitude of ``guide`` at the same place.

    Returns (simple, complex) patch tensors, each (B, num_per_tier, 3, patch_size, patch_size): the low-intensity
    half and the high-intensity half. ``guide`` is the image whose edges define complexity (the content image for
    a stylisation, the style image itself for style patches).
    """
    b, _, h, w = img.shape
    n = 2 * num_per_tier
    boxes = sample_patch_boxes(b, n, h, w, min_scale, max_scale, img.device).to(img.dtype)
    with torch.no_grad():
        edges = sobel_magnitude(guide.float())
        score = roi_align(edges, boxes.float(), output_size=4, aligned=True).mean((1, 2, 3)).view(b, n)
        order = score.argsort(dim=1)
    patches = roi_align(img, boxes, output_size=patch_size, aligned=True).view(b, n, 3, patch_size, patch_size)
    patches = torch.gather(patches, 1, order.view(b, n, 1, 1, 1).expand_as(patches))
    return patches[:, :num_per_tier], patches[:, num_per_tier:]


class ContrastHead(nn.Module):
    """Spatially pooled features -> MLP -> unit vector (ContraAST projection head; mean pooling keeps it size-free)."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        hidden = max(dim, cin // 2)
        self.mlp = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(feat.float().mean((2, 3))), dim=1)


class StyleProjector(nn.Module):
    """CAST multi-layer style projector: per tap cat(GAP, GMP) -> linear+ReLU -> linear projector -> unit vector."""

    def __init__(self, channels: dict[str, int], layers: tuple[str, ...], dim: int):
        super().__init__()
        self.layers = layers
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(2 * channels[name], channels[name]), nn.ReLU(inplace=True),
                                nn.Linear(channels[name], 2 * dim), nn.Linear(2 * dim, dim))
            for name in layers
        })

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.layers:
            f = feats[name].float()
            pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], dim=1)
            out[name] = F.normalize(self.heads[name](pooled), dim=1)
        return out


# ------------------------------------------------------------------------------------------------------------ model
class NeAT(nn.Module):
    """NeAT generator, its discriminators and heads, with the trainer-facing step interface."""

    def __init__(self, cfg: NeATConfig):
        super().__init__()
        self.cfg = cfg
        self.vgg = VGG19Encoder(cfg.vgg_weights, width=cfg.vgg_width, fmt=cfg.vgg_format)
        cfg.vgg_format = self.vgg.fmt  # record the detected layout so a checkpoint rebuilds the same encoder
        ch = feature_channels(cfg.vgg_width)
        c4 = ch["relu4_1"]
        # generator
        self.blocks = nn.ModuleList(PAMABlock(c4) for _ in range(cfg.num_blocks))
        # deltas start at zero (output = the weighted prior); an image decoder starts from He init like RAST's
        self.decoder = DeltaDecoder(c4, cfg.decoder_width, zero_init=cfg.prior_deltas)
        self.style_head = ContrastHead(ch["relu3_1"], cfg.proj_dim)
        self.content_head = ContrastHead(ch["relu4_1"], cfg.proj_dim)
        # discriminators (trained by discriminator_step)
        self.domain_disc = MultiScaleDiscriminator(cfg.disc_width, cfg.disc_scales)
        self.patch_disc_simple = PatchCooccurrenceDiscriminator(cfg.patch_size, cfg.patch_disc_width,
                                                                cfg.patch_disc_max_width, cfg.patch_mlp_width)
        self.patch_disc_complex = PatchCooccurrenceDiscriminator(cfg.patch_size, cfg.patch_disc_width,
                                                                 cfg.patch_disc_max_width, cfg.patch_mlp_width)
        self.style_projector = StyleProjector(ch, cfg.style_nce_layers, cfg.proj_dim)
        # Negatives for the style NCE beyond the batch; buffers, so checkpoints and resume carry them.
        for name in cfg.style_nce_layers:
            self.register_buffer(f"nce_queue_{name}",
                                 F.normalize(torch.randn(cfg.nce_queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("nce_queue_ptr", torch.zeros((), dtype=torch.long))
        self._loss_layers = tuple(dict.fromkeys(cfg.style_layers + cfg.style_nce_layers + ("relu3_1", "relu4_1",
                                                                                            "conv4_2")))
        # Optional separate loss network (the balanced-loss paper's VGG-16 setup); frozen like the encoder.
        self.loss_vgg = (VGG16Encoder(cfg.loss_vgg_weights, width=cfg.vgg_width)
                         if cfg.loss_network == "vgg16" else None)
        if self.loss_vgg is None:
            self._loss_layers = tuple(dict.fromkeys(self._loss_layers + (cfg.content_layer,)))

    # ------------------------------------------------------------------------------------------- parameter groups
    def generator_parameters(self) -> list[nn.Parameter]:
        mods = [self.blocks, self.decoder, self.style_head, self.content_head]
        return [p for m in mods for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        mods = [self.domain_disc, self.patch_disc_simple, self.patch_disc_complex, self.style_projector]
        return [p for m in mods for p in m.parameters()]

    def model_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    # ---------------------------------------------------------------------------------------------- generation
    def filter_prior(self, content: torch.Tensor, blur: float | None = None) -> torch.Tensor:
        """Blur + bilateral-filter the content; ``blur`` scales both window sizes (1 = training, 0 = off).

        A model without prior deltas has no prior: the content passes through (it only gives the output size).
        """
        cfg, strength = self.cfg, 1.0 if blur is None else float(blur)
        if not cfg.prior_deltas:
            return content
        if strength < 0:
            raise ValueError(f"blur strength must be >= 0, got {blur}")
        with torch.no_grad(), torch.autocast(device_type=content.device.type, enabled=False):
            x = content.float()
            k = round(cfg.prior_blur_kernel * strength)
            if k > 1:
                x = gaussian_blur(x, k, cfg.prior_blur_sigma * strength or None)
            d = round(cfg.prior_bilateral_diameter * strength)
            if d > 1:
                x = bilateral_filter(x, d, cfg.prior_bilateral_sigma_color / 255.0, cfg.prior_bilateral_sigma_space)
        return x.to(content.dtype)

    def make_prior(self, filtered: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Recolour the filtered content to the style image's colour mean/covariance (if enabled)."""
        if not (self.cfg.prior_recolour and self.cfg.prior_deltas):
            return filtered
        with torch.no_grad():
            return recolour(filtered, style)

    def transform(self, fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
        """Progressive attentional alignment of content relu4_1 features to (capped) style relu4_1 features."""
        fs = cap_tokens(fs, self.cfg.max_style_tokens)
        fcs = fc
        for block in self.blocks:
            fcs = block(fcs, fs, mode=self.cfg.attention_mode, chunk_size=self.cfg.attention_chunk)
        return fcs

    def generate(self, fc4: torch.Tensor, fs4: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Stylised image = prior_weight * prior + decoded RGB deltas (unclamped, for the losses).

        Without ``prior_deltas`` the decoded image itself (``prior`` only gives the output size).
        """
        delta = self.decoder(self.transform(fc4, fs4))[..., :prior.shape[-2], :prior.shape[-1]]
        return self.cfg.prior_weight * prior + delta if self.cfg.prior_deltas else delta

    @property
    def disabled_controls(self) -> tuple[str, ...]:
        """Inference controls ``stylize`` accepts but this instance has nothing to apply them to."""
        return () if self.cfg.prior_deltas else ("blur", "prior_weight")

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0,
                blur: float | None = None, prior_weight: float | None = None) -> torch.Tensor:
        """Inference: content (B,3,H,W) in [0,1] at any size, style (B or 1,3,h,w) -> stylised (B,3,H,W) in [0,1].

        ``alpha`` interpolates the decoder input between content and stylised features and the prior between the
        original content and the recoloured prior; alpha > 1 extrapolates (stronger style). ``blur`` scales the
        prior filters (None = as trained, 0 = no blur). ``prior_weight`` replaces the trained prior weighting
        (None = as trained; 0 = the decoded deltas alone, an inference-time switch, not a model trained without
        the prior). A model trained without prior deltas (``prior_deltas=False``) has neither control.
        """
        given = [name for name, v in (("blur", blur), ("prior_weight", prior_weight)) if v is not None]
        if not self.cfg.prior_deltas and given:
            raise ValueError(f"this NeAT was trained without prior deltas: it has no {' or '.join(given)} control")
        pw = self.cfg.prior_weight if prior_weight is None else float(prior_weight)
        h, w = content.shape[-2:]
        if style.shape[0] == 1 and content.shape[0] > 1:
            style = style.expand(content.shape[0], -1, -1, -1)
        content_p = pad_to_multiple(content, 8)
        fc = self.vgg(content_p, ("relu4_1",))["relu4_1"]
        fs = self.vgg(style, ("relu4_1",))["relu4_1"]
        feat = self.transform(fc, fs)
        if alpha != 1.0:
            feat = fc + alpha * (feat - fc)
        out = self.decoder(feat)[..., :content_p.shape[-2], :content_p.shape[-1]]
        if self.cfg.prior_deltas:
            prior = self.make_prior(self.filter_prior(content_p, blur), style)
            if alpha != 1.0:
                prior = content_p + alpha * (prior - content_p)
            out = pw * prior + out
        return out[..., :h, :w].clamp(0, 1)

    # ------------------------------------------------------------------------------------------ training steps
    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator"):
        """Dispatch to a training step, so wrappers such as DistributedDataParallel see a ``forward`` call."""
        if step == "generator":
            return self.generator_step(batch)
        if step == "discriminator":
            return self.discriminator_step(batch)
        raise ValueError(f"step must be 'generator' or 'discriminator', got {step!r}")

    def _pairs(self, batch: dict[str, torch.Tensor]):
        """Stylisation pairs: (c_i, s_i) and, with roll_pairs, (c_{i+1}, s_i); returns index tensors into the batch."""
        content = batch["content"]
        for key in ("content", "style"):
            h, w = batch[key].shape[-2:]
            if h % 16 or w % 16:
                # relu5_1 is at stride 16 and the decoder upsamples x8: training crops must tile exactly
                raise ValueError(f"batch[{key!r}] is {h}x{w}: training crops must be multiples of 16 "
                                 "(stylize() pads arbitrary sizes itself)")
        b = content.shape[0]
        idx = torch.arange(b, device=content.device)
        if self.cfg.roll_pairs and b > 1:
            return torch.cat([idx, (idx + 1) % b]), torch.cat([idx, idx])
        return idx, idx

    def _stylise_batch(self, batch: dict[str, torch.Tensor], cfeat: dict, sfeat: dict,
                       filtered_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ci, si = self._pairs(batch)
        prior = self.make_prior(filtered_c[ci], batch["style"][si])
        out = self.generate(cfeat["relu4_1"][ci], sfeat["relu4_1"][si], prior)
        return out, prior, ci, si

    def _patch_logits(self, disc: PatchCooccurrenceDiscriminator, style_patches: torch.Tensor,
                      query_patches: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Real logits (a style patch vs the other style patches of its tier) and fake logits (output patches)."""
        b, n = style_patches.shape[:2]
        sf = disc.encoder(style_patches.flatten(0, 1)).view(b, n, -1)
        ref = (sf.sum(1, keepdim=True) - sf) / (n - 1)  # leave-one-out mean of the reference patches
        real = disc(sf.flatten(0, 1), ref.flatten(0, 1))
        if query_patches is None:
            return real, None
        qf = disc.encoder(query_patches.flatten(0, 1)).view(b, n, -1)
        fake = disc(qf.flatten(0, 1), ref.flatten(0, 1))
        return real, fake

    def _patch_tiers(self, out: torch.Tensor, guide: torch.Tensor, style: torch.Tensor):
        c = self.cfg
        args = (c.patch_num_crops, c.patch_min_scale, c.patch_max_scale, c.patch_size)
        out_simple, out_complex = sobel_split(out, guide, *args)
        st_simple, st_complex = sobel_split(style, style, *args)
        return (st_simple, out_simple), (st_complex, out_complex)

    def _contrastive_terms(self, ofeat: dict, ci: torch.Tensor, si: torch.Tensor) -> dict[str, ContrastiveTerm]:
        """Stylisation embeddings with their positives' group ids: same style (relu3_1), same content (relu4_1)."""
        if len(ci) == len(torch.unique(ci)) and len(si) == len(torch.unique(si)):
            return {}  # no roll pairs: no stylisation shares a style or a content with another
        cfg = self.cfg
        return {"contrast_style": ContrastiveTerm(self.style_head(ofeat["relu3_1"]), si, cfg.w_contrast_style,
                                                  cfg.contrast_tau),
                "contrast_content": ContrastiveTerm(self.content_head(ofeat["relu4_1"]), ci, cfg.w_contrast_content,
                                                    cfg.contrast_tau)}

    def contrastive_embeddings(self, batch: dict[str, torch.Tensor]) -> dict[str, ContrastiveTerm]:
        """The contrastive embeddings ``generator_step`` computes, alone (logit accumulation's first pass)."""
        cfeat = self.vgg(batch["content"], ("relu4_1",))
        sfeat = self.vgg(batch["style"], ("relu4_1",))
        out, _, ci, si = self._stylise_batch(batch, cfeat, sfeat, self.filter_prior(batch["content"]))
        return self._contrastive_terms(self.vgg(out, ("relu3_1", "relu4_1")), ci, si)

    def generator_step(self, batch: dict[str, torch.Tensor],
                       contrastive_grads: dict[str, torch.Tensor] | None = None):
        """Generator loss of one micro-batch; ``contrastive_grads`` = big-batch gradients (train/contrastive.py)."""
        cfg = self.cfg
        content, style = batch["content"], batch["style"]
        b = content.shape[0]
        with torch.no_grad():
            cfeat = self.vgg(content, self._loss_layers)
            sfeat = self.vgg(style, self._loss_layers)
            filtered_c = self.filter_prior(content)
            filtered_s = self.filter_prior(style)
        out, prior, ci, si = self._stylise_batch(batch, cfeat, sfeat, filtered_c)
        ofeat = self.vgg(out, self._loss_layers)
        logs: dict[str, float] = {}
        terms: dict[str, torch.Tensor] = {}
        s_tgt = {k: v[si] for k, v in sfeat.items()}
        style_fn = L.style_loss_fn(cfg.style_loss)
        if self.loss_vgg is not None:
            taps = tuple(dict.fromkeys(cfg.style_layers + (cfg.content_layer,)))
            with torch.no_grad():
                lc, ls = self.loss_vgg(content, taps), self.loss_vgg(style, taps)
            lo = self.loss_vgg(out, taps)
            terms["style"] = style_fn(lo, {k: ls[k][si] for k in cfg.style_layers}, cfg.style_layers)
            terms["content"] = L.content_perceptual(lo[cfg.content_layer], lc[cfg.content_layer][ci])
        else:
            terms["style"] = style_fn(ofeat, s_tgt, cfg.style_layers)
            terms["content"] = L.content_perceptual(ofeat[cfg.content_layer], cfeat[cfg.content_layer][ci])
        if cfg.w_identity_pixel or cfg.w_identity_feature:
            i_cc = self.generate(cfeat["relu4_1"], cfeat["relu4_1"], self.make_prior(filtered_c, content))
            i_ss = self.generate(sfeat["relu4_1"], sfeat["relu4_1"], self.make_prior(filtered_s, style))
            terms["identity_pixel"] = L.identity_pixel(i_cc, content) + L.identity_pixel(i_ss, style)
            fcc = self.vgg(i_cc, cfg.style_layers)
            fss = self.vgg(i_ss, cfg.style_layers)
            terms["identity_feature"] = (
                L.identity_feature(fcc, {k: cfeat[k] for k in cfg.style_layers})
                + L.identity_feature(fss, {k: sfeat[k] for k in cfg.style_layers}))
        if cfg.w_adv:
            terms["adv"] = L.adversarial_g(self.domain_disc(out), cfg.adv_type)
        if cfg.w_patch_simple or cfg.w_patch_complex:
            (st_s, out_s), (st_c, out_c) = self._patch_tiers(out, content[ci], style[si])
            _, fake_s = self._patch_logits(self.patch_disc_simple, st_s, out_s)
            _, fake_c = self._patch_logits(self.patch_disc_complex, st_c, out_c)
            terms["patch_simple"] = L.adversarial_g(fake_s, "nsgan")  # Eq. 7: -log D(fake pair)
            terms["patch_complex"] = L.adversarial_g(fake_c, "nsgan")
        accumulated = 0.0
        for name, term in self._contrastive_terms(ofeat, ci, si).items():
            if contrastive_grads is None:
                terms[name] = term.loss()
            elif name in contrastive_grads:  # the big-batch gradient, already weighted
                accumulated = accumulated + surrogate(term, contrastive_grads[name])
        if cfg.w_style_nce and "style2" in batch and (b > 1 or cfg.nce_queue_size):
            terms["style_nce"] = self._style_nce_generator(ofeat, sfeat, batch["style2"], si)
        weights = {"style": cfg.w_style, "content": cfg.w_content, "identity_pixel": cfg.w_identity_pixel,
                   "identity_feature": cfg.w_identity_feature, "adv": cfg.w_adv,
                   "patch_simple": cfg.w_patch_simple, "patch_complex": cfg.w_patch_complex,
                   "contrast_style": cfg.w_contrast_style, "contrast_content": cfg.w_contrast_content,
                   "style_nce": cfg.w_style_nce}
        loss = sum(weights[k] * v for k, v in terms.items()) + accumulated
        logs = {k: float(v.detach()) for k, v in terms.items()}
        images = {"content": content.detach(), "style": style.detach(), "output": out[:b].detach().clamp(0, 1)}
        if cfg.prior_deltas:
            images["prior"] = prior[:b].detach().clamp(0, 1)
        return loss, logs, images

    def _style_nce_generator(self, ofeat: dict, sfeat: dict, style2: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
        """CAST generator-side NCE: each output vs both crops of its own style, other styles as negatives."""
        with torch.no_grad():
            s2feat = self.vgg(style2, self.cfg.style_nce_layers)
        q = self.style_projector(ofeat)
        k1 = self.style_projector({n: sfeat[n] for n in self.cfg.style_nce_layers})
        k2 = self.style_projector(s2feat)
        b = style2.shape[0]
        key_style = torch.cat([torch.arange(b, device=si.device)] * 2)
        pos = si[:, None] == key_style[None, :]
        pos = torch.cat([pos, pos.new_zeros(pos.shape[0], self.cfg.nce_queue_size)], dim=1)
        total = 0.0
        for name in self.cfg.style_nce_layers:
            # Keys are targets for the generator, not something it should move.
            keys = torch.cat([k1[name], k2[name], getattr(self, f"nce_queue_{name}")]).detach()
            total = total + L.info_nce(q[name], keys, pos, self.cfg.nce_tau)
        return total / len(self.cfg.style_nce_layers)

    def _style_nce_discriminator(self, style: torch.Tensor, style2: torch.Tensor) -> torch.Tensor:
        """CAST D-side NCE: two crops of one style image are positives; other styles and the queue are negatives."""
        cfg = self.cfg
        with torch.no_grad():
            f1 = self.vgg(style, cfg.style_nce_layers)
            f2 = self.vgg(style2, cfg.style_nce_layers)
        p1, p2 = self.style_projector(f1), self.style_projector(f2)
        b = style.shape[0]
        eye = torch.eye(b, dtype=torch.bool, device=style.device)
        pos = torch.cat([eye, eye.new_zeros(b, cfg.nce_queue_size)], dim=1)
        total = 0.0
        for n in cfg.style_nce_layers:
            queue = getattr(self, f"nce_queue_{n}")
            total = total + L.info_nce(p1[n], torch.cat([p2[n], queue]), pos, cfg.nce_tau) \
                + L.info_nce(p2[n], torch.cat([p1[n], queue]), pos, cfg.nce_tau)
        if cfg.nce_queue_size:
            with torch.no_grad():  # enqueue this batch's second crops, overwriting the oldest entries
                idx = (self.nce_queue_ptr + torch.arange(b, device=style.device)) % cfg.nce_queue_size
                for n in cfg.style_nce_layers:
                    getattr(self, f"nce_queue_{n}")[idx] = p2[n].detach().to(torch.float32)
                self.nce_queue_ptr.copy_((self.nce_queue_ptr + b) % cfg.nce_queue_size)
        return total / (2 * len(cfg.style_nce_layers))

    def discriminator_step(self, batch: dict[str, torch.Tensor]):
        cfg = self.cfg
        content, style = batch["content"], batch["style"]
        b = content.shape[0]
        with torch.no_grad():
            cfeat = self.vgg(content, ("relu4_1",))
            sfeat = self.vgg(style, ("relu4_1",))
            out, _, ci, si = self._stylise_batch(batch, cfeat, sfeat, self.filter_prior(content))
            out = out.detach()
        terms: dict[str, torch.Tensor] = {}
        if cfg.w_adv:
            real_in = style.detach().requires_grad_(cfg.w_r1 > 0)
            real_logits = self.domain_disc(real_in)
            terms["adv"] = L.adversarial_d(real_logits, self.domain_disc(out), cfg.adv_type)
            if cfg.w_r1 > 0:
                terms["r1"] = sum(L.r1_penalty(r, real_in) for r in real_logits) / len(real_logits)
        if cfg.w_patch_simple or cfg.w_patch_complex:
            (st_s, out_s), (st_c, out_c) = self._patch_tiers(out, content[ci], style[si])
            if cfg.w_patch_r1 > 0:  # the penalty differentiates the real logits w.r.t. the real patches
                st_s, st_c = st_s.detach().requires_grad_(), st_c.detach().requires_grad_()
            real_s, fake_s = self._patch_logits(self.patch_disc_simple, st_s, out_s)
            real_c, fake_c = self._patch_logits(self.patch_disc_complex, st_c, out_c)
            terms["patch_simple"] = L.adversarial_d(real_s, fake_s, "nsgan")
            terms["patch_complex"] = L.adversarial_d(real_c, fake_c, "nsgan")
            if cfg.w_patch_r1 > 0:
                terms["patch_r1"] = L.r1_penalty(real_s, st_s) + L.r1_penalty(real_c, st_c)
        if cfg.w_style_nce_d and "style2" in batch and (b > 1 or cfg.nce_queue_size):
            terms["style_nce"] = self._style_nce_discriminator(style, batch["style2"])
        weights = {"adv": cfg.w_adv, "r1": cfg.w_r1, "patch_r1": cfg.w_patch_r1, "patch_simple": cfg.w_patch_simple,
                   "patch_complex": cfg.w_patch_complex, "style_nce": cfg.w_style_nce_d}
        if not terms:
            loss = sum(p.sum() * 0.0 for p in self.discriminator_parameters())
        else:
            loss = sum(weights[k] * v for k, v in terms.items())
        logs = {k: float(v.detach()) for k, v in terms.items()}
        return loss, logs


# --------------------------------------------------------------------------------------------------------- registry
_TINY = {"vgg_weights": None, "vgg_width": 1 / 16, "decoder_width": 1 / 16, "num_blocks": 2, "max_style_tokens": 256,
         "attention_chunk": 64, "prior_bilateral_diameter": 5, "disc_width": 8, "disc_scales": 2, "patch_size": 16,
         "patch_num_crops": 2, "patch_min_scale": 0.25, "patch_max_scale": 0.5, "patch_disc_width": 8,
         "patch_disc_max_width": 32, "patch_mlp_width": 64, "proj_dim": 16, "nce_queue_size": 8}


def _build(defaults: dict, overrides: dict) -> NeAT:
    return build_from_config(NeAT, NeATConfig, "NeAT", defaults, overrides)


@register_model
def neat(**kwargs) -> NeAT:
    """NeAT at paper sizes: VGG-19 weights from the local cache (see docs/neat.md), 4 PAMA blocks at relu4_1."""
    return _build({}, kwargs)


@register_model
def neat_tiny(**kwargs) -> NeAT:
    """Random-init tiny NeAT (VGG width 1/16, 2 blocks, small discriminators) for CPU tests at 32-64 px."""
    return _build(_TINY, kwargs)


@register_model
def neat_balanced(**kwargs) -> NeAT:
    """NeAT trained with the balanced Gram style loss (Cheng et al. 2021) instead of the mean/std loss.

    The style weight defaults to ``STYLE_WEIGHTS["balanced_gram"]``.
    """
    return _build({"style_loss": "balanced_gram"}, kwargs)


@register_model
def neat_balanced_tiny(**kwargs) -> NeAT:
    """Tiny random-init ``neat_balanced`` for CPU tests."""
    return _build({**_TINY, "style_loss": "balanced_gram"}, kwargs)

