"""The balanced-style-loss paper's studies of the classic and balanced Gram losses (Cheng et al., CVPR 2021).

* Study III: over random image pairs (S, P), the classic layer loss against its supremum (Eq. 11): Pearson r and
  the least-squares line per layer (the paper's Figure 4);
* Studies I and IV: the distributions of the classic (Eq. 7) and balanced (Eq. 13, summed over layers) losses of
  stylised outputs that people rated under-stylised, good or over-stylised (Figures 2 and 5; the paper's claims:
  classic under < over, balanced over < under), per layer and aggregated, overall and per rater;
* Studies II and V: the Pearson correlation of each loss with the human score h (the paper's Good = -1, OK = 0,
  Bad = 1; an under- or over-stylised rating is "Bad") per layer and aggregated, one row per rater and their average
  (Tables 2 and 3).

Studies I, II, IV and V need ratings by people: :func:`read_labels` reads them from a CSV. :func:`correlation_run`
and :func:`rating_run` run a study end to end and write its CSV, JSON and plot files (``bbst balanced-loss-analysis``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import BadInputError
from core.tables import read_csv_rows
from train.losses import gram_layer_terms

# rating -> the paper's human score h (Study II: "Good" -1, "OK" 0, "Bad" 1; under- and over-stylised are bad)
RATINGS = {"under": 1.0, "good": -1.0, "ok": 0.0, "over": 1.0}
LABEL_COLUMNS = ("image", "style", "rating", "rater")
AGGREGATE = "aggregate"
RANDOM_VGG_NOTE = "random VGG-16: smoke run, the numbers are meaningless"

log = logging.getLogger("bbst.balanced_loss")


@dataclass(frozen=True)
class Rating:
    """One person's rating of one stylised image: ``image`` was stylised with ``style``."""

    image: Path
    style: Path
    rating: str  # under, good, ok or over
    rater: str


def read_labels(path: str | os.PathLike) -> list[Rating]:
    """Ratings from a CSV with ``image``, ``style``, ``rating`` (under/good/ok/over) and ``rater`` columns.

    Relative image paths are relative to the CSV. A missing column or an unknown rating raises, naming the file
    and the line.
    """
    p = Path(path)
    out = []
    for line, row in enumerate(read_csv_rows(p, LABEL_COLUMNS, "labels file"), start=2):
        rating = (row["rating"] or "").strip().lower()
        if rating not in RATINGS:
            raise BadInputError(f"{p}:{line}: rating {row['rating']!r} not in {sorted(RATINGS)}")
        image, style = (Path(row[k].strip()) for k in ("image", "style"))
        out.append(Rating(image if image.is_absolute() else p.parent / image,
                          style if style.is_absolute() else p.parent / style, rating, row["rater"].strip()))
    if not out:
        raise BadInputError(f"{p}: no ratings")
    return out


def layer_losses(vgg, p: torch.Tensor, s: torch.Tensor, layers: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Per-layer classic loss (Gram MSE), its supremum and the balanced loss for image batches P and S, (B,) each."""
    with torch.no_grad():
        fp, fs = vgg(p, layers), vgg(s, layers)
        out = {}
        for n in layers:
            t = gram_layer_terms(fp[n], fs[n])
            classic, sup = t["classic"].double(), t["supremum"].double()
            out[n] = {"classic": classic.cpu().numpy(), "supremum": sup.cpu().numpy(),
                      "balanced": (classic / sup.clamp_min(1e-30)).cpu().numpy()}
    return out


def sample_losses(vgg, output: torch.Tensor, style: torch.Tensor, layers: tuple[str, ...]) -> dict[str, float]:
    """One output's losses: ``classic/<layer>``, ``balanced/<layer>`` and the sums over layers (Eq. 5, w = 1)
    ``classic/aggregate`` and ``balanced/aggregate``."""
    res = layer_losses(vgg, output, style, layers)
    row = {}
    for kind in ("classic", "balanced"):
        for n in layers:
            row[f"{kind}/{n}"] = float(res[n][kind][0])
        row[f"{kind}/{AGGREGATE}"] = sum(row[f"{kind}/{n}"] for n in layers)
    return row


def score_ratings(ratings: list[Rating], vgg, layers: tuple[str, ...],
                  load: Callable[[Path], torch.Tensor]) -> tuple[list[dict], list[str]]:
    """Losses of every rated image against its style; ``load(path)`` gives a (1, 3, H, W) image on the VGG's device.

    Returns (rows, skipped): one row per rating (image, style, rating, rater, h, the losses of :func:`sample_losses`);
    a rating whose image cannot be read is skipped with its reason.
    """
    rows, skipped, cache = [], [], {}
    for r in ratings:
        key = (r.image, r.style)
        if key not in cache:
            try:
                cache[key] = sample_losses(vgg, load(r.image), load(r.style), layers)
            except (FileNotFoundError, ValueError) as exc:
                cache[key] = None
                skipped.append(f"{r.image}: {exc}")
        if cache[key] is not None:
            rows.append({"image": str(r.image), "style": str(r.style), "rating": r.rating, "rater": r.rater,
                         "h": RATINGS[r.rating], **cache[key]})
    return rows, skipped


def pearson(x, y) -> float:
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


def loss_columns(layers: tuple[str, ...]) -> list[str]:
    """The loss columns of a scored row, per layer then aggregated, classic first."""
    return [f"{kind}/{n}" for kind in ("classic", "balanced") for n in (*layers, AGGREGATE)]


def _distributions(rows: list[dict], layers: tuple[str, ...]) -> dict:
    ratings = [r for r in RATINGS if any(row["rating"] == r for row in rows)]
    out = {col: summarise({lb: [row[col] for row in rows if row["rating"] == lb] for lb in ratings})
           for col in loss_columns(layers)}
    return out


def _ordering(dist: dict) -> dict[str, bool | None]:
    """The paper's claims on medians: classic under < over (Study I), balanced over < under (Study IV)."""
    def med(col: str, label: str) -> float | None:
        return dist[col].get(label, {}).get("median")

    out: dict[str, bool | None] = {}
    for key, col, low, high in (("classic_under_below_over", f"classic/{AGGREGATE}", "under", "over"),
                                ("balanced_over_below_under", f"balanced/{AGGREGATE}", "over", "under")):
        a, b = med(col, low), med(col, high)
        out[key] = None if a is None or b is None else bool(a < b)
    return out


def studies(rows: list[dict], layers: tuple[str, ...]) -> dict:
    """Studies I/IV (distributions by rating) and II/V (Pearson with h) from scored rows, overall and per rater.

    ``correlation[rater][column]`` is rho(h, loss) for one rater's ratings; ``correlation["average"]`` is the mean
    over raters (the tables' "Average" row); ``correlation["all"]`` pools every rating.
    """
    raters = sorted({r["rater"] for r in rows})
    cols = loss_columns(layers)

    def corr(sub: list[dict]) -> dict[str, float]:
        return {c: pearson([r["h"] for r in sub], [r[c] for r in sub]) for c in cols}

    per_rater = {rt: corr([r for r in rows if r["rater"] == rt]) for rt in raters}
    average = {c: float(np.nanmean([per_rater[rt][c] for rt in raters]))
               if any(not math.isnan(per_rater[rt][c]) for rt in raters) else math.nan for c in cols}
    dist = _distributions(rows, layers)
    return {
        "samples": len(rows), "raters": raters, "layers": list(layers),
        "distributions": dist,
        "distributions_per_rater": {rt: _distributions([r for r in rows if r["rater"] == rt], layers)
                                    for rt in raters},
        "paper_ordering": _ordering(dist),
        "correlation": {**per_rater, "average": average, "all": corr(rows)},
    }


def supremum_study(per_layer: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """Study III per layer from {layer: {"classic": [...], "supremum": [...]}}: Pearson r (linear and log-log), the
    line of classic on supremum, and the log10 spread of the classic loss."""
    out = {}
    for n, v in per_layer.items():
        x, y = np.asarray(v["supremum"], np.float64), np.asarray(v["classic"], np.float64)
        slope, intercept = linear_fit(x, y)
        pos = (x > 0) & (y > 0)
        out[n] = {"pearson": pearson(x, y), "pearson_log": pearson(np.log(x[pos]), np.log(y[pos])),
                  "slope": slope, "intercept": intercept,
                  "classic_log10_range": float(np.log10(y[pos].max() / y[pos].min())) if pos.sum() > 1 else 0.0}
    return out


# --------------------------------------------------------------------------------------------------- runs
def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 3.6), squeeze=False)
    return plt, fig, axes[0]


def _save_figure(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV with the first row's keys as header."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def correlation_run(images: str, pairs: int, seed: int, out: str | os.PathLike, vgg, layers: tuple[str, ...],
                    load: Callable[[Path], torch.Tensor], note: str = "") -> dict:
    """Study III over ``pairs`` random (S, P) pairs of the images in folder ``images`` (``load`` reads one):
    writes ``pairs.csv``, ``correlation.json`` and ``correlation.png`` (Figure 4) into ``out``; returns the summary."""
    from train.inference import list_images

    paths, loaded = [], []
    for path in list_images(images):
        try:
            loaded.append(load(path))
            paths.append(path)
        except ValueError as exc:
            log.warning("skipping %s", exc)
    if len(loaded) < 2:
        raise BadInputError(f"--images {images}: needs at least two readable images")
    gen = np.random.default_rng(seed)
    rows, per = [], {n: {"classic": [], "supremum": []} for n in layers}
    for _ in range(pairs):
        i, j = gen.choice(len(loaded), 2, replace=False)
        res = layer_losses(vgg, loaded[j], loaded[i], layers)
        row = {"style": str(paths[i]), "output": str(paths[j])}
        for n in layers:
            for kind in ("classic", "supremum"):
                row[f"{n}_{kind}"] = float(res[n][kind][0])
                per[n][kind].append(row[f"{n}_{kind}"])
        rows.append(row)
    summary = {"pairs": len(rows), "layers": supremum_study(per), **({"note": note} if note else {})}
    plt, fig, axes = _figure(len(layers))
    for ax, n in zip(axes, layers):
        x, y = np.array(per[n]["supremum"]), np.array(per[n]["classic"])
        stats = summary["layers"][n]
        ax.scatter(x, y, s=4, alpha=0.5)
        if not math.isnan(stats["slope"]):
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, stats["slope"] * xs + stats["intercept"], color="red")
        ax.set_title(f"{n}  r={stats['pearson']:.3f}")
        ax.set_xlabel("sup L (supremum)")
        ax.set_ylabel("classic L")
    _save_figure(plt, fig, Path(out) / "correlation.png")
    write_csv(Path(out) / "pairs.csv", rows)
    (Path(out) / "correlation.json").write_text(json.dumps(summary, indent=2))
    return summary


def rating_run(labels: str, out: str | os.PathLike, vgg, layers: tuple[str, ...],
               load: Callable[[Path], torch.Tensor], note: str = "") -> dict:
    """Studies I, II, IV and V on the ratings CSV ``labels``: writes ``losses.csv``, ``correlation.csv`` (Tables 2
    and 3), ``studies.json`` and ``distributions.png`` (Figures 2 and 5) into ``out``; returns the summary."""
    rows, skipped = score_ratings(read_labels(labels), vgg, layers, load)
    for reason in skipped:
        log.warning("skipping %s", reason)
    if not rows:
        raise BadInputError(f"--labels {labels}: no rated image could be read")
    summary = {**studies(rows, layers), "skipped": len(skipped), **({"note": note} if note else {})}
    cols = loss_columns(layers)
    table = [{"rater": rt, **{c: summary["correlation"][rt][c] for c in cols}}
             for rt in [*summary["raters"], "average", "all"]]
    ratings = [r for r in RATINGS if any(row["rating"] == r for row in rows)]
    plt, fig, axes = _figure(2)
    for ax, kind in zip(axes, ("classic", "balanced")):
        for lb in ratings:
            v = np.array([r[f"{kind}/{AGGREGATE}"] for r in rows if r["rating"] == lb])
            if kind == "classic":
                v = np.log10(np.clip(v, 1e-30, None))
            ax.hist(v, bins=30, alpha=0.5, label=lb)
        ax.set_xlabel("log10 classic style loss" if kind == "classic" else "balanced style loss")
        ax.set_ylabel("images")
        ax.legend()
    _save_figure(plt, fig, Path(out) / "distributions.png")
    write_csv(Path(out) / "losses.csv", rows)
    write_csv(Path(out) / "correlation.csv", table)
    (Path(out) / "studies.json").write_text(json.dumps(summary, indent=2))
    return summary
