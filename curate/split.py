"""Split stage: assign each kept row to the ``style`` or ``content`` subset from its source and score."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from curate.schema import SUBSETS, Status


@dataclasses.dataclass
class SplitConfig:
    source_sides: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"behance": "style", "wikiart": "style", "flickr": "content", "unsplash": "content"}
    )  # input ``source`` value (case-insensitive) -> subset it feeds; unmapped sources count as "no source"
    style_min_score: float = 0.5  # a style row needs P(stylistic) >= this (when scored)
    content_max_score: float = 0.5  # a content row needs P(stylistic) <= this (when scored)
    default_subset: Literal["style", "content", "none"] = "content"  # no mapped source, no score ("none": filtered)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.source_sides.items() if v not in SUBSETS}
        if bad:
            raise ValueError(f"source_sides values must be one of {list(SUBSETS)}, got {bad}")
        if not (0.0 <= self.content_max_score <= 1.0 and 0.0 <= self.style_min_score <= 1.0):
            raise ValueError("style_min_score and content_max_score must be in [0, 1]")
        if self.content_max_score > self.style_min_score:
            raise ValueError("content_max_score must be <= style_min_score (a score may not qualify for both)")
        self.source_sides = {k.lower(): v for k, v in self.source_sides.items()}


def _score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def decide(source: Any, score: Any, cfg: SplitConfig) -> tuple[str | None, str | None]:
    """``(subset, None)`` for a kept row, or ``(None, reason)`` when it belongs to neither subset.

    Source side known: a scored row must also pass that side's threshold; an unscored row takes the side.
    No (mapped) source: the score alone decides (style above ``style_min_score``, content below
    ``content_max_score``); with no score either, ``default_subset``.
    """
    side = cfg.source_sides.get(source.lower()) if isinstance(source, str) else None
    s = _score(score)
    if side is not None:
        if s is None:
            return side, None
        if side == "style":
            if s >= cfg.style_min_score:
                return "style", None
            return None, f"style source {source!r} but score {s:.3f} < style_min_score {cfg.style_min_score:g}"
        if s <= cfg.content_max_score:
            return "content", None
        return None, f"content source {source!r} but score {s:.3f} > content_max_score {cfg.content_max_score:g}"
    if s is None:
        if cfg.default_subset == "none":
            return None, "no mapped source and no score (default_subset is none)"
        return cfg.default_subset, None
    if s >= cfg.style_min_score:
        return "style", None
    if s <= cfg.content_max_score:
        return "content", None
    return None, f"score {s:.3f} between content_max_score and style_min_score"


def assign_subsets(batch: dict[str, np.ndarray], cfg: SplitConfig | None = None) -> dict[str, np.ndarray]:
    """Batch stage: sets ``subset`` for ok rows, or status ``score_filtered`` (image dropped) when neither fits."""
    cfg = cfg or SplitConfig()
    n = len(batch["status"])
    out = dict(batch)
    status = np.array(batch["status"], dtype=object, copy=True)
    error = np.array(batch["error"], dtype=object, copy=True) if "error" in batch else np.full(n, None, object)
    subset = np.array(batch["subset"], dtype=object, copy=True) if "subset" in batch else np.full(n, None, object)
    image = np.array(batch["image"], dtype=object, copy=True) if "image" in batch else None
    sources = batch.get("source")
    scores = batch.get("score")
    for i in range(n):
        if status[i] != Status.OK.value:
            continue
        chosen, reason = decide(sources[i] if sources is not None else None,
                                scores[i] if scores is not None else None, cfg)
        if chosen is None:
            status[i], error[i], subset[i] = Status.SCORE_FILTERED.value, reason, None
            if image is not None:
                image[i] = None
        else:
            subset[i] = chosen
    out.update(status=status, error=error, subset=subset)
    if image is not None:
        out["image"] = image
    return out
