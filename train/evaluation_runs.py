"""The rows an evaluation command scores and the run itself: ``bbst evaluate`` (:func:`evaluate_models`) and
``bbst compare`` (:func:`compare_models`) on top of :mod:`train.evaluation`.

Rows are checkpoints of any registered model (with a "no prior blurring" variant where the model has a blur
control), folders of other methods' saved outputs, and meta-trained MetaStyle checkpoints adapted to each style
first on training-set content images (their adaptation seconds are their own column).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from core.config import ConfigError
from core.errors import BadInputError, MissingInputError
from train.config import CompareConfig, EvaluateConfig
from train.evaluation import RANDOM_METRICS_NOTE, Row, evaluate, parse_named, prepare, resolve, write_comparison

log = logging.getLogger("bbst.evaluation")

COMPARE_NOTE = "Every model on the same content-style pairs; MetaStyle adapted to each style first (its own column)."


def evaluate_rows(cfg: EvaluateConfig, device: str) -> list[Row]:
    """Checkpoint rows (with their no-blur variants) and precomputed-output rows."""
    from train.inference import Stylizer

    rows: list[Row] = []
    for name, ckpt in parse_named(cfg.models, "--model"):
        base = Stylizer(ckpt, device, cfg.alpha, max_side=0)
        rows.append(Row(name, base))
        if cfg.no_blur_row and base.supports("blur"):
            no_blur = copy.copy(base)  # shares the loaded model; only the control changes
            no_blur.blur = 0.0
            rows.append(Row(f"{name} (no prior blurring)", no_blur))
    for name, folder in parse_named(cfg.outputs, "--outputs"):
        if not Path(folder).is_dir():
            raise MissingInputError(f"--outputs {name}={folder}: folder not found")
        rows.append(Row(name, outputs=folder))
    return rows


def evaluate_models(cfg: EvaluateConfig) -> dict:
    """``bbst evaluate``: quality and speed tables and the grid of ``cfg``'s rows in ``cfg.out``."""
    if not cfg.models and not cfg.outputs:
        raise ConfigError("nothing to evaluate: give --model NAME=CKPT and/or --outputs NAME=DIR")
    protocol, base, device, metrics = prepare(cfg)
    note = RANDOM_METRICS_NOTE if cfg.random_metrics else ""
    return evaluate(protocol, evaluate_rows(cfg, device), cfg.out, metrics, base_dir=base, timing=not cfg.no_timing,
                    note=note)


def adaptation_contents(cfg: CompareConfig, protocol, base: Path) -> list:
    """Content images for MetaStyle's adaptation from ``--adapt-content`` (training-set images; unreadable ones
    skipped). The protocol's content images are refused: the comparison must not see them before it scores them."""
    from train.inference import list_images, load_adaptation_contents

    if not cfg.adapt_content:
        raise ConfigError("MetaStyle adapts on content images of its training set: give --adapt-content DIR "
                          "(not the protocol's test images)")
    try:
        return load_adaptation_contents(list_images(cfg.adapt_content), cfg.adapt_crop,
                                        held_out=[resolve(base, c) for c in protocol.contents])
    except ValueError as exc:
        raise BadInputError(f"--adapt-content {cfg.adapt_content}: {exc}") from None


def compare_rows(cfg: CompareConfig, protocol, base: Path, device: str) -> list[Row]:
    """One evaluation row per ``--model``; a meta-trained MetaStyle checkpoint becomes an adapting row."""
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


def compare_models(cfg: CompareConfig) -> dict:
    """``bbst compare``: every model on the protocol's pairs, plus the deception rate with ``cfg.artist_model``;
    writes the evaluation files and ``comparison.md`` in ``cfg.out``."""
    from train.deception import scorer_from_options

    if not cfg.models:
        raise ConfigError("nothing to compare: give --model NAME=CKPT (repeatable)")
    protocol, base, device, metrics = prepare(cfg)
    scorer = scorer_from_options(cfg, [resolve(base, st) for st in protocol.styles], device)
    rows = compare_rows(cfg, protocol, base, device)
    note = COMPARE_NOTE + (" " + RANDOM_METRICS_NOTE if cfg.random_metrics else "")
    result = evaluate(protocol, rows, cfg.out, metrics, base_dir=base, timing=not cfg.no_timing, note=note,
                      scorers=[scorer] if scorer else [], grid_cell=cfg.grid_cell)
    result["comparison"] = write_comparison(result, cfg.out)
    log.info("wrote %s", Path(cfg.out) / "comparison.md")
    return result
