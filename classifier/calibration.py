"""Calibration: temperature scaling, expected calibration error, reliability curves, precision-target thresholds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -80, 80)))


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class only.

    Written out in numpy because importing scikit-learn costs seconds, far more than a head retrain.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(probs, kind="mergesort")
    sorted_p = probs[order]
    ranks = np.empty(len(probs), dtype=np.float64)
    # average rank of each run of tied scores
    starts = np.r_[0, np.nonzero(np.diff(sorted_p))[0] + 1]
    ends = np.r_[starts[1:], len(probs)]
    avg = (starts + ends + 1) / 2.0  # 1-based ranks: mean of start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probability ``sigmoid(logit / T)`` in float64: the one scoring formula used everywhere."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / float(temperature))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of ``sigmoid(logits / T)`` (Guo et al., 2017)."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if len(z) == 0 or len(torch.unique(y)) < 2:
        return 1.0  # one class only: the NLL is minimised by T -> 0 or inf, neither is calibration
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # optimise log T so T stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(np.clip(t, 1e-2, 1e2)) if np.isfinite(t) else 1.0


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15):
    """Per equal-width bin: (mean confidence in P(positive), observed positive rate, count)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    bins = np.clip((probs * n_bins).astype(int), 0, n_bins - 1)
    conf = np.full(n_bins, np.nan)
    rate = np.full(n_bins, np.nan)
    count = np.bincount(bins, minlength=n_bins)
    for b in range(n_bins):
        m = bins == b
        if m.any():
            conf[b], rate[b] = probs[m].mean(), labels[m].mean()
    return conf, rate, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the binary probability: count-weighted |mean predicted P(positive) - positive rate| over bins."""
    conf, rate, count = reliability_curve(probs, labels, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    m = count > 0
    return float(np.sum(count[m] * np.abs(conf[m] - rate[m])) / total)


def select_thresholds(probs: np.ndarray, labels: np.ndarray, target_precision: float = 0.95) -> dict:
    """Thresholds for the two subsets, each the loosest one reaching ``target_precision`` on held-out data.

    ``style``: keep ``score >= t`` as artworks; the smallest t whose kept set is >= target precision positive.
    ``content``: keep ``score <= t`` as photos; the largest t whose kept set is >= target precision negative.
    When no threshold reaches the target, the strictest one is used (1.0 / 0.0) and ``*_reached`` is False.
    The content threshold always stays below the style threshold, so the subsets never overlap.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    out: dict = {"target_precision": target_precision}
    # style side: sweep thresholds from high to low, precision of the kept (>= t) set
    order = np.argsort(-probs, kind="stable")
    p_sorted, y_sorted = probs[order], labels[order]
    tp = np.cumsum(y_sorted)
    kept = np.arange(1, len(probs) + 1)
    prec = tp / kept
    # a threshold can only sit at the last of tied scores
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True] if len(probs) else np.array([], bool)
    ok = np.where((prec >= target_precision) & last_of_tie)[0]
    if len(ok):
        i = ok.max()
        out.update(style=float(p_sorted[i]), style_reached=True)
    else:
        out.update(style=1.0, style_reached=False)
    # content side: from low to high, precision of the kept (<= t) set for the negative class
    order = np.argsort(probs, kind="stable")
    p_sorted, y_sorted = probs[order], labels[order]
    tn = np.cumsum(1 - y_sorted)
    prec = tn / kept
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True] if len(probs) else np.array([], bool)
    ok = np.where((prec >= target_precision) & last_of_tie)[0]
    if len(ok):
        i = ok.max()
        out.update(content=float(p_sorted[i]), content_reached=True)
    else:
        out.update(content=0.0, content_reached=False)
    if out["content"] >= out["style"]:
        # both targets are met with room to spare (a well-separated held-out set): the two rules would overlap,
        # so one split point is used, 0.5 when it lies between them, and no image can land in both subsets
        split = float(np.clip(0.5, out["style"], out["content"]))
        out["style"], out["content"] = split, float(np.nextafter(split, 0.0))
    return out


def precision_recall_at(probs: np.ndarray, labels: np.ndarray, thresholds: dict) -> dict:
    """Precision and recall of each subset rule at the chosen thresholds."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    style_kept = probs >= thresholds["style"]
    content_kept = probs <= thresholds["content"]
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    return {
        "style_precision": ratio(int((labels[style_kept] == 1).sum()), int(style_kept.sum())),
        "style_recall": ratio(int((labels[style_kept] == 1).sum()), n_pos),
        "content_precision": ratio(int((labels[content_kept] == 0).sum()), int(content_kept.sum())),
        "content_recall": ratio(int((labels[content_kept] == 0).sum()), n_neg),
    }
