"""The ``bbst`` command: one subcommand per entry script, each forwarding its arguments to that script's ``main``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import dispatch, exit_with

COMMANDS = {
    "build": ("pipelines.build_bbst", "curate: URL lists -> filtered, deduplicated, scored WebDataset shards"),
    "train-classifier": ("pipelines.train_classifier", "train and evaluate the stylistic classifier from labels"),
    "label": ("pipelines.label", "run a human-in-the-loop labeling session (web app)"),
    "train": ("pipelines.train_model", "train NeAT (or another registered model) on curated shards"),
    "stylize": ("pipelines.stylize", "stylize images with a trained checkpoint"),
    "evaluate": ("pipelines.evaluate", "style-transfer metrics over content-style pairs"),
    "make-protocol": ("pipelines.make_protocol", "build an evaluation protocol (content x style pairs) from images"),
    "rast-ablation": ("pipelines.rast_ablation", "train each RAST ablation row briefly and write the ablation table"),
    "vst-styles": ("pipelines.vst_styles", "variational model: sample styles from the prior, interpolate"),
    "metastyle": ("pipelines.metastyle", "MetaStyle: adapt to a style, stylise, interpolate adapted models"),
    "compare": ("pipelines.compare", "every model on the same pairs: one table and one image grid"),
    "convert-checkpoint": ("pipelines.convert_checkpoint",
                           "rewrite an older bbst checkpoint you trust as one that loads without pickle"),
    "weights": ("pipelines.weights", "pretrained backbones: which are here, where bbst looks, how to fetch each"),
    "balanced-loss-analysis": ("pipelines.balanced_loss_analysis",
                               "classic vs balanced Gram style loss: Study III, and Studies I-V from ratings"),
    "reproduce": ("pipelines.reproduce", "one named experiment end to end: train each model, evaluate, compare"),
}


def main(argv: list[str] | None = None):
    return dispatch(COMMANDS, sys.argv[1:] if argv is None else argv)


def run() -> None:
    """Console-script entry: scripts' ``main`` may return a summary (success) or an exit code."""
    exit_with(main())


if __name__ == "__main__":
    run()
