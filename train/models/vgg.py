"""Frozen VGG-19 / VGG-16 feature encoders (relu taps up to relu5_1 + conv4_2) loading weights from local files."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from core.tensorfile import load_tensor_file
from core.weights import find_weights

# (name, in_channels, out_channels) of VGG-19's convolutions up to conv5_1, in order; "pool" marks max-pooling.
_VGG19_LAYOUT: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512), "pool",
    ("conv5_1", 512, 512),
]
# VGG-16 (configuration D): three convolutions in blocks 3 and 4 instead of four.
_VGG16_LAYOUT: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), "pool",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), "pool",
    ("conv5_1", 512, 512),
]
_LAYOUTS = {"vgg19": _VGG19_LAYOUT, "vgg16": _VGG16_LAYOUT}
CONV_NAMES = [item[0] for item in _VGG19_LAYOUT if not isinstance(item, str)]
VGG16_CONV_NAMES = [item[0] for item in _VGG16_LAYOUT if not isinstance(item, str)]
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Balanced-style-loss paper (Cheng et al. 2021): VGG-16 style taps relu1_2, relu2_2, relu3_3, relu4_3; content relu3_3.
VGG16_STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
VGG16_CONTENT_LAYER = "relu3_3"
# Every tap the encoder can return: the ReLU after each conv plus the pre-ReLU conv4_2 of Gatys' content loss.
FEATURE_NAMES = tuple(["relu" + n[4:] for n in CONV_NAMES] + ["conv4_2"])
VGG16_FEATURE_NAMES = tuple(["relu" + n[4:] for n in VGG16_CONV_NAMES] + ["conv4_2"])

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_channels(width: float = 1.0, arch: str = "vgg19") -> dict[str, int]:
    """Channel count of every tap for a given width multiplier (1.0 = real VGG-19 / VGG-16)."""
    out = {}
    for item in _LAYOUTS[arch]:
        if isinstance(item, str):
            continue
        name, _, cout = item
        c = max(1, round(cout * width))
        out["relu" + name[4:]] = c
        if name == "conv4_2":
            out["conv4_2"] = c
    return out


def _convert_state_dict(sd: dict[str, torch.Tensor], arch: str = "vgg19") -> tuple[str, dict[str, torch.Tensor]]:
    """Map a torchvision ``vgg19``/``vgg16`` or an AdaIN ``vgg_normalised`` state dict onto the encoder's names."""
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if any(k.startswith("features.") for k in sd):
        fmt, prefix = "torchvision", "features."
    elif "0.weight" in sd and tuple(sd["0.weight"].shape) == (3, 3, 1, 1):
        fmt, prefix = "normalised", ""
    else:
        raise ValueError("unrecognised VGG-19 state dict: expected torchvision 'features.N.weight' keys "
                         "or the AdaIN vgg_normalised layout ('0.weight' of shape 3x3x1x1)")
    conv_idx = sorted({int(k[len(prefix):].split(".")[0]) for k in sd
                       if k.startswith(prefix) and k.endswith(".weight") and sd[k].dim() == 4})
    if fmt == "torchvision":
        found = {13: "vgg16", 16: "vgg19"}.get(len(conv_idx))
        if found is not None and found != arch:
            raise ValueError(f"state dict holds {found.upper()} weights ({len(conv_idx)} convolutions), "
                             f"but a {arch.upper()} encoder was asked for")
    elif arch != "vgg19":
        raise ValueError("the AdaIN vgg_normalised layout is a VGG-19; a VGG-16 needs torchvision weights")
    out: dict[str, torch.Tensor] = {}
    if fmt == "normalised":
        out["input_conv.weight"], out["input_conv.bias"] = sd["0.weight"], sd["0.bias"]
        conv_idx = conv_idx[1:]
    for name, idx in zip(VGG16_CONV_NAMES if arch == "vgg16" else CONV_NAMES, conv_idx):
        out[f"convs.{name}.weight"] = sd[f"{prefix}{idx}.weight"]
        out[f"convs.{name}.bias"] = sd[f"{prefix}{idx}.bias"]
    return fmt, out


class VGG19Encoder(nn.Module):
    """VGG-19 up to relu5_1 taking images in [0, 1]; ``forward`` returns a dict of the requested taps.

    ``fmt="torchvision"`` uses ImageNet mean/std and zero padding; ``fmt="normalised"`` reproduces the AdaIN/PAMA
    encoder (a 1x1 input conv from Caffe weights, reflection padding, ceil-mode pooling). The encoder is frozen.
    """

    arch = "vgg19"

    def __init__(self, weights: str | os.PathLike | None = "auto", width: float = 1.0, fmt: str | None = None):
        super().__init__()
        state = None
        layout = _LAYOUTS[self.arch]
        if weights is not None:
            path = find_weights(weights, self.arch)
            raw = load_tensor_file(str(path), "weight file")
            try:
                detected, state = _convert_state_dict(raw, self.arch)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            if fmt is not None and fmt != detected:
                raise ValueError(f"{path}: holds {detected} VGG weights but fmt={fmt!r} was asked for")
            fmt = detected
            if width != 1.0:
                raise ValueError("pretrained VGG weights need width=1.0")
        self.fmt = fmt or "torchvision"
        self.width = width
        self.channels = feature_channels(width, self.arch)
        self.feature_names = VGG16_FEATURE_NAMES if self.arch == "vgg16" else FEATURE_NAMES
        self._layout = layout
        pad_mode = "reflect" if self.fmt == "normalised" else "zeros"
        self.input_conv = nn.Conv2d(3, 3, 1) if self.fmt == "normalised" else None
        self.convs = nn.ModuleDict()
        for item in layout:
            if isinstance(item, str):
                continue
            name, cin, cout = item
            cin = 3 if name == "conv1_1" else max(1, round(cin * width))
            self.convs[name] = nn.Conv2d(cin, max(1, round(cout * width)), 3, padding=1, padding_mode=pad_mode)
        if state is not None:
            self.load_state_dict(state)
        else:
            # torchvision's VGG init: keeps activations from vanishing with depth, so random-init test encoders
            # still produce informative deep features (the default conv init shrinks them ~3x per layer)
            for conv in self.convs.values():
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Encoder:
        # Frozen feature extractor: stays in eval mode whatever the parent does.
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] | list[str] = STYLE_LAYERS) -> dict[str, torch.Tensor]:
        unknown = set(layers) - set(self.feature_names)
        if unknown:
            raise ValueError(f"unknown VGG taps {sorted(unknown)}; available: {self.feature_names}")
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        h = self.input_conv(x) if self.input_conv is not None else (x - self.mean) / self.std
        for item in self._layout:
            if len(out) == len(wanted):
                break  # stop at the deepest requested tap
            if isinstance(item, str):
                h = F.max_pool2d(h, 2, ceil_mode=self.fmt == "normalised")
                continue
            name = item[0]
            h = self.convs[name](h)
            if name == "conv4_2" and "conv4_2" in wanted:
                out["conv4_2"] = h
            h = F.relu(h)
            relu = "relu" + name[4:]
            if relu in wanted:
                out[relu] = h
        return out


class VGG16Encoder(VGG19Encoder):
    """VGG-16 up to relu5_1 (torchvision ``vgg16`` weights, ImageNet normalisation): the loss network of the
    balanced-style-loss paper and of MetaStyle/Johnson (taps relu1_2, relu2_2, relu3_3, relu4_3)."""

    arch = "vgg16"


def build_vgg(arch: str, weights: str | os.PathLike | None = "auto", width: float = 1.0) -> VGG19Encoder:
    """A frozen ``vgg19`` or ``vgg16`` encoder by name."""
    if arch not in _LAYOUTS:
        raise ValueError(f"VGG arch {arch!r} not in {sorted(_LAYOUTS)}")
    return (VGG16Encoder if arch == "vgg16" else VGG19Encoder)(weights, width=width)
