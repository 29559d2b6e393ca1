"""Variational style transfer: residual content encoder, VAE style encoder, AdaIN decoder with U-Net skips."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train import losses as L
from train.models import build_from_config, register_model
from train.models.layers import pad_to_multiple
from train.models.vgg import build_vgg

# Default style weight per style loss, for losses summed over the ten style layers (MSE of C*H*W-normalised Grams is
# small; the balanced loss lies in [0, 1] per layer).
STYLE_WEIGHTS = {"gram": 1e3, "balanced_gram": 1.0, "mean_std": 3.0}
# "All layers up to relu4_2" of VGG-19 (the seed's style loss), content at relu4_2.
VGG19_UP_TO_RELU4_2 = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
                       "relu4_1", "relu4_2")


@dataclass
class VariationalConfig:
    """Everything needed to rebuild a variational style-transfer model; ``model_config()`` returns it as a dict."""

    # --- networks (the seed trains on 96x96 crops)
    base_channels: int = 32  # channels after the stem; doubled at each downsampling residual block
    num_down: int = 3  # downsampling residual blocks per encoder (content features at stride 2^num_down)
    bottleneck_blocks: int = 4  # AdaIN residual blocks at the bottleneck (resolution unchanged)
    style_dim: int = 256  # D_s: size of the style code (the encoder outputs mean and log-variance, 2 x D_s)
    # --- loss network (frozen VGG; the seed: VGG-19, content relu4_2, Gram over every layer up to relu4_2)
    loss_arch: str = "vgg19"  # "vgg19" or "vgg16" (the balanced-loss paper's setup)
    loss_vgg_weights: str | None = "auto"  # "auto" = local torch cache / $BBST_VGG19_WEIGHTS; a path; None = random
    vgg_width: float = 1.0  # channel multiplier of the loss VGG (1.0 with real weights; tiny for tests)
    style_layers: tuple[str, ...] = VGG19_UP_TO_RELU4_2  # VGG taps of the style loss
    content_layer: str = "relu4_2"  # VGG tap of the perceptual content loss
    style_loss: str = "gram"  # "gram" (seed), "balanced_gram" (Cheng et al. 2021) or "mean_std"
    # --- loss weights
    w_content: float = 1.0  # perceptual content loss
    w_style: float | None = None  # style loss weight; None = STYLE_WEIGHTS[style_loss]
    w_kl: float = 1e-3  # KL(q(z|s) || N(0, I)) after warm-up
    kl_warmup_start: int = 0  # optimiser steps with KL weight 0 (the decoder first learns to use the code)
    kl_warmup_steps: int = 10_000  # linear ramp of the KL weight to w_kl over this many optimiser steps
    # --- inference
    # Styles are encoded at the scale the style encoder was trained on: at inference a style image is resized to
    # this short side first (the seed's 96 px crops; 0 = as given). Contents run at any size (fully convolutional).
    style_size: int = 96

    def __post_init__(self):
        L.style_loss_fn(self.style_loss)
        if self.w_style is None:
            self.w_style = STYLE_WEIGHTS[self.style_loss]
        if self.loss_arch not in ("vgg19", "vgg16"):
            raise ValueError(f"loss_arch {self.loss_arch!r} not in ('vgg19', 'vgg16')")
        if self.num_down < 1 or self.base_channels < 1 or self.style_dim < 1:
            raise ValueError("num_down, base_channels and style_dim must be >= 1")
        if self.style_size < 0:
            raise ValueError(f"style_size must be >= 0, got {self.style_size}")
        self.style_layers = tuple(self.style_layers)


# ------------------------------------------------------------------------------------------------------ blocks
class ResDown(nn.Module):
    """Residual block halving the resolution: [norm-ReLU-conv] x 2 + avg-pool, 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, norm: bool):
        super().__init__()

        def nrm(c: int) -> nn.Module:
            return nn.InstanceNorm2d(c, affine=True) if norm else nn.Identity()

        self.body = nn.Sequential(nrm(cin), nn.ReLU(), nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"),
                                  nrm(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect"),
                                  nn.AvgPool2d(2))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.AvgPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class AdaIN(nn.Module):
    """Instance norm whose per-channel mean and scale are a learnt linear map of the style code (seed Eq. 1)."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.proj = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():  # start as plain instance norm: scale 1, shift 0
            self.proj.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(z).chunk(2, dim=1)
        return self.norm(x) * scale[:, :, None, None] + shift[:, :, None, None]


class AdaINResBlock(nn.Module):
    """Style-conditioned residual block; ``up=True`` doubles the resolution (nearest) before the first conv."""

    def __init__(self, cin: int, cout: int, style_dim: int, up: bool = False):
        super().__init__()
        self.up = up
        self.n1, self.n2 = AdaIN(cin, style_dim), AdaIN(cout, style_dim)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect")
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.n1(x, z))
        if self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h), z)))
        return h + self.skip(x)


class Encoder(nn.Module):
    """Stem conv + ``num_down`` residual down blocks; returns every resolution's features (U-Net skips)."""

    def __init__(self, base: int, num_down: int, norm: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, base, 7, padding=3, padding_mode="reflect")
        self.downs = nn.ModuleList(ResDown(base * 2 ** i, base * 2 ** (i + 1), norm) for i in range(num_down))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(feats[-1]))
        return feats


class StyleEncoder(nn.Module):
    """"Designed analogously to the content encoder, the only difference being adaptive pooling after the last
    convolution" (seed 3.1): the content encoder's blocks (instance norm included), a last 1x1 convolution to
    2 x D_s channels, adaptive average pooling to (mu, log-variance)."""

    def __init__(self, base: int, num_down: int, style_dim: int):
        super().__init__()
        self.encoder = Encoder(base, num_down, norm=True)
        self.head = nn.Conv2d(base * 2 ** num_down, 2 * style_dim, 1)

    def forward(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(F.relu(self.encoder(style)[-1]))
        mu, logvar = F.adaptive_avg_pool2d(h, 1).flatten(1).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training


class Decoder(nn.Module):
    """AdaIN bottleneck blocks, then AdaIN up blocks each fed the content encoder's features of its resolution."""

    def __init__(self, base: int, num_down: int, bottleneck_blocks: int, style_dim: int):
        super().__init__()
        top = base * 2 ** num_down
        self.bottleneck = nn.ModuleList(AdaINResBlock(top, top, style_dim) for _ in range(bottleneck_blocks))
        # up block i maps stride 2^(num_down-i) -> 2^(num_down-i-1); its input is cat(h, skip) except for the first
        self.ups = nn.ModuleList()
        for i in range(num_down):
            cin = base * 2 ** (num_down - i)
            self.ups.append(AdaINResBlock(cin if i == 0 else 2 * cin, cin // 2, style_dim, up=True))
        self.out = nn.Conv2d(2 * base, 3, 7, padding=3, padding_mode="reflect")

    def forward(self, content_feats: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        h = content_feats[-1]
        for block in self.bottleneck:
            h = block(h, z)
        skips = content_feats[:-1][::-1]  # stride 2^(num_down-1) ... 1
        for i, up in enumerate(self.ups):
            h = up(h if i == 0 else torch.cat([h, skips[i - 1]], 1), z)
        return torch.sigmoid(self.out(F.relu(torch.cat([h, skips[-1]], 1))))


# ------------------------------------------------------------------------------------------------------------ model
class VariationalStyleTransfer(nn.Module):
    """Content encoder E_c, variational style encoder E_s, decoder D(E_c(c), z) with z ~ N(mu, sigma^2) = E_s(s)."""

    def __init__(self, cfg: VariationalConfig):
        super().__init__()
        self.cfg = cfg
        self.content_encoder = Encoder(cfg.base_channels, cfg.num_down, norm=True)
        self.style_encoder = StyleEncoder(cfg.base_channels, cfg.num_down, cfg.style_dim)
        self.decoder = Decoder(cfg.base_channels, cfg.num_down, cfg.bottleneck_blocks, cfg.style_dim)
        self.loss_vgg = build_vgg(cfg.loss_arch, cfg.loss_vgg_weights, cfg.vgg_width)
        self._taps = tuple(dict.fromkeys(cfg.style_layers + (cfg.content_layer,)))
        # Optimiser steps taken (after_optimizer_step), for the KL warm-up; a buffer so checkpoints and resume
        # carry it. Counted per update, not per micro-batch: gradient accumulation does not shorten the warm-up.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------------------ trainer interface
    def generator_parameters(self) -> list[nn.Parameter]:
        mods = [self.content_encoder, self.style_encoder, self.decoder]
        return [p for m in mods for p in m.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return []

    def model_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator"):
        if step == "generator":
            return self.generator_step(batch)
        return self.discriminator_step(batch)

    # ---------------------------------------------------------------------------------------------- generation
    @property
    def _multiple(self) -> int:
        return 2 ** self.cfg.num_down

    def encode_style(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Style image(s) -> (mu, logvar), each (B, style_dim), at the size given (training crops)."""
        return self.style_encoder(style)

    def encode_style_image(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: a style image of any size, brought to the training scale (``style_size``), -> (mu, logvar)."""
        size = self.cfg.style_size
        if size and min(style.shape[-2:]) != size:
            h, w = style.shape[-2:]
            scale = size / min(h, w)
            style = F.interpolate(style, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                  mode="bilinear", antialias=True, align_corners=False)
        return self.style_encoder(style)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` style codes drawn from the prior N(0, I): styles no image was encoded into."""
        dev = self.steps_done.device
        return torch.randn(n, self.cfg.style_dim, generator=generator, device="cpu").to(dev)

    def interpolate_styles(self, style_a: torch.Tensor, style_b: torch.Tensor,
                           steps: int) -> tuple[list[float], list[torch.Tensor]]:
        """``(t, codes)`` at ``steps`` evenly spaced points from style A's mean code to style B's, ends included."""
        if steps < 2:
            raise ValueError(f"steps={steps}: an interpolation needs both ends (>= 2)")
        za, zb = self.encode_style_image(style_a)[0], self.encode_style_image(style_b)[0]
        ts = torch.linspace(0, 1, steps).tolist()
        return ts, [za + t * (zb - za) for t in ts]

    def decode(self, content: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Stylise content (B, 3, H, W) in [0, 1] with style codes z (B or 1, style_dim); any H, W."""
        h, w = content.shape[-2:]
        if z.shape[0] == 1 and content.shape[0] > 1:
            z = z.expand(content.shape[0], -1)
        x = pad_to_multiple(content, self._multiple)
        return self.decoder(self.content_encoder(x), z)[..., :h, :w]

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0,
                blur: float | None = None) -> torch.Tensor:
        """Inference with the style's mean code; ``alpha`` moves the code from the content's own (0) to the style's.

        ``blur`` exists for interface compatibility with NeAT and must be None or 0 (this model has no prior).
        """
        if blur:
            raise ValueError("the variational model has no content prior to blur")
        z, _ = self.encode_style_image(style)
        if alpha != 1.0:
            zc, _ = self.encode_style_image(content)
            z = zc + alpha * (z.expand_as(zc) - zc)
        return self.decode(content, z).clamp(0, 1)

    # ------------------------------------------------------------------------------------------------ training
    def losses(self, content: torch.Tensor, style: torch.Tensor, out: torch.Tensor, mu: torch.Tensor,
               logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with torch.no_grad():
            fc, fs = self.loss_vgg(content, self._taps), self.loss_vgg(style, cfg.style_layers)
        fo = self.loss_vgg(out, self._taps)
        return {"content": L.content_perceptual(fo[cfg.content_layer], fc[cfg.content_layer]),
                "style": L.style_loss_fn(cfg.style_loss)(fo, fs, cfg.style_layers),
                "kl": L.kl_divergence(mu, logvar)}

    def generator_step(self, batch: dict[str, torch.Tensor]):
        cfg = self.cfg
        content, style = batch["content"], batch["style"]
        mu, logvar = self.encode_style(style)
        z = self.reparameterise(mu, logvar)
        out = self.decode(content, z)
        terms = self.losses(content, style, out, mu, logvar)
        kl_w = cfg.w_kl * L.kl_warmup_weight(int(self.steps_done), cfg.kl_warmup_start, cfg.kl_warmup_steps)
        loss = cfg.w_content * terms["content"] + cfg.w_style * terms["style"] + kl_w * terms["kl"]
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["kl_weight"] = kl_w
        images = {"content": content.detach(), "style": style.detach(), "output": out.detach()}
        return loss, logs, images

    def after_optimizer_step(self) -> None:
        """Called by ``train.step.optimizer_step`` after each generator update: one more step of KL warm-up."""
        self.steps_done += 1

    def discriminator_step(self, batch: dict[str, torch.Tensor]):
        raise RuntimeError("the variational model has no discriminator")


# --------------------------------------------------------------------------------------------------------- registry
_TINY = {"base_channels": 4, "num_down": 2, "bottleneck_blocks": 1, "style_dim": 8, "loss_vgg_weights": None,
         "vgg_width": 1 / 16, "style_layers": ("relu1_1", "relu2_1", "relu3_1"), "content_layer": "relu3_1",
         "kl_warmup_steps": 4, "style_size": 32}


def _build(defaults: dict, overrides: dict) -> VariationalStyleTransfer:
    return build_from_config(VariationalStyleTransfer, VariationalConfig, "variational", defaults, overrides)


@register_model
def variational(**kwargs) -> VariationalStyleTransfer:
    """Variational style transfer at the seed's sizes (96 px crops, VGG-19 losses up to relu4_2, local weights)."""
    return _build({}, kwargs)


@register_model
def variational_tiny(**kwargs) -> VariationalStyleTransfer:
    """Random-init tiny variational model for CPU tests."""
    return _build(_TINY, kwargs)
