"""The balanced-style-loss paper's analyses: classic Gram loss vs its supremum, and loss distributions by label.

Cheng et al. (CVPR 2021) show that the classic Gram style loss L(S, P) is almost linear in its supremum
sup L = (||G(S)||^2 + ||G(P)||^2) / N over random image pairs (Study III, so the supremum is a fair per-style
normaliser), and that under-stylised outputs get *lower* classic losses than over-stylised ones while the balanced
loss orders them the other way (Studies I and IV). These functions compute the numbers; the plots and files are
written by ``pipelines/balanced_loss_analysis.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from train.losses import gram_matrix
from train.models.layers import recolour


def layer_losses(vgg, p: torch.Tensor, s: torch.Tensor, layers: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Per-layer classic loss (Gram MSE), its supremum and the balanced loss for image batches P and S, (B,) each."""
    with torch.no_grad():
        fp, fs = vgg(p, layers), vgg(s, layers)
        out = {}
        for n in layers:
            gp, gs = gram_matrix(fp[n]), gram_matrix(fs[n])
            entries = gp[0].numel()
            classic = (gp - gs).pow(2).flatten(1).sum(1) / entries
            sup = (gp.pow(2).flatten(1).sum(1) + gs.pow(2).flatten(1).sum(1)) / entries
            out[n] = {"classic": classic.cpu().double().numpy(), "supremum": sup.cpu().double().numpy(),
                      "balanced": (classic / sup.clamp_min(1e-30)).cpu().double().numpy()}
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or there are fewer than two samples."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x (the red line of the paper's Figure 4)."""
    if len(x) < 2 or np.std(x) == 0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(np.asarray(x, np.float64), np.asarray(y, np.float64), 1)
    return float(slope), float(intercept)


def under_stylised(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """A synthetic under-stylised output: the content with only the style's colour statistics (the paper's
    description: "only the dominant color is transferred")."""
    return recolour(content, style).clamp(0, 1)


def over_stylised(content: torch.Tensor, style: torch.Tensor, content_weight: float = 0.15) -> torch.Tensor:
    """A synthetic over-stylised output: the style image's texture over the content's frame, content barely
    visible (``content_weight`` of it)."""
    s = F.interpolate(style, size=content.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    return (content_weight * content + (1 - content_weight) * s).clamp(0, 1)


def summarise(values: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Count, mean, median and log10-spread of each label's losses."""
    out = {}
    for label, v in values.items():
        a = np.asarray(v, np.float64)
        pos = a[a > 0]
        out[label] = {"count": int(a.size), "mean": float(a.mean()) if a.size else math.nan,
                      "median": float(np.median(a)) if a.size else math.nan,
                      "log10_range": float(np.log10(pos.max() / pos.min())) if pos.size > 1 else 0.0}
    return out
