"""The balanced-style-loss paper's studies on your images and ratings (Cheng et al., CVPR 2021).

``python pipelines/balanced_loss_analysis.py correlation --images DIR --pairs 2000 --out analysis/`` (Study III)
samples random (S, P) image pairs from DIR and writes, per VGG-16 style layer (relu1_2, relu2_2, relu3_3, relu4_3),
the classic Gram loss against its supremum: ``pairs.csv``, ``correlation.json`` (Pearson r and the linear fit per
layer, also in log space) and ``correlation.png`` (one scatter + fit per layer, the paper's Figure 4).

``python pipelines/balanced_loss_analysis.py studies --labels ratings.csv --out analysis/`` (Studies I, II, IV, V)
reads people's ratings of stylised images (columns ``image``, ``style``, ``rating`` = under/good/ok/over, ``rater``)
and writes the classic and balanced loss of each image per layer and summed (``losses.csv``), the distributions by
rating overall and per rater, the paper's orderings (classic under < over, balanced over < under) and the Pearson
correlation of each loss with the human score per rater and averaged (``studies.json``, ``correlation.csv`` in the
layout of Tables 2 and 3), and ``distributions.png`` (Figures 2 and 5). These studies rate outputs by people: there
is no stand-in for a labels file.

Images keep their aspect ratio; the long side is reduced to ``--size``. VGG-16 weights load from the local torch
cache or ``$BBST_VGG16_WEIGHTS`` (``--vgg-weights PATH``); ``--random-vgg`` uses a small random network (smoke runs
only: the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/balanced_loss_analysis.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# numpy, torch and the model code are imported inside the functions that use them: `--help` prints before torch
from core.cli import HelpFormatter, error_boundary, examples_epilog, exit_with, make_parser, setup_logging
from core.config import ConfigError
from core.errors import BadInputError

log = logging.getLogger("bbst.balanced_loss")

EXAMPLES = (
    ("bbst balanced-loss-analysis correlation --images styles/ --pairs 2000 --out analysis/",
     "Study III: classic Gram loss against its supremum over 2000 random image pairs, per VGG-16 layer (Figure 4)"),
    ("bbst balanced-loss-analysis studies --labels ratings.csv --out analysis/",
     "Studies I, II, IV, V: losses of rated outputs by rating and their correlation with the ratings, per rater"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("balanced-loss-analysis", __doc__.split("\n")[0], EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="correlation or studies (required)")
    helps = {"correlation": "Study III: classic style loss vs its supremum over random image pairs",
             "studies": "Studies I, II, IV, V: classic and balanced loss of rated outputs"}
    parsers = {}
    for name, help_ in helps.items():
        examples = [e for e in EXAMPLES if e[0].split()[2] == name]
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                            epilog=examples_epilog(examples))
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line (default: off)")
        parsers[name] = sp
    c, d = parsers["correlation"], parsers["studies"]
    c.add_argument("--images", required=True, metavar="DIR",
                   help="folder of images to sample (S, P) pairs from (required)")
    c.add_argument("--pairs", type=int, default=2000, metavar="N",
                   help="pairs to sample (default: 2000; the paper: 200,000)")
    c.add_argument("--seed", type=int, default=0, metavar="N", help="pair sampling seed (default: 0)")
    d.add_argument("--labels", metavar="CSV",
                   help="ratings: image, style, rating (under/good/ok/over), rater columns (required)")
    for sp in (c, d):
        sp.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
        sp.add_argument("--size", type=int, default=512, metavar="N",
                        help="long side of every image in pixels, aspect kept (default: 512)")
        sp.add_argument("--vgg-weights", default="auto", metavar="PATH",
                        help="VGG-16 weights file (default: auto, the local torch cache or $BBST_VGG16_WEIGHTS)")
        sp.add_argument("--random-vgg", action="store_true",
                        help="random small VGG-16: smoke runs only, the numbers mean nothing (default: off)")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    return p


def _loader(size: int, device):
    from train.inference import load_image, resize_max_side

    return lambda path: resize_max_side(load_image(path), size).to(device)


def _figure(ncols: int, nrows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    return plt, fig, axes


def correlation(args, vgg, layers, device) -> dict:
    import numpy as np

    from train.inference import list_images
    from train.style_loss_analysis import layer_losses, supremum_study

    load = _loader(args.size, device)
    paths, images = [], []
    for path in list_images(args.images):
        try:
            images.append(load(path))
            paths.append(path)
        except ValueError as exc:
            log.warning("skipping %s", exc)
    if len(images) < 2:
        raise BadInputError(f"--images {args.images}: needs at least two readable images")
    gen = np.random.default_rng(args.seed)
    rows, per = [], {n: {"classic": [], "supremum": []} for n in layers}
    for _ in range(args.pairs):
        i, j = gen.choice(len(images), 2, replace=False)
        res = layer_losses(vgg, images[j], images[i], layers)
        row = {"style": str(paths[i]), "output": str(paths[j])}
        for n in layers:
            for kind in ("classic", "supremum"):
                row[f"{n}_{kind}"] = float(res[n][kind][0])
                per[n][kind].append(row[f"{n}_{kind}"])
        rows.append(row)
    summary = {"pairs": len(rows), "layers": supremum_study(per), **_note(args)}
    plt, fig, axes = _figure(len(layers))
    for ax, n in zip(axes[0], layers):
        x, y = np.array(per[n]["supremum"]), np.array(per[n]["classic"])
        stats = summary["layers"][n]
        ax.scatter(x, y, s=4, alpha=0.5)
        if not math.isnan(stats["slope"]):
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, stats["slope"] * xs + stats["intercept"], color="red")
        ax.set_title(f"{n}  r={stats['pearson']:.3f}")
        ax.set_xlabel("sup L (supremum)")
        ax.set_ylabel("classic L")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "correlation.png", dpi=100)
    plt.close(fig)
    _write_csv(Path(args.out) / "pairs.csv", rows)
    (Path(args.out) / "correlation.json").write_text(json.dumps(summary, indent=2))
    return summary


def studies(args, vgg, layers, device) -> dict:
    import numpy as np

    from train.style_loss_analysis import AGGREGATE, loss_columns, read_labels, score_ratings
    from train.style_loss_analysis import studies as run_studies

    rows, skipped = score_ratings(read_labels(args.labels), vgg, layers, _loader(args.size, device))
    for reason in skipped:
        log.warning("skipping %s", reason)
    if not rows:
        raise BadInputError(f"--labels {args.labels}: no rated image could be read")
    summary = {**run_studies(rows, layers), "skipped": len(skipped), **_note(args)}
    cols = loss_columns(layers)
    table = [{"rater": rt, **{c: summary["correlation"][rt][c] for c in cols}}
             for rt in [*summary["raters"], "average", "all"]]
    ratings = [r for r in ("under", "good", "ok", "over") if any(row["rating"] == r for row in rows)]
    plt, fig, axes = _figure(2)
    for ax, kind in zip(axes[0], ("classic", "balanced")):
        for lb in ratings:
            v = np.array([r[f"{kind}/{AGGREGATE}"] for r in rows if r["rating"] == lb])
            if kind == "classic":
                v = np.log10(np.clip(v, 1e-30, None))
            ax.hist(v, bins=30, alpha=0.5, label=lb)
        ax.set_xlabel("log10 classic style loss" if kind == "classic" else "balanced style loss")
        ax.set_ylabel("images")
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out) / "distributions.png", dpi=100)
    plt.close(fig)
    _write_csv(Path(args.out) / "losses.csv", rows)
    _write_csv(Path(args.out) / "correlation.csv", table)
    (Path(args.out) / "studies.json").write_text(json.dumps(summary, indent=2))
    return summary


def _note(args) -> dict:
    return {"note": "random VGG-16: smoke run, the numbers are meaningless"} if args.random_vgg else {}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@error_boundary("balanced-loss-analysis")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "studies" and not args.labels:
        raise ConfigError("studies: cannot run without --labels CSV (image, style, rating, rater): Studies I, II, "
                          "IV and V need people's ratings of stylised images")
    from core.device import resolve_device
    from train.models.vgg import VGG16_STYLE_LAYERS, VGG16Encoder

    device = resolve_device(args.device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    vgg = (VGG16Encoder(None, width=1 / 16) if args.random_vgg else VGG16Encoder(args.vgg_weights)).to(device)
    fn = correlation if args.command == "correlation" else studies
    summary = fn(args, vgg, VGG16_STYLE_LAYERS, device)
    log.info("wrote %s", args.out)
    return summary


if __name__ == "__main__":
    exit_with(main())
