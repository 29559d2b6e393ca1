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
is no stand-in for a labels file. ``train.style_loss_analysis`` does the work.

Images keep their aspect ratio; the long side is reduced to ``--size``. VGG-16 weights load from the local torch
cache or ``$BBST_VGG16_WEIGHTS`` (``--vgg-weights PATH``); ``--random-vgg`` uses a small random network (smoke runs
only: the numbers mean nothing).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, parse_config, subcommand_parsers
from core.config import ConfigError
from train.config import LossCorrelationConfig, LossStudiesConfig

log = logging.getLogger("bbst.balanced_loss")

EXAMPLES = (
    ("bbst balanced-loss-analysis correlation --images styles/ --pairs 2000 --out analysis/",
     "Study III: classic Gram loss against its supremum over 2000 random image pairs, per VGG-16 layer (Figure 4)"),
    ("bbst balanced-loss-analysis studies --labels ratings.csv --out analysis/",
     "Studies I, II, IV, V: losses of rated outputs by rating and their correlation with the ratings, per rater"),
)


CONFIGS = {"correlation": LossCorrelationConfig, "studies": LossStudiesConfig}
METAVARS = {"images": "DIR", "labels": "CSV", "out": "DIR", "vgg_weights": "PATH"}


def build_parser():
    p, subs = subcommand_parsers("balanced-loss-analysis", __doc__.split("\n")[0], EXAMPLES, {
        "correlation": "Study III: classic style loss vs its supremum over random image pairs",
        "studies": "Studies I, II, IV, V: classic and balanced loss of rated outputs"}, CONFIGS, "size=256")
    for name, sp in subs.items():
        flags = sp.get_default("config_flags")
        first = "images" if name == "correlation" else "labels"
        for key in (first, "out"):
            flags.add(sp, key, metavar=METAVARS[key], required=True)
        flags.add(sp, "vgg_weights", metavar="PATH")
        flags.add_rest(sp)
    return p


@error_boundary("balanced-loss-analysis")
def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_config(build_parser(), None, argv)
    if args.command == "studies" and not cfg.labels:
        raise ConfigError("studies: cannot run without --labels CSV (image, style, rating, rater): Studies I, II, "
                          "IV and V need people's ratings of stylised images")
    for key in ("images", "out") if args.command == "correlation" else ("out",):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key.replace('_', '-')} is required")
    from core.device import resolve_device
    from train.inference import load_image, resize_max_side
    from train.models.vgg import VGG16_STYLE_LAYERS, VGG16Encoder
    from train.style_loss_analysis import RANDOM_VGG_NOTE, correlation_run, rating_run

    device = resolve_device(cfg.device)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    vgg = (VGG16Encoder(None, width=1 / 16) if cfg.random_vgg else VGG16Encoder(cfg.vgg_weights)).to(device)
    run = {"out": cfg.out, "vgg": vgg, "layers": VGG16_STYLE_LAYERS, "note": RANDOM_VGG_NOTE if cfg.random_vgg else "",
           "load": lambda path: resize_max_side(load_image(path), cfg.size).to(device)}
    if args.command == "correlation":
        summary = correlation_run(cfg.images, cfg.pairs, cfg.seed, **run)
    else:
        summary = rating_run(cfg.labels, **run)
    log.info("wrote %s", cfg.out)
    return summary


if __name__ == "__main__":
    exit_with(main())
