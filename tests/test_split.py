"""Split stage: source sides, score thresholds, default subset, failures untouched."""

from __future__ import annotations

import numpy as np
import pytest

from curate.split import SplitConfig, assign_subsets, decide


def batch(rows):
    cols = ("key", "status", "source", "score", "image")
    return {c: np.array([r[i] for r in rows], dtype=object) for i, c in enumerate(cols)}


def test_sources_scores_and_default():
    cfg = SplitConfig(style_min_score=0.7, content_max_score=0.3)
    rows = [
        ("k0", "ok", "behance", None, b"0"),  # style source, unscored -> style
        ("k1", "ok", "Flickr", None, b"1"),  # source matching is case-insensitive
        ("k2", "ok", "behance", 0.9, b"2"),
        ("k3", "ok", "behance", 0.5, b"3"),  # style source that does not look stylistic
        ("k4", "ok", "flickr", 0.1, b"4"),
        ("k5", "ok", "flickr", 0.8, b"5"),  # photo source that looks like an artwork
        ("k6", "ok", None, 0.95, b"6"),  # no source: the score decides
        ("k7", "ok", None, 0.05, b"7"),
        ("k8", "ok", None, 0.5, b"8"),  # between the thresholds
        ("k9", "ok", None, None, b"9"),  # no source, no score -> default subset
        ("ka", "ok", "someblog", float("nan"), b"a"),  # unmapped source, NaN score = unscored
        ("kb", "too_small", "behance", None, None),
    ]
    out = assign_subsets(batch(rows), cfg)
    assert list(out["subset"]) == ["style", "content", "style", None, "content", None, "style", "content", None,
                                   "content", "content", None]
    assert list(out["status"]) == ["ok"] * 3 + ["score_filtered"] + ["ok", "score_filtered", "ok", "ok",
                                                                     "score_filtered", "ok", "ok", "too_small"]
    for i in (3, 5, 8):
        assert out["image"][i] is None and out["error"][i]
    assert out["image"][0] == b"0"
    # every ok row has exactly one subset; every other row has none
    assert all((s == "ok") == (sub is not None) for s, sub in zip(out["status"], out["subset"], strict=True))


def test_default_subset_none_filters_unknown_rows():
    assert decide(None, None, SplitConfig(default_subset="none"))[0] is None
    assert decide(None, None, SplitConfig(default_subset="style")) == ("style", None)


def test_config_validation():
    with pytest.raises(ValueError):
        SplitConfig(source_sides={"x": "photos"})
    with pytest.raises(ValueError):
        SplitConfig(style_min_score=0.3, content_max_score=0.6)


def test_unset_thresholds_come_from_the_classifier_and_config_values_win():
    from_ckpt = {"style": 0.8, "content": 0.2, "target_precision": 0.95}
    cfg = SplitConfig().with_classifier_thresholds(from_ckpt)
    assert (cfg.style_min_score, cfg.content_max_score) == (0.8, 0.2)
    assert decide("behance", 0.7, cfg)[0] is None and decide("behance", 0.85, cfg)[0] == "style"
    cfg = SplitConfig(style_min_score=0.6).with_classifier_thresholds(from_ckpt)
    assert (cfg.style_min_score, cfg.content_max_score) == (0.6, 0.2)
    assert SplitConfig().with_classifier_thresholds(None) == SplitConfig()  # no classifier: 0.5 when scored
    assert SplitConfig().style_threshold() == SplitConfig().content_threshold() == 0.5
    with pytest.raises(ValueError, match="conflict"):
        SplitConfig(style_min_score=0.1).with_classifier_thresholds(from_ckpt)
