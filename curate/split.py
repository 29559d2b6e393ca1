"""Split stage: assign each kept row to the ``style`` or ``content`` subset from its source and score."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from core.schema import SUBSETS, Status

DEFAULT_THRESHOLD = 0.5  # split threshold on P(stylistic) when neither the config nor the classifier gives one


@dataclasses.dataclass
class SplitConfig:
    source_sides: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"behance": "style", "wikiart": "style", "flickr": "content", "unsplash": "content",
                                 "coco": "content"}
    )  # input ``source`` value (case-insensitive) -> subset it feeds; unmapped sources count as "no source"
    # a style row needs P(stylistic) >= style_min_score and a content row <= content_max_score (when scored);
    # None takes the threshold stored in the classifier checkpoint (chosen there for a target precision per side)
    style_min_score: float | None = None  # P(stylistic) floor for style; None: the classifier's style threshold
    content_max_score: float | None = None  # P(stylistic) ceiling for content; None: the classifier's threshold
    default_subset: Literal["style", "content", "none"] = "content"  # no mapped source, no score ("none": filtered)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.source_sides.items() if v not in SUBSETS}
        if bad:
            raise ValueError(f"source_sides values must be one of {list(SUBSETS)}, got {bad}")
        for name in ("style_min_score", "content_max_score"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        both = self.style_min_score is not None and self.content_max_score is not None
        if both and self.content_max_score > self.style_min_score:
            raise ValueError("content_max_score must be <= style_min_score (a score may not qualify for both)")
        self.source_sides = {k.lower(): v for k, v in self.source_sides.items()}

    def style_threshold(self) -> float:
        return DEFAULT_THRESHOLD if self.style_min_score is None else self.style_min_score

    def content_threshold(self) -> float:
        return DEFAULT_THRESHOLD if self.content_max_score is None else self.content_max_score

    def with_classifier_thresholds(self, thresholds: dict | None) -> SplitConfig:
        """This config with every threshold left at None taken from a classifier's ``{"style", "content"}``.

        A threshold the config sets wins over the checkpoint's; a resulting pair that would let one score qualify
        for both sides is an error naming where each value came from.
        """
        if not thresholds:
            return self
        style = self.style_min_score if self.style_min_score is not None else float(thresholds["style"])
        content = self.content_max_score if self.content_max_score is not None else float(thresholds["content"])
        if content > style:
            raise ValueError(f"split thresholds conflict: content_max_score {content:g} > style_min_score {style:g} "
                             f"(config {self.style_min_score}/{self.content_max_score}, classifier {thresholds})")
        return dataclasses.replace(self, style_min_score=style, content_max_score=content)


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
            if s >= cfg.style_threshold():
                return "style", None
            return None, f"style source {source!r} but score {s:.3f} < style_min_score {cfg.style_threshold():g}"
        if s <= cfg.content_threshold():
            return "content", None
        return None, f"content source {source!r} but score {s:.3f} > content_max_score {cfg.content_threshold():g}"
    if s is None:
        if cfg.default_subset == "none":
            return None, "no mapped source and no score (default_subset is none)"
        return cfg.default_subset, None
    if s >= cfg.style_threshold():
        return "style", None
    if s <= cfg.content_threshold():
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
