"""Classifier registry and factory: ``create_classifier(name, weights=None, **overrides)`` over JSON architecture
configs (style-transfer models have their own: ``train.models.create_model``)."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
from pathlib import Path

from classifier.model import ClassifierConfig, StyleClassifier
from core.config import ConfigError, from_dict, merge

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_REGISTRY: dict[str, dict] = {}


def _scan() -> None:
    if _REGISTRY:
        return
    for path in sorted(_CONFIG_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        from_dict(ClassifierConfig, data, str(path))  # validate early: a broken shipped config is a bug
        _REGISTRY[path.stem] = data


def register_classifier_config(name: str, config: dict | str | os.PathLike) -> None:
    """Add (or replace) a named architecture from a dict or a JSON file."""
    _scan()
    data = json.loads(Path(config).read_text()) if not isinstance(config, dict) else copy.deepcopy(config)
    from_dict(ClassifierConfig, data, f"model config {name!r}")
    _REGISTRY[name] = data


def list_classifiers(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern."""
    _scan()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_classifier_config(name: str, **overrides) -> ClassifierConfig:
    """The typed config of a registered model, with nested-dict ``overrides`` merged in (unknown keys raise)."""
    _scan()
    if name not in _REGISTRY:
        raise ValueError(f"unknown classifier model {name!r}; registered: {', '.join(list_classifiers())}")
    data = merge(copy.deepcopy(_REGISTRY[name]), overrides) if overrides else copy.deepcopy(_REGISTRY[name])
    return from_dict(ClassifierConfig, data, f"model {name!r}")


def create_classifier(name: str, weights: str | os.PathLike | None = None, style_weights: str | os.PathLike | None = None,
                 config: dict | None = None, **overrides) -> StyleClassifier:
    """Build a registered classifier.

    ``weights``: content (shared) trunk weights, a local file or ``"cache"`` to search the local caches; None
    gives random init. ``style_weights``: the same for a two-trunk model's style trunk. ``config`` (a full
    config dict, e.g. from a checkpoint) replaces the registered one; ``overrides`` are merged into it.
    """
    if config is not None:
        cfg = from_dict(ClassifierConfig, merge(copy.deepcopy(config), overrides), f"model {name!r}")
    else:
        cfg = get_classifier_config(name, **overrides)
    return StyleClassifier(cfg, name=name, weights=weights, style_weights=style_weights)
