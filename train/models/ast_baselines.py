"""The four arbitrary-style-transfer baselines of the balanced-style-loss paper (Cheng et al., CVPR 2021, Tables 4-6).

Each network is its own paper's; the training objective is the balanced-loss paper's (its Section 5.1):

    L = L_content + beta * L_style,  content: MSE of VGG-16 relu3_3 features of P and C;
    style: classic (Eq. 5, sum over layers of the Gram MSE) or balanced (Eq. 13) over relu1_2, relu2_2, relu3_3,
    relu4_3 of a frozen VGG-16,

with beta picked so that the style and content terms have similar magnitudes (by default measured on the first
training batch, see ``ASTLossConfig.w_style``). The networks:

* ``adain``: Huang & Belongie (ICCV 2017), VGG-19 encoder to relu4_1, AdaIN, mirrored decoder;
* ``sanet``: Park & Lee (CVPR 2019), style-attentional blocks at relu4_1 and relu5_1, merged, mirrored decoder;
* ``linear_transfer``: Li et al. (CVPR 2019), a linear transformation matrix predicted by two small CNNs from the
  compressed content and style features at relu3_1 or relu4_1, decoder mirrored from that layer;
* ``magenta``: Ghiasi et al. (BMVC 2017), a style prediction network (Inception-v3 to Mixed-6e, channel means, a
  100-d bottleneck) giving the scales and shifts of every conditional instance norm of a Johnson-style network.

docs/models.md lists where each differs from its paper and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train import losses as L
from train.models import build_from_config, register_model
from train.models.johnson import TransformerNet, reflect_conv
from train.models.layers import ATTENTION_MODES, pad_to_multiple
from train.models.neat import DeltaDecoder
from train.models.rast import SANetTransform
from train.models.rast import adain as adain_features
from train.models.vgg import (
    VGG16_CONTENT_LAYER,
    VGG16_STYLE_LAYERS,
    VGG19Encoder,
    build_vgg,
    feature_channels,
)


@dataclass
class ASTLossConfig:
    """The balanced-loss paper's training objective, shared by the four baselines (Section 5.1)."""

    loss_arch: str = "vgg16"  # loss network: "vgg16" (the paper) or "vgg19"
    loss_vgg_weights: str | None = "auto"  # "auto" = local torch cache / $BBST_VGG16_WEIGHTS; a path; None = random
    loss_vgg_width: float = 1.0  # channel multiplier of the loss VGG (1.0 with real weights; tiny for tests)
    style_layers: tuple[str, ...] = VGG16_STYLE_LAYERS  # relu1_2, relu2_2, relu3_3, relu4_3
    content_layer: str = VGG16_CONTENT_LAYER  # relu3_3
    style_loss: str = "gram"  # "gram" (classic, Eq. 5) or "balanced_gram" (Eq. 13); "mean_std" also accepted
    w_content: float = 1.0  # weight of the content term
    # beta of Eq. 1. None = measured on the first training batch as L_content / L_style, so that the two terms have
    # similar magnitudes (the paper's rule), then kept fixed and stored in the checkpoint (buffer ``beta``).
    w_style: float | None = None

    def _check_loss(self) -> None:
        L.style_loss_fn(self.style_loss)
        self.style_layers = tuple(self.style_layers)
        if self.w_style is not None and self.w_style <= 0:
            raise ValueError(f"w_style must be > 0 (or None to calibrate it), got {self.w_style}")


@dataclass
class AdaINConfig(ASTLossConfig):
    vgg_weights: str | None = "auto"  # encoder VGG-19: "auto" = $BBST_VGG19_WEIGHTS or torch hub cache; None = random
    vgg_width: float = 1.0  # channel multiplier of the encoder (1.0 = real VGG-19)
    vgg_format: str | None = None  # "torchvision" or "normalised" (AdaIN's own encoder); None = detect
    decoder_width: float = 1.0  # channel multiplier of the decoder

    def __post_init__(self):
        self._check_loss()


@dataclass
class SANetConfig(AdaINConfig):
    attention_mode: str = "chunked"  # "chunked", "sdpa" or "full" (see train.models.layers.attention)
    attention_chunk: int = 4096  # content tokens per attention chunk (bounds memory at high resolution)
    max_style_tokens: int = 4096  # style relu4_1 positions kept (relu5_1: a quarter); 4096 = a 512 px style

    def __post_init__(self):
        super().__post_init__()
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode {self.attention_mode!r} not in {ATTENTION_MODES}")


@dataclass
class LinearTransferConfig(AdaINConfig):
    layer: str = "relu4_1"  # where the transformation acts: "relu3_1" or "relu4_1" (Li et al. train both)
    matrix_size: int = 32  # channels of the compressed features = size of the transformation matrix (Li et al.)

    def __post_init__(self):
        super().__post_init__()
        if self.layer not in ("relu3_1", "relu4_1"):
            raise ValueError(f"layer {self.layer!r} not in ('relu3_1', 'relu4_1')")


@dataclass
class MagentaConfig(ASTLossConfig):
    width: float = 1.0  # channel multiplier of the transformation network (32/64/128 channels at 1.0)
    res_blocks: int = 5  # residual blocks of the transformation network
    style_dim: int = 100  # size of the style embedding S (Ghiasi et al.: 100)
    # style prediction backbone: "inception_v3" (Ghiasi et al.: Inception-v3 up to Mixed-6e, frozen here) or
    # "loss_vgg" (the frozen loss network's relu4_1: no extra weights, for tests and machines without Inception)
    style_backbone: str = "inception_v3"
    inception_weights: str | None = "auto"  # torchvision inception_v3_google file: "auto", a path, None = random

    def __post_init__(self):
        self._check_loss()
        if self.style_backbone not in ("inception_v3", "loss_vgg"):
            raise ValueError(f"style_backbone {self.style_backbone!r} not in ('inception_v3', 'loss_vgg')")


# ------------------------------------------------------------------------------------------------ shared training
class ASTBaseline(nn.Module):
    """Loss network, beta calibration and the trainer interface; a subclass defines ``transfer`` and ``stylize``."""

    pad_multiple = 8  # content sides are padded to this for the encoder's strides

    def __init__(self, cfg: ASTLossConfig):
        super().__init__()
        self.cfg = cfg
        self.loss_vgg = build_vgg(cfg.loss_arch, cfg.loss_vgg_weights, cfg.loss_vgg_width)
        self._taps = tuple(dict.fromkeys(cfg.style_layers + (cfg.content_layer,)))
        # beta of Eq. 1; 0 = not calibrated yet (w_style None). A buffer, so checkpoints carry the calibrated value.
        self.register_buffer("beta", torch.tensor(float(cfg.w_style or 0.0)))

    def transfer(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return []

    def discriminator_step(self, batch: dict[str, torch.Tensor]):
        raise RuntimeError(f"{type(self).__name__} has no discriminator")

    def model_config(self) -> dict:
        return dataclasses.asdict(self.cfg)

    def forward(self, batch: dict[str, torch.Tensor], step: str = "generator"):
        return self.generator_step(batch) if step == "generator" else self.discriminator_step(batch)

    def loss_terms(self, out: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content (relu3_3 MSE against the content image) and style terms of outputs ``out``."""
        cfg = self.cfg
        with torch.no_grad():
            fc = self.loss_vgg(content, (cfg.content_layer,))[cfg.content_layer]
            fs = self.loss_vgg(style, cfg.style_layers)
        fo = self.loss_vgg(out, self._taps)
        return {"content": L.content_perceptual(fo[cfg.content_layer], fc),
                "style": L.style_loss_fn(cfg.style_loss)(fo, fs, cfg.style_layers)}

    def generator_step(self, batch: dict[str, torch.Tensor]):
        content, style = batch["content"], batch["style"]
        out = self.transfer(content, style)
        terms = self.loss_terms(out, content, style)
        if float(self.beta) <= 0:  # first batch: measure beta (w_style None), then keep it
            self.beta.fill_(L.matching_style_weight(terms["content"], terms["style"], self.cfg.w_content))
        loss = self.cfg.w_content * terms["content"] + self.beta * terms["style"]
        logs = {k: float(v.detach()) for k, v in terms.items()} | {"beta": float(self.beta)}
        images = {"content": content.detach(), "style": style.detach(), "output": out.detach().clamp(0, 1)}
        return loss, logs, images


class _EncoderDecoder(ASTBaseline):
    """A frozen VGG-19 encoder (the method's own) and a trained decoder mirrored from ``layer``."""

    layer = "relu4_1"

    def __init__(self, cfg: AdaINConfig):
        super().__init__(cfg)
        self.vgg = VGG19Encoder(cfg.vgg_weights, width=cfg.vgg_width, fmt=cfg.vgg_format)
        cfg.vgg_format = self.vgg.fmt
        self.channels = feature_channels(cfg.vgg_width)
        self.decoder = (DeltaDecoder(self.channels["relu4_1"], cfg.decoder_width, zero_init=False)
                        if self.layer == "relu4_1" else Relu31Decoder(self.channels["relu3_1"], cfg.decoder_width))

    def transform(self, fc: dict[str, torch.Tensor], fs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def transfer(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        taps = self.transform_layers
        return self.decoder(self.transform(self.vgg(content, taps), self.vgg(style, taps)))

    @property
    def transform_layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """Content (B,3,H,W) in [0,1] at any size, style (B or 1,3,h,w) -> (B,3,H,W) in [0,1]; ``alpha`` blends the
        decoder input between the content's features (0) and the transformed ones (1), as AdaIN's trade-off."""
        h, w = content.shape[-2:]
        if style.shape[0] == 1 and content.shape[0] > 1:
            style = style.expand(content.shape[0], -1, -1, -1)
        taps = self.transform_layers
        fc = self.vgg(pad_to_multiple(content, self.pad_multiple), taps)
        feat = self.transform(fc, self.vgg(style, taps))
        if alpha != 1.0:
            feat = fc[self.layer] + alpha * (feat - fc[self.layer])
        return self.decoder(feat)[..., :h, :w].clamp(0, 1)


class Relu31Decoder(nn.Module):
    """Decoder mirroring VGG-19 from relu3_1 (stride 4) to RGB (LinearTransfer's relu3_1 model)."""

    def __init__(self, in_channels: int, width: float = 1.0):
        super().__init__()
        c128, c64 = (max(2, round(c * width)) for c in (128, 64))
        conv = [reflect_conv(in_channels, c128, 3), reflect_conv(c128, c128, 3), reflect_conv(c128, c64, 3),
                reflect_conv(c64, c64, 3), reflect_conv(c64, 3, 3)]
        self.convs = nn.ModuleList(conv)
        for m in conv[:-1]:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(x)
            if i in (0, 2):
                x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x


# ------------------------------------------------------------------------------------------------------- AdaIN
class AdaIN(_EncoderDecoder):
    """Huang & Belongie: decoder(AdaIN(VGG(c), VGG(s))) at relu4_1."""

    def transform(self, fc, fs):
        return adain_features(fc["relu4_1"], fs["relu4_1"])

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())


# ------------------------------------------------------------------------------------------------------- SANet
class SANetModel(_EncoderDecoder):
    """Park & Lee: SANet at relu4_1 and relu5_1, summed after upsampling, a 3x3 merge conv, then the decoder."""

    pad_multiple = 16

    def __init__(self, cfg: SANetConfig):
        super().__init__(cfg)
        self.sanet = SANetTransform(self.channels["relu4_1"], self.channels["relu5_1"])

    @property
    def transform_layers(self) -> tuple[str, ...]:
        return ("relu4_1", "relu5_1")

    def transform(self, fc, fs):
        cfg = self.cfg
        return self.sanet(fc, fs, cfg.attention_mode, cfg.attention_chunk, cfg.max_style_tokens)

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.sanet.parameters()) + list(self.decoder.parameters())


# ------------------------------------------------------------------------------------------------ LinearTransfer
class _MatrixCNN(nn.Module):
    """Li et al.'s matrix predictor: three 3x3 convs down to ``dim`` channels, their covariance, a linear layer."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        mid1, mid2 = max(dim, channels // 2), max(dim, channels // 4)
        self.convs = nn.Sequential(nn.Conv2d(channels, mid1, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(mid1, mid2, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(mid2, dim, 3, padding=1))
        self.fc = nn.Linear(dim * dim, dim * dim)
        self.dim = dim

    def forward(self, centred: torch.Tensor) -> torch.Tensor:
        f = self.convs(centred).flatten(2)  # B, d, HW
        cov = f @ f.transpose(1, 2) / f.shape[-1]
        return self.fc(cov.flatten(1)).view(-1, self.dim, self.dim)


class LinearTransform(nn.Module):
    """T = T_s T_c applied to the compressed, centred content features; unzipped and re-centred on the style mean."""

    def __init__(self, channels: int, dim: int = 32):
        super().__init__()
        self.content_net = _MatrixCNN(channels, dim)
        self.style_net = _MatrixCNN(channels, dim)
        self.compress = nn.Conv2d(channels, dim, 1)
        self.unzip = nn.Conv2d(dim, channels, 1)

    def forward(self, fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
        mc = fc.mean((2, 3), keepdim=True)
        ms = fs.mean((2, 3), keepdim=True)
        fc, fs = fc - mc, fs - ms
        matrix = self.style_net(fs) @ self.content_net(fc)  # B, d, d
        comp = self.compress(fc)
        out = (matrix @ comp.flatten(2)).view_as(comp)
        return self.unzip(out) + ms


class LinearTransfer(_EncoderDecoder):
    """Li et al.: decoder(LinearTransform(VGG(c), VGG(s))) at relu3_1 or relu4_1."""

    def __init__(self, cfg: LinearTransferConfig):
        self.layer = cfg.layer
        self.pad_multiple = 8 if cfg.layer == "relu4_1" else 4
        super().__init__(cfg)
        self.linear = LinearTransform(self.channels[cfg.layer], cfg.matrix_size)

    def transform(self, fc, fs):
        return self.linear(fc[self.layer], fs[self.layer])

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.linear.parameters()) + list(self.decoder.parameters())


# ------------------------------------------------------------------------------------------------------- Magenta
class InceptionMixed6e(nn.Module):
    """Frozen Inception-v3 up to Mixed-6e (768 channels) taking images in [0, 1] (scaled to [-1, 1])."""

    out_channels = 768

    def __init__(self, weights: str | None = "auto"):
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=weights is None)
        if weights is not None:
            from core.weights import find_weights

            path = find_weights(weights, "inception_v3_torchvision")
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")}, strict=False)
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e"]
        self.blocks = nn.Sequential(*(getattr(net, n) for n in names))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionMixed6e:
        return super().train(False)  # frozen: batch-norm statistics stay as loaded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(2 * x - 1)


class StylePredictor(nn.Module):
    """Ghiasi et al.'s P: backbone channel means -> 100-d embedding S -> every conditional norm's scale and shift."""

    def __init__(self, in_channels: int, style_dim: int, norm_channels: list[int]):
        super().__init__()
        self.bottleneck = nn.Linear(in_channels, style_dim)
        self.to_params = nn.Linear(style_dim, 2 * sum(norm_channels))
        nn.init.normal_(self.to_params.weight, std=1e-3)
        nn.init.zeros_(self.to_params.bias)
        # the scale half of each norm's (scale, shift) pair is predicted around 1: the untrained network starts as
        # plain instance normalisation
        offset = torch.cat([torch.cat([torch.ones(c), torch.zeros(c)]) for c in norm_channels])
        self.register_buffer("offset", offset, persistent=False)

    def embed(self, feat: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(feat.mean((2, 3)))

    def params(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.to_params(embedding) + self.offset


class Magenta(ASTBaseline):
    """Ghiasi et al.'s arbitrary-style network: T(c, P(s)) with conditional instance norm."""

    pad_multiple = 4

    def __init__(self, cfg: MagentaConfig):
        super().__init__(cfg)
        self.transformer = TransformerNet(cfg.width, cfg.res_blocks, conditional=True)
        if cfg.style_backbone == "inception_v3":
            self.backbone = InceptionMixed6e(cfg.inception_weights)
            channels = InceptionMixed6e.out_channels
        else:
            self.backbone = None
            channels = feature_channels(cfg.loss_vgg_width, cfg.loss_arch)["relu4_1"]
        self.predictor = StylePredictor(channels, cfg.style_dim, self.transformer.norm_channels)

    def style_embedding(self, style: torch.Tensor) -> torch.Tensor:
        """The style embedding S (B, style_dim)."""
        with torch.no_grad():
            feat = self.backbone(style) if self.backbone is not None else self.loss_vgg(style, ("relu4_1",))["relu4_1"]
        return self.predictor.embed(feat)

    def transfer(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        emb = self.style_embedding(style)
        if emb.shape[0] == 1 and content.shape[0] > 1:
            emb = emb.expand(content.shape[0], -1)
        return self.transformer(content, self.predictor.params(emb))

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.transformer.parameters()) + list(self.predictor.parameters())

    @torch.no_grad()
    def stylize(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``alpha`` interpolates the style embedding between the content's own (0) and the style's (1), as Ghiasi
        et al.'s strength control."""
        emb = self.style_embedding(style)
        if emb.shape[0] == 1 and content.shape[0] > 1:
            emb = emb.expand(content.shape[0], -1)
        if alpha != 1.0:
            emb = self.style_embedding(content) + alpha * (emb - self.style_embedding(content))
        return self.transformer(content, self.predictor.params(emb)).clamp(0, 1)


# --------------------------------------------------------------------------------------------------------- registry
_TINY_LOSS = {"loss_vgg_weights": None, "loss_vgg_width": 1 / 16}
_TINY_ENC = {**_TINY_LOSS, "vgg_weights": None, "vgg_width": 1 / 16, "decoder_width": 1 / 16}


def _build(model_cls, config_cls, defaults: dict, overrides: dict) -> nn.Module:
    return build_from_config(model_cls, config_cls, model_cls.__name__, defaults, overrides)


@register_model
def adain(**kwargs) -> AdaIN:
    """AdaIN (Huang & Belongie 2017) trained with the balanced-loss paper's VGG-16 objective (classic Gram)."""
    return _build(AdaIN, AdaINConfig, {}, kwargs)


@register_model
def adain_tiny(**kwargs) -> AdaIN:
    """Random-init tiny AdaIN for CPU tests."""
    return _build(AdaIN, AdaINConfig, _TINY_ENC, kwargs)


@register_model
def sanet(**kwargs) -> SANetModel:
    """SANet (Park & Lee 2019) trained with the balanced-loss paper's VGG-16 objective (classic Gram)."""
    return _build(SANetModel, SANetConfig, {}, kwargs)


@register_model
def sanet_tiny(**kwargs) -> SANetModel:
    """Random-init tiny SANet for CPU tests."""
    return _build(SANetModel, SANetConfig, {**_TINY_ENC, "max_style_tokens": 256, "attention_chunk": 256}, kwargs)


@register_model
def linear_transfer(**kwargs) -> LinearTransfer:
    """LinearTransfer (Li et al. 2019) at relu4_1 trained with the balanced-loss paper's objective (classic Gram)."""
    return _build(LinearTransfer, LinearTransferConfig, {}, kwargs)


@register_model
def linear_transfer_tiny(**kwargs) -> LinearTransfer:
    """Random-init tiny LinearTransfer for CPU tests."""
    return _build(LinearTransfer, LinearTransferConfig, {**_TINY_ENC, "matrix_size": 8}, kwargs)


@register_model
def magenta(**kwargs) -> Magenta:
    """Ghiasi et al.'s arbitrary-style network (Google Magenta) with the balanced-loss paper's objective."""
    return _build(Magenta, MagentaConfig, {}, kwargs)


@register_model
def magenta_tiny(**kwargs) -> Magenta:
    """Random-init tiny Magenta network (style prediction from the tiny loss VGG) for CPU tests."""
    return _build(Magenta, MagentaConfig, {**_TINY_LOSS, "width": 1 / 4, "res_blocks": 1, "style_dim": 16,
                                           "style_backbone": "loss_vgg", "inception_weights": None}, kwargs)
