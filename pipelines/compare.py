"""Compare every trained model on the same protocol pairs: one table and one image grid (PNG + HTML).

``bbst evaluate`` run on every ``--model NAME=CKPT``, plus a meta-trained MetaStyle checkpoint adapted to each style
first (on ``--adapt-content``, training-set images; its adaptation time is its own column) and the deception rate
when ``--artist-model`` is given. docs/models.md describes the table; ``train.evaluation`` does the work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `python pipelines/compare.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside the functions that use them: `--help` prints before torch loads
from core.cli import config_parser, error_boundary, exit_with, parse_config
from core.config import ConfigError
from core.errors import BadInputError, MissingInputError
from train.config import EVAL_FLAGS, EvalConfig

log = logging.getLogger("bbst.compare")


@dataclass
class CompareConfig(EvalConfig):
    timing_sizes: list[str] = field(default_factory=lambda: ["512x512", "1920x1080"])  # seconds-per-image columns
    out: str = "comparison"  # output folder
    adapt_steps: int | None = None  # MetaStyle adaptation steps per style (None = the model's adapt_steps)
    adapt_content: str = ""  # MetaStyle adaptation content folder: training-set images, not the protocol's
    adapt_crop: int = 256  # MetaStyle adaptation crop size in pixels
    adapt_batch: int = 4  # MetaStyle adaptation crops per step
    adapt_seed: int = 0  # seed of the adaptation crops
    artist_model: str = ""  # artist classifier for the deception rate (torch.export .pt2 or TorchScript file)
    artists: str = ""  # CSV style,artist: the artist of each style image (nearest: default from the references)
    artist_names: str = ""  # text file, one artist per line in the model's logit order (classify mode)
    deception_mode: Literal["classify", "nearest"] = "nearest"  # artist of the nearest reference painting, or arg-max
    deception_references: str = ""  # nearest: held-out artists' paintings, ARTIST/ subfolders or image,artist CSV
    deception_min_paintings: int = 30  # nearest mode: keep artists with at least this many references (paper: 30)
    artist_input_size: int = 224  # square input size of the artist model
    grid_cell: int = 192  # grid.png cell size in pixels

    def __post_init__(self):
        if self.adapt_crop < 1 or self.adapt_batch < 1:
            raise ValueError(f"adapt_crop and adapt_batch must be >= 1, got {self.adapt_crop}, {self.adapt_batch}")


EXAMPLES = (
    (("bbst compare --protocol protocol.yaml --model NeAT=neat.pt --model RAST=rast.pt --model MetaStyle=meta.pt "
     "--adapt-content train-photos/ --out comparison/"),
     "every model on a protocol's pairs: one table (MetaStyle adapted per style) and one grid"),
    (("bbst compare --protocol eval-tiny/protocol.yaml --model tiny=ckpt.pt --random-metrics --timing-sizes 64x64 "
     "--adapt-steps 5 --adapt-crop 32 --out comparison-tiny/"), "a smoke run: tiny protocol, random metric nets"),
)


def build_parser() -> argparse.ArgumentParser:
    return config_parser("compare", __doc__.split("\n")[0], EXAMPLES, CompareConfig, "adapt_steps=100",
                         EVAL_FLAGS)


def adaptation_contents(cfg: CompareConfig, protocol, base: Path) -> list:
    """Content images for MetaStyle's adaptation from ``--adapt-content`` (training-set images; unreadable ones
    skipped). The protocol's content images are refused: the comparison must not see them before it scores them."""
    from train.evaluation import resolve
    from train.inference import list_images, load_adaptation_contents

    if not cfg.adapt_content:
        raise ConfigError("MetaStyle adapts on content images of its training set: give --adapt-content DIR "
                          "(not the protocol's test images)")
    try:
        return load_adaptation_contents(list_images(cfg.adapt_content), cfg.adapt_crop,
                                        held_out=[resolve(base, c) for c in protocol.contents])
    except ValueError as exc:
        raise BadInputError(f"--adapt-content {cfg.adapt_content}: {exc}") from None


def build_rows(cfg: CompareConfig, protocol, base: Path, device: str) -> list:
    """One evaluation row per ``--model``; a meta-trained MetaStyle checkpoint becomes an adapting row."""
    from train.evaluation import Row, parse_named
    from train.inference import AdaptingStylizer, Stylizer
    from train.models.metastyle import MetaStyle

    rows, contents = [], None
    for name, ckpt in parse_named(cfg.models, "--model"):
        stylizer = Stylizer(ckpt, device, max_side=0, style_size=protocol.style_size)
        if isinstance(stylizer.model, MetaStyle) and not stylizer.model.cfg.adapted_style:
            if contents is None:
                contents = adaptation_contents(cfg, protocol, base)
            if not contents:
                raise MissingInputError("MetaStyle adaptation needs readable content images",
                                        hint="give --adapt-content DIR")
            adapting = AdaptingStylizer(stylizer.model, contents, device, steps=cfg.adapt_steps,
                                        crop=cfg.adapt_crop, batch=cfg.adapt_batch, max_side=0,
                                        style_size=protocol.style_size, seed=cfg.adapt_seed)
            rows.append(Row(name, adapting, timing_fn=adapting.feed_forward, costs=adapting.costs))
        else:
            rows.append(Row(name, stylizer))
    return rows


@error_boundary("compare")
def main(argv: list[str] | None = None) -> dict:
    cfg, _ = parse_config(build_parser(), CompareConfig, argv)
    from train.evaluation import RANDOM_METRICS_NOTE, evaluate, prepare, write_comparison

    if not cfg.models:
        raise ConfigError("nothing to compare: give --model NAME=CKPT (repeatable)")
    protocol, base, device, metrics = prepare(cfg)
    from train.deception import scorer_from_options
    from train.evaluation import resolve

    scorer = scorer_from_options(cfg, [resolve(base, st) for st in protocol.styles], device)
    rows = build_rows(cfg, protocol, base, device)
    note = "Every model on the same content-style pairs; MetaStyle adapted to each style first (its own column)."
    if cfg.random_metrics:
        note += " " + RANDOM_METRICS_NOTE
    result = evaluate(protocol, rows, cfg.out, metrics, base_dir=base, timing=not cfg.no_timing, note=note,
                      scorers=[scorer] if scorer else [], grid_cell=cfg.grid_cell)
    result["comparison"] = write_comparison(result, cfg.out)
    log.info("wrote %s", Path(cfg.out) / "comparison.md")
    return result


if __name__ == "__main__":
    exit_with(main())
