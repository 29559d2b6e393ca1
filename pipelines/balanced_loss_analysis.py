"""The balanced-style-loss paper's analyses on your images: classic loss vs its supremum, loss distributions.

``python pipelines/balanced_loss_analysis.py correlation --images DIR --pairs 2000 --out analysis/``
samples random (S, P) image pairs from DIR and writes, per VGG-16 style layer (relu1_2, relu2_2, relu3_3, relu4_3),
the classic Gram loss against its supremum: ``pairs.csv``, ``correlation.json`` (Pearson r and the linear fit per
layer, also in log space) and ``correlation.png`` (one scatter + fit per layer, the paper's Figure 4).

``python pipelines/balanced_loss_analysis.py distributions --content DIR --style DIR --out analysis/`` builds, for
every content-style pair, an under-stylised output (content recoloured to the style's colours) and an
over-stylised one (the style's texture, content barely visible), or reads labelled outputs from ``--labels CSV``
(columns ``style``, ``output``, ``label`` and optionally ``score``: human rating, -1 good .. 1 bad), and writes the
classic and balanced loss of each (``losses.csv``), per-label summaries and, when scores exist, the Pearson
correlation of each loss with them (``distributions.json``), and ``distributions.png`` (histograms: classic on a log
axis, balanced on [0, 1]; the paper's Figures 2 and 5).

VGG-16 weights load from the local torch cache or ``$BBST_VGG16_WEIGHTS`` (``--vgg-weights PATH``);
``--random-vgg`` uses a small random network (smoke runs only: the numbers mean nothing).
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
from core.cli import HelpFormatter, error_boundary, examples_epilog, exit_with, make_parser
from core.config import ConfigError
from core.errors import BadInputError, MissingInputError

log = logging.getLogger("bbst.balanced_loss")

EXAMPLES = (
    ("bbst balanced-loss-analysis correlation --images styles/ --pairs 2000 --out analysis/",
     "classic Gram loss against its supremum over 2000 random image pairs, per VGG-16 layer (Figure 4)"),
    ("bbst balanced-loss-analysis distributions --content photos/ --style styles/ --out analysis/",
     "classic and balanced loss of under- and over-stylised outputs (Figures 2 and 5)"),
    ("bbst balanced-loss-analysis distributions --labels rated.csv --out analysis/",
     "the same for outputs you labelled (style, output, label[, score] columns)"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("balanced-loss-analysis", __doc__.split("\n")[0], EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="correlation or distributions (required)")
    helps = {"correlation": "classic style loss vs its supremum over random image pairs",
             "distributions": "classic vs balanced loss of under- and over-stylised outputs"}
    parsers = {}
    for name, help_ in helps.items():
        examples = [e for e in EXAMPLES if e[0].split()[2] == name]
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                            epilog=examples_epilog(examples))
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line (default: off)")
        parsers[name] = sp
    c, d = parsers["correlation"], parsers["distributions"]
    c.add_argument("--images", required=True, metavar="DIR",
                   help="folder of images to sample (S, P) pairs from (required)")
    c.add_argument("--pairs", type=int, default=2000, metavar="N", help="pairs to sample (default: 2000)")
    d.add_argument("--content", metavar="DIR",
                   help="content folder: synthetic under/over-stylised outputs, with --style (default: none)")
    d.add_argument("--style", metavar="DIR", help="style folder, with --content (default: none)")
    d.add_argument("--labels", metavar="CSV",
                   help="or: CSV of labelled outputs with style, output, label[, score] columns (default: none)")
    d.add_argument("--max-pairs", type=int, default=500, metavar="N",
                   help="content-style pairs sampled in synthetic mode (default: 500)")
    for sp in (c, d):
        sp.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
        sp.add_argument("--size", type=int, default=256, metavar="N",
                        help="images are resized to this square in pixels (default: 256)")
        sp.add_argument("--vgg-weights", default="auto", metavar="PATH",
                        help="VGG-16 weights file (default: auto, the local torch cache or $BBST_VGG16_WEIGHTS)")
        sp.add_argument("--random-vgg", action="store_true",
                        help="random small VGG-16: smoke runs only, the numbers mean nothing (default: off)")
        sp.add_argument("--seed", type=int, default=0, metavar="N", help="pair sampling seed (default: 0)")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    return p


def _square(img, size: int):
    import torch

    return torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True)


def _load_folder(folder: str, size: int) -> tuple[list[Path], list]:
    from train.inference import list_images, load_image

    paths, images = [], []
    for p in list_images(folder):
        try:
            images.append(_square(load_image(p), size))
            paths.append(p)
        except ValueError as exc:
            log.warning("skipping %s", exc)
    if not images:
        raise BadInputError(f"{folder}: no readable image")
    return paths, images


def _figure(ncols: int, nrows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    return plt, fig, axes


def correlation(args, vgg, layers, device) -> dict:
    import numpy as np
    import torch

    from train.style_loss_analysis import layer_losses, linear_fit, pearson

    paths, images = _load_folder(args.images, args.size)
    if len(images) < 2:
        raise BadInputError(f"--images {args.images}: needs at least two readable images")
    gen = np.random.default_rng(args.seed)
    rows, per = [], {n: {"classic": [], "supremum": []} for n in layers}
    batch = 8
    idx = [tuple(gen.choice(len(images), 2, replace=False)) for _ in range(args.pairs)]
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        s = torch.cat([images[i] for i, _ in chunk]).to(device)
        p = torch.cat([images[j] for _, j in chunk]).to(device)
        res = layer_losses(vgg, p, s, layers)
        for k, (i, j) in enumerate(chunk):
            row = {"style": str(paths[i]), "output": str(paths[j])}
            for n in layers:
                row[f"{n}_classic"] = res[n]["classic"][k]
                row[f"{n}_supremum"] = res[n]["supremum"][k]
                per[n]["classic"].append(res[n]["classic"][k])
                per[n]["supremum"].append(res[n]["supremum"][k])
            rows.append(row)
    summary = {"pairs": len(rows), "layers": {}, **_note(args)}
    plt, fig, axes = _figure(len(layers))
    for ax, n in zip(axes[0], layers):
        x, y = np.array(per[n]["supremum"]), np.array(per[n]["classic"])
        slope, intercept = linear_fit(x, y)
        pos = (x > 0) & (y > 0)
        summary["layers"][n] = {"pearson": pearson(x, y), "pearson_log": pearson(np.log(x[pos]), np.log(y[pos])),
                                "slope": slope, "intercept": intercept,
                                "classic_log10_range": float(np.log10(y[pos].max() / y[pos].min()))
                                if pos.sum() > 1 else 0.0}
        ax.scatter(x, y, s=4, alpha=0.5)
        if not math.isnan(slope):
            xs = np.linspace(x.min(), x.max(), 2)
            ax.plot(xs, slope * xs + intercept, color="red")
        ax.set_title(f"{n}  r={summary['layers'][n]['pearson']:.3f}")
        ax.set_xlabel("sup L (supremum)")
        ax.set_ylabel("classic L")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "correlation.png", dpi=100)
    plt.close(fig)
    _write_csv(Path(args.out) / "pairs.csv", rows)
    (Path(args.out) / "correlation.json").write_text(json.dumps(summary, indent=2))
    return summary


def _labelled(args, size: int) -> list[dict]:
    from train.inference import load_image

    path = Path(args.labels)
    if not path.is_file():
        raise MissingInputError(f"--labels {path}: file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"style", "output", "label"} - set(reader.fieldnames or [])
        if missing:
            raise BadInputError(f"--labels {path}: missing column(s) {sorted(missing)}")
        rows = list(reader)
    out = []
    for r in rows:
        def resolve(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() else path.parent / q

        try:
            s, p = (_square(load_image(resolve(r[k])), size) for k in ("style", "output"))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("skipping row %s: %s", r, exc)
            continue
        score = float(r["score"]) if r.get("score") not in (None, "") else None
        out.append({"style_path": r["style"], "output_path": r["output"], "label": r["label"], "score": score,
                    "style": s, "output": p})
    return out


def _synthetic(args, size: int) -> list[dict]:
    import numpy as np

    from train.style_loss_analysis import over_stylised, under_stylised

    cpaths, contents = _load_folder(args.content, size)
    spaths, styles = _load_folder(args.style, size)
    pairs = [(i, j) for i in range(len(contents)) for j in range(len(styles))]
    gen = np.random.default_rng(args.seed)
    if len(pairs) > args.max_pairs:
        pairs = [pairs[k] for k in sorted(gen.choice(len(pairs), args.max_pairs, replace=False))]
    out = []
    for i, j in pairs:
        for label, fn in (("under", under_stylised), ("over", over_stylised)):
            out.append({"style_path": str(spaths[j]), "output_path": f"{label}({cpaths[i].name})", "label": label,
                        "score": None, "style": styles[j], "output": fn(contents[i], styles[j])})
    return out


def distributions(args, vgg, layers, device) -> dict:
    import numpy as np
    import torch

    from train.style_loss_analysis import layer_losses, pearson, summarise

    if args.labels:
        items = _labelled(args, args.size)
    elif args.content and args.style:
        items = _synthetic(args, args.size)
    else:
        raise ConfigError("distributions: give --labels CSV, or --content and --style folders")
    if not items:
        raise BadInputError("distributions: no readable samples")
    rows = []
    for start in range(0, len(items), 8):
        chunk = items[start:start + 8]
        res = layer_losses(vgg, torch.cat([it["output"] for it in chunk]).to(device),
                           torch.cat([it["style"] for it in chunk]).to(device), layers)
        for k, it in enumerate(chunk):
            # the paper's sample losses: classic = sum over layers (Eq. 7), balanced = mean of layer ratios in [0, 1]
            rows.append({"style": it["style_path"], "output": it["output_path"], "label": it["label"],
                         "score": it["score"], "classic": float(sum(res[n]["classic"][k] for n in layers)),
                         "balanced": float(np.mean([res[n]["balanced"][k] for n in layers]))})
    labels = sorted({r["label"] for r in rows})
    summary = {"samples": len(rows), **_note(args), "classic": summarise({lb: [r["classic"] for r in rows if r["label"] == lb]
                                                          for lb in labels}),
               "balanced": summarise({lb: [r["balanced"] for r in rows if r["label"] == lb] for lb in labels})}
    scored = [r for r in rows if r["score"] is not None]
    if scored:
        summary["pearson_with_score"] = {k: pearson([r["score"] for r in scored], [r[k] for r in scored])
                                         for k in ("classic", "balanced")}
    plt, fig, axes = _figure(2)
    for ax, key in zip(axes[0], ("classic", "balanced")):
        for lb in labels:
            v = np.array([r[key] for r in rows if r["label"] == lb])
            if key == "classic":
                v = np.log10(np.clip(v, 1e-30, None))
            ax.hist(v, bins=30, alpha=0.5, label=lb)
        ax.set_xlabel("log10 classic style loss" if key == "classic" else "balanced style loss")
        ax.set_ylabel("samples")
        ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out) / "distributions.png", dpi=100)
    plt.close(fig)
    _write_csv(Path(args.out) / "losses.csv", rows)
    (Path(args.out) / "distributions.json").write_text(json.dumps(summary, indent=2))
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
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    from train.inference import resolve_device
    from train.models.vgg import VGG16_STYLE_LAYERS, VGG16Encoder

    device = resolve_device(args.device)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    vgg = (VGG16Encoder(None, width=1 / 16) if args.random_vgg else VGG16Encoder(args.vgg_weights)).to(device)
    fn = correlation if args.command == "correlation" else distributions
    summary = fn(args, vgg, VGG16_STYLE_LAYERS, device)
    log.info("wrote %s", args.out)
    return summary


if __name__ == "__main__":
    exit_with(main())
