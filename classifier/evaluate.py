"""Evaluation report of a trained classifier on held-out data: metrics, plots, most confident mistakes."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from classifier.calibration import (
    expected_calibration_error,
    precision_recall_at,
    reliability_curve,
    roc_auc,
)


def compute_metrics(probs_uncalibrated: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                    thresholds: dict) -> dict:
    """Accuracy at 0.5, ROC-AUC, ECE before/after calibration, precision/recall at the subset thresholds."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    return {
        "n": len(labels),
        "n_pos": int(labels.sum()),
        "accuracy": float(((probs >= 0.5) == labels).mean()) if len(labels) else float("nan"),
        "roc_auc": roc_auc(probs, labels),
        "ece_before": expected_calibration_error(probs_uncalibrated, labels),
        "ece_after": expected_calibration_error(probs, labels),
        "threshold_style": thresholds["style"],
        "threshold_content": thresholds["content"],
        **precision_recall_at(probs, labels, thresholds),
    }


def _plots(out: Path, probs_uncalibrated, probs, labels, thresholds) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for p, name in ((probs_uncalibrated, "before (raw logits)"), (probs, "after temperature scaling")):
        conf, rate, count = reliability_curve(p, labels, n_bins=10)
        m = count > 0
        ax.plot(conf[m], rate[m], "o-", label=f"{name}, ECE {expected_calibration_error(p, labels):.3f}")
    ax.set_xlabel("predicted P(stylistic)")
    ax.set_ylabel("fraction labelled stylistic")
    ax.set_title("Reliability diagram (held-out)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    files.append("reliability.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(probs[labels == 0], bins=bins, alpha=0.6, label="labelled photo (0)")
    ax.hist(probs[labels == 1], bins=bins, alpha=0.6, label="labelled stylistic (1)")
    ax.axvline(thresholds["style"], color="C1", ls="--", label=f"style >= {thresholds['style']:.3f}")
    ax.axvline(thresholds["content"], color="C0", ls="--", label=f"content <= {thresholds['content']:.3f}")
    ax.set_xlabel("calibrated score")
    ax.set_ylabel("images")
    ax.set_title("Score histograms (held-out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "score_histograms.png", dpi=100)
    plt.close(fig)
    files.append("score_histograms.png")
    return files


def _thumbnail(data: bytes, side: int = 160) -> bytes | None:
    from core.images import thumbnail

    try:
        return thumbnail(data, side)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the mistake is still listed without it
        return None


# Figures the NeAT paper reports for its stylistic classifier, printed next to the measured ones.
PAPER_REFERENCE = {"accuracy": (0.96, "NeAT paper: held-out accuracy of its dual-branch ViT + ALADIN classifier")}


def write_report(out_dir: str | Path, *, keys: list[str], labels: np.ndarray, probs: np.ndarray,
                 probs_uncalibrated: np.ndarray, thresholds: dict, version: str = "",
                 image_lookup: Callable[[str], bytes | None] | None = None, n_mistakes: int = 12,
                 reference: dict[str, tuple[float, str]] | None = None) -> dict:
    """Write ``report.md``, ``report.json``, the two PNG plots and mistake thumbnails into ``out_dir``.

    ``reference`` maps metric names to (published value, source), shown beside the measured value
    (e.g. :data:`PAPER_REFERENCE`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    probs_uncalibrated = np.asarray(probs_uncalibrated, dtype=np.float64)
    metrics = compute_metrics(probs_uncalibrated, probs, labels, thresholds)
    plots = _plots(out, probs_uncalibrated, probs, labels, thresholds)
    wrong = np.where((probs >= 0.5) != labels)[0]
    confidence = np.abs(probs[wrong] - 0.5)
    mistakes = []
    (out / "mistakes").mkdir(exist_ok=True)
    for i in wrong[np.argsort(-confidence, kind="stable")][:n_mistakes]:
        entry = {"key": keys[i], "label": int(labels[i]), "score": float(probs[i]), "thumbnail": None}
        data = image_lookup(keys[i]) if image_lookup else None
        thumb = _thumbnail(data) if data else None
        if thumb:
            name = f"mistakes/{keys[i]}.jpg"
            (out / name).write_bytes(thumb)
            entry["thumbnail"] = name
        mistakes.append(entry)
    reference = reference or {}
    report = {"version": version, "metrics": metrics, "thresholds": thresholds, "mistakes": mistakes,
              "reference": {k: {"value": v, "source": src} for k, (v, src) in reference.items()}}
    from classifier.checkpoint import jsonable

    (out / "report.json").write_text(json.dumps(jsonable(report), indent=2, allow_nan=False, default=lambda x: None))

    def fmt(v):
        return "n/a" if isinstance(v, float) and math.isnan(v) else (f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = [f"# Classifier evaluation {html.escape(version)}", "", "Held-out split (by key).", ""]
    if reference:
        lines += ["| metric | value | published |", "| --- | --- | --- |"]
        lines += [f"| {k} | {fmt(v)} | {fmt(reference[k][0]) if k in reference else ''} |" for k, v in metrics.items()]
        lines += ["", *[f"Published {k} {fmt(v)}: {src}; measured here on this label set's held-out split, "
                        f"{fmt(metrics.get(k, float('nan')))}." for k, (v, src) in reference.items()]]
    else:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in metrics.items()]
    lines += ["", *[f"![{p}]({p})" for p in plots], "", "## Most confident mistakes", ""]
    if not mistakes:
        lines.append("None: every held-out image is on the right side of 0.5.")
    else:
        lines += ["| key | label | score | image |", "| --- | --- | --- | --- |"]
        for m in mistakes:
            img = f"![{m['key']}]({m['thumbnail']})" if m["thumbnail"] else "(image not available)"
            lines.append(f"| {m['key']} | {m['label']} | {m['score']:.4f} | {img} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
