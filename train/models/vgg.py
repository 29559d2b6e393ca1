"""Frozen VGG-19 feature encoder (relu1_1..relu5_1 + conv4_2) loading torchvision or AdaIN/PAMA weights locally."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import MissingInputError

# (name, in_channels, out_channels) of VGG-19's convolutions up to conv5_1, in order; "pool" marks max-pooling.
_VGG19_LAYOUT: list[tuple[str, int, int] | str] = [
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512), "pool",
    ("conv5_1", 512, 512),
]
CONV_NAMES = [item[0] for item in _VGG19_LAYOUT if not isinstance(item, str)]
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Every tap the encoder can return: the ReLU after each conv plus the pre-ReLU conv4_2 of Gatys' content loss.
FEATURE_NAMES = tuple(["relu" + n[4:] for n in CONV_NAMES] + ["conv4_2"])

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
NORMALISED_FILE = "vgg_normalised.pth"
WEIGHTS_ENV = "BBST_VGG19_WEIGHTS"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def feature_channels(width: float = 1.0) -> dict[str, int]:
    """Channel count of every tap for a given width multiplier (1.0 = real VGG-19)."""
    out = {}
    for item in _VGG19_LAYOUT:
        if isinstance(item, str):
            continue
        name, _, cout = item
        c = max(1, round(cout * width))
        out["relu" + name[4:]] = c
        if name == "conv4_2":
            out["conv4_2"] = c
    return out


def default_weight_paths() -> list[Path]:
    """Where ``weights="auto"`` looks, in order: $BBST_VGG19_WEIGHTS, then the torch hub checkpoints directory."""
    paths = []
    if os.environ.get(WEIGHTS_ENV):
        paths.append(Path(os.environ[WEIGHTS_ENV]))
    ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
    paths += [ckpt_dir / TORCHVISION_FILE, ckpt_dir / NORMALISED_FILE]
    return paths


def resolve_weights(weights: str | os.PathLike) -> Path:
    """Turn ``"auto"`` or a path into an existing weight file, or raise naming every place looked at."""
    candidates = default_weight_paths() if str(weights) == "auto" else [Path(weights)]
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n  ".join(str(p) for p in candidates)
    raise MissingInputError(
        f"VGG-19 weights not found. Looked in:\n  {looked}\n"
        f"Supply them without a download at run time: copy torchvision's {TORCHVISION_FILE} (ImageNet VGG-19) or the "
        f"AdaIN/PAMA {NORMALISED_FILE} into {Path(torch.hub.get_dir()) / 'checkpoints'}, or set ${WEIGHTS_ENV} "
        "(or the model's vgg_weights option) to the file."
    )


def _convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Map a torchvision ``vgg19`` or an AdaIN ``vgg_normalised`` state dict onto this encoder's parameter names."""
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
    out: dict[str, torch.Tensor] = {}
    if fmt == "normalised":
        out["input_conv.weight"], out["input_conv.bias"] = sd["0.weight"], sd["0.bias"]
        conv_idx = conv_idx[1:]
    for name, idx in zip(CONV_NAMES, conv_idx):
        out[f"convs.{name}.weight"] = sd[f"{prefix}{idx}.weight"]
        out[f"convs.{name}.bias"] = sd[f"{prefix}{idx}.bias"]
    return fmt, out


class VGG19Encoder(nn.Module):
    """VGG-19 up to relu5_1 taking images in [0, 1]; ``forward`` returns a dict of the requested taps.

    ``fmt="torchvision"`` uses ImageNet mean/std and zero padding; ``fmt="normalised"`` reproduces the AdaIN/PAMA
    encoder (a 1x1 input conv from Caffe weights, reflection padding, ceil-mode pooling). The encoder is frozen.
    """

    def __init__(self, weights: str | os.PathLike | None = "auto", width: float = 1.0, fmt: str | None = None):
        super().__init__()
        state = None
        if weights is not None:
            path = resolve_weights(weights)
            raw = torch.load(path, map_location="cpu", weights_only=True)
            detected, state = _convert_state_dict(raw)
            if fmt is not None and fmt != detected:
                raise ValueError(f"{path}: holds {detected} VGG weights but fmt={fmt!r} was asked for")
            fmt = detected
            if width != 1.0:
                raise ValueError("pretrained VGG weights need width=1.0")
        self.fmt = fmt or "torchvision"
        self.width = width
        self.channels = feature_channels(width)
        pad_mode = "reflect" if self.fmt == "normalised" else "zeros"
        self.input_conv = nn.Conv2d(3, 3, 1) if self.fmt == "normalised" else None
        self.convs = nn.ModuleDict()
        for item in _VGG19_LAYOUT:
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
        unknown = set(layers) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown VGG taps {sorted(unknown)}; available: {FEATURE_NAMES}")
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        h = self.input_conv(x) if self.input_conv is not None else (x - self.mean) / self.std
        for item in _VGG19_LAYOUT:
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
