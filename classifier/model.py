"""Dual-branch stylistic classifier: ViT content embedding + ALADIN-style all-layer statistics, fused by an MLP."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from classifier.transforms import PreprocessConfig
from core.tensorfile import pickle_refusal, unpickling_error_in
from core.weights import WeightsSource, find_weights


@dataclass
class TrunkConfig:
    """One ViT backbone (timm architecture, or the released ALADIN-ViT layout)."""

    arch: str = "vit_base_patch16_clip_224"  # timm architecture name, or "aladin_vit" for the ALADIN-ViT style encoder
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor overrides (embed_dim, depth, num_classes, ...)
    weights: WeightsSource = field(default_factory=WeightsSource)  # where its pretrained file is cached locally
    mean: list[float] | None = None  # input normalization this trunk was trained with; None = the model's
    std: list[float] | None = None  # see mean


@dataclass
class StyleConfig:
    """The style branch."""

    type: Literal["stats", "aladin"] = "stats"  # "stats": per-block token mean+std; "aladin": ALADIN-ViT CLS code
    layers: list[int] | None = None  # blocks whose outputs feed the statistics (negative = from the end); None = all
    dim: int = 256  # size of the projected style embedding (stats type)
    seed: int = 0  # seed of the (frozen unless fine-tuned) random projection of the statistics
    trunk: TrunkConfig | None = None  # own backbone (two-trunk mode); None = reuse the content trunk's blocks


@dataclass
class HeadConfig:
    """Fusion MLP over [content, style] -> one logit."""

    hidden: int = 256  # hidden width; 0 = a linear (logistic) head
    dropout: float = 0.1  # dropout after the hidden layer during training


@dataclass
class ClassifierConfig:
    """Architecture of a :class:`StyleClassifier` (the JSON files in ``model_configs/``)."""

    mode: Literal["shared", "two_trunk"] = "shared"  # one backbone pass feeds both branches, or one backbone each
    content: TrunkConfig = field(default_factory=TrunkConfig)  # content (and, in shared mode, style) backbone
    style: StyleConfig = field(default_factory=StyleConfig)  # style branch
    head: HeadConfig = field(default_factory=HeadConfig)  # fusion head
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)  # the one input transform
    normalize_content: bool = True  # L2-normalise the content embedding (as CLIP-embedding heads expect)
    description: str = ""  # one line for list_classifiers()

    def __post_init__(self) -> None:
        if self.mode == "shared" and self.style.trunk is not None:
            raise ValueError("mode 'shared' reuses the content trunk; remove style.trunk or use mode 'two_trunk'")
        if self.mode == "two_trunk" and self.style.trunk is None:
            raise ValueError("mode 'two_trunk' needs style.trunk")
        if self.style.type == "aladin" and (self.mode != "two_trunk" or self.style.trunk.arch != "aladin_vit"):
            raise ValueError("style.type 'aladin' needs mode 'two_trunk' with style.trunk.arch 'aladin_vit'")


def build_trunk(cfg: TrunkConfig, weights: str | os.PathLike | None, what: str) -> nn.Module:
    """Create a trunk, random-init or from a local weight file (never downloaded)."""
    path = find_weights(weights, cfg.weights, what)
    if cfg.arch == "aladin_vit":
        from classifier.aladin import AladinStyleBranch, load_aladin_checkpoint

        if path is None:
            return AladinStyleBranch(**cfg.kwargs)
        heads = cfg.kwargs.get("num_heads")
        return AladinStyleBranch.from_state_dict(load_aladin_checkpoint(path), str(path), num_heads=heads)
    import timm

    if path is None:
        return timm.create_model(cfg.arch, pretrained=False, **cfg.kwargs)
    # timm's file source goes through the architecture's checkpoint filter, which also converts open_clip /
    # OpenAI CLIP state dicts; HF_HUB_OFFLINE keeps any hub code path from reaching the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        overlay = {"file": str(path)}
        if "num_classes" in cfg.kwargs:
            # timm drops the checkpoint's head when num_classes differs from the pretrained cfg's (1000 for an
            # untagged CLIP arch), which would silently leave the CLIP projection random
            overlay["num_classes"] = cfg.kwargs["num_classes"]
        return timm.create_model(cfg.arch, pretrained=True, pretrained_cfg_overlay=overlay, **cfg.kwargs)
    except RuntimeError as exc:
        refused = unpickling_error_in(exc)  # timm reads .pth/.bin files with torch.load(weights_only=True)
        if refused is not None:
            raise pickle_refusal(str(path), refused, "weight file") from None
        raise RuntimeError(f"{what}: {path} does not fit architecture {cfg.arch} {cfg.kwargs}: {exc}") from exc


def _resolve_layers(layers: list[int] | None, depth: int) -> list[int]:
    if layers is None:
        return list(range(depth))
    out = sorted({i % depth for i in layers})
    if any(not -depth <= i < depth for i in layers):
        raise ValueError(f"style.layers {layers} out of range for a {depth}-block trunk")
    return out


class BlockStatistics(nn.Module):
    """ALADIN-style all-layer statistics: mean and std over tokens of each block's output, projected.

    Each block's tokens first go through a parameter-free LayerNorm so that every block contributes on the
    same scale (the residual stream grows with depth); the concatenated per-channel means and standard
    deviations (``len(layers) * 2 * C`` values) are then projected to ``dim``. The projection starts as a
    seeded random Gaussian map (distance-preserving, so a head on top can use it without training it) and is
    only trained when the trunk is fine-tuned.
    """

    def __init__(self, embed_dim: int, num_layers: int, dim: int, seed: int = 0):
        super().__init__()
        self.embed_dim = embed_dim
        self.in_dim = num_layers * 2 * embed_dim
        self.proj = nn.Linear(self.in_dim, dim, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, self.in_dim, generator=gen) / self.in_dim**0.5)

    def statistics(self, intermediates: list[torch.Tensor]) -> torch.Tensor:
        stats = []
        for tokens in intermediates:  # (B, N, C) patch tokens, prefix tokens excluded
            t = F.layer_norm(tokens.float(), (tokens.shape[-1],))
            stats.append(t.mean(1))
            stats.append(t.std(1))
        return torch.cat(stats, -1)

    def forward(self, intermediates: list[torch.Tensor]) -> torch.Tensor:
        stats = self.statistics(intermediates)
        return F.linear(stats, self.proj.weight.float())


class FusionHead(nn.Module):
    """Standardize [content, style] with training-set statistics, then a small MLP to one logit."""

    def __init__(self, in_dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.hidden = in_dim, hidden
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        if hidden > 0:
            self.fc1 = nn.Linear(in_dim, hidden)
            self.act = nn.GELU()
            self.drop = nn.Dropout(dropout)
            self.fc2 = nn.Linear(hidden, 1)
        else:
            self.fc2 = nn.Linear(in_dim, 1)

    def set_standardization(self, features: torch.Tensor) -> None:
        with torch.no_grad():
            self.feat_mean.copy_(features.mean(0))
            self.feat_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = (features.float() - self.feat_mean) / self.feat_std
        if self.hidden > 0:
            x = self.drop(self.act(self.fc1(x)))
        return x if pre_logits else self.fc2(x).squeeze(-1)


def _trunk_depth(trunk: nn.Module) -> int:
    vit = trunk.vit if hasattr(trunk, "vit") else trunk
    return len(vit.blocks)


class StyleClassifier(nn.Module):
    """Content branch (ViT pooled embedding) + style branch (all-layer statistics or ALADIN-ViT) + fusion head.

    ``forward_features(x)`` gives the frozen embedding ``[content, style]`` (what the feature cache stores and
    the head trains on), ``forward_head(features, pre_logits=False)`` the raw logit, ``forward(x)`` both.
    Calibration (temperature) lives in the checkpoint, not in the module.
    """

    def __init__(self, cfg: ClassifierConfig, name: str = "", weights: str | os.PathLike | None = None,
                 style_weights: str | os.PathLike | None = None):
        super().__init__()
        self.cfg, self.name = cfg, name
        self.trunk = build_trunk(cfg.content, weights, f"{name or 'model'} content trunk ({cfg.content.arch})")
        self.content_dim = self.trunk.num_classes or self.trunk.num_features
        self.style_trunk = None
        if cfg.style.trunk is not None:
            self.style_trunk = build_trunk(cfg.style.trunk, style_weights,
                                           f"{name or 'model'} style trunk ({cfg.style.trunk.arch})")
        stats_trunk = self.style_trunk if self.style_trunk is not None else self.trunk
        if cfg.style.type == "aladin":
            self.style = None
            self.style_layers: list[int] = []
            self.style_dim = self.style_trunk.out_dim
        else:
            self.style_layers = _resolve_layers(cfg.style.layers, _trunk_depth(stats_trunk))
            self.style = BlockStatistics(stats_trunk.embed_dim, len(self.style_layers), cfg.style.dim, cfg.style.seed)
            self.style_dim = cfg.style.dim
        self.num_features = self.content_dim + self.style_dim
        self.head = FusionHead(self.num_features, cfg.head.hidden, cfg.head.dropout)
        self._style_renorm = self._renorm_params(cfg)

    @staticmethod
    def _renorm_params(cfg: ClassifierConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale/shift mapping the model's normalized input to the style trunk's own normalization."""
        trunk = cfg.style.trunk
        if trunk is None:
            return None
        mean, std = trunk.mean, trunk.std
        if trunk.arch == "aladin_vit" and mean is None:
            from classifier.aladin import ALADIN_MEAN, ALADIN_STD

            mean, std = list(ALADIN_MEAN), list(ALADIN_STD)
        if mean is None or (list(mean) == list(cfg.preprocess.mean) and list(std) == list(cfg.preprocess.std)):
            return None
        m0, s0 = torch.tensor(cfg.preprocess.mean), torch.tensor(cfg.preprocess.std)
        m1, s1 = torch.tensor(mean), torch.tensor(std)
        # x1 = (x0 * s0 + m0 - m1) / s1 = x0 * (s0 / s1) + (m0 - m1) / s1
        return (s0 / s1).view(1, 3, 1, 1), ((m0 - m1) / s1).view(1, 3, 1, 1)

    def content_features(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.trunk.forward_head(self.trunk.forward_features(x))
        return F.normalize(emb.float(), dim=-1) if self.cfg.normalize_content else emb.float()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalized images -> (B, content_dim + style_dim) float32 embedding."""
        if self.style_trunk is None:
            # one pass: block outputs feed the statistics, the final normed tokens feed the pooled embedding
            final, inter = self.trunk.forward_intermediates(x, indices=self.style_layers, output_fmt="NLC")
            content = self.trunk.forward_head(final).float()
            if self.cfg.normalize_content:
                content = F.normalize(content, dim=-1)
            return torch.cat([content, self.style(inter)], -1)
        content = self.content_features(x)
        xs = x
        if self._style_renorm is not None:
            scale, shift = self._style_renorm
            xs = x * scale.to(x.device, x.dtype) + shift.to(x.device, x.dtype)
        if self.style is None:
            style = self.style_trunk(xs).float()
        else:
            inter = self.style_trunk.forward_intermediates(xs, indices=self.style_layers, output_fmt="NLC",
                                                           intermediates_only=True)
            style = self.style(inter)
        return torch.cat([content, style], -1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logit of P(stylistic), shape (B,)."""
        return self.forward_head(self.forward_features(x))

    def set_trainable(self, finetune_blocks: int = 0) -> list[nn.Parameter]:
        """Freeze the trunks except their last ``finetune_blocks`` blocks; return the trainable parameters.

        With 0 only the fusion head trains (the frozen-feature regime the feature cache serves). With N > 0 the
        last N blocks of every trunk, their final norms and projections, and the style projection train too.
        """
        self.requires_grad_(False)
        self.head.requires_grad_(True)
        if finetune_blocks > 0:
            for trunk in (self.trunk, self.style_trunk):
                if trunk is None:
                    continue
                vit = trunk.vit if hasattr(trunk, "vit") else trunk
                for block in list(vit.blocks)[-finetune_blocks:]:
                    block.requires_grad_(True)
                for sub in ("norm", "fc_norm", "head"):
                    mod = getattr(vit, sub, None)
                    if isinstance(mod, nn.Module):
                        mod.requires_grad_(True)
                if hasattr(trunk, "proj_head"):
                    trunk.proj_head.requires_grad_(True)
            if self.style is not None:
                self.style.requires_grad_(True)
        return [p for p in self.parameters() if p.requires_grad]

    def feature_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that determines ``forward_features`` (all but the head)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}


def model_config_path(name: str) -> Path:
    return Path(__file__).parent / "model_configs" / f"{name}.json"
