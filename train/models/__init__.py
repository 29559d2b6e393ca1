"""Model registry: ``register_model`` / ``create_model(name, **kwargs)`` / ``list_models()`` (timm-style).

Adding a model family: write ``train/models/<family>.py`` with factory functions decorated by ``@register_model``
(the function name is the model name; keyword arguments override the model's config dataclass; unknown keys
raise) and add the module to ``_MODEL_MODULES``. Provide a ``<family>_tiny`` random-init variant for CPU tests
(tests/test_model_registry.py checks every one against this contract). The model object then needs:

* for training (``train.trainer``): ``generator_parameters()``, ``discriminator_parameters()`` (may be empty),
  ``generator_step(batch) -> (loss, logs, images)``, ``discriminator_step(batch) -> (loss, logs)`` and
  ``model_config() -> dict`` (stored in checkpoints; ``create_model(name, **model_config())`` rebuilds the model);
  ``batch`` holds ``content``/``style`` (B,3,H,W) in [0,1] (+ ``style2``, keys, epoch);
* for contrastive terms over a large batch (optional, ``optim.contrastive_batch``): see ``train.contrastive``;
* optional ``after_optimizer_step()``, called after each generator update (schedules counted in optimiser steps,
  not micro-batches: the variational model's KL warm-up);
* for inference (``train.inference.Stylizer``, ``pipelines/stylize.py``, ``pipelines/evaluate.py``):
  ``stylize(content, style, **controls) -> image`` under no_grad, content at any size, output in [0,1] at the
  content's size. Controls the Stylizer passes only when the user sets them: ``alpha`` (style strength), ``blur``
  and ``prior_weight`` (NeAT's prior), ``steps`` (RAST). A model without a control simply does not accept it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Modules whose import registers models. A new model family is a new module here, not a new trainer.
_MODEL_MODULES = ("train.models.neat", "train.models.rast", "train.models.variational", "train.models.metastyle",
                  "train.models.ast_baselines")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# config key naming a frozen network's weight file -> state-dict prefix of that network inside the model
FROZEN_WEIGHTS = {"vgg_weights": "vgg.", "lpips_backbone": "lpips.", "loss_vgg_weights": "loss_vgg."}
_loaded = False


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a factory function under its ``__name__``; duplicate names are a bug and raise."""
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"model {name!r} is already registered by {_REGISTRY[name].__module__}")
    _REGISTRY[name] = fn
    return fn


def build_from_config(model_cls: Callable[[Any], nn.Module], config_cls: type, label: str, defaults: dict,
                      overrides: dict) -> nn.Module:
    """``model_cls(config_cls(**defaults, **overrides))``; an override that is not a config field raises, naming all."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown {label} config keys {sorted(unknown)}; valid: {sorted(known)}")
    return model_cls(config_cls(**{**defaults, **overrides}))


def _load_model_modules() -> None:
    # Lazy so that importing the registry never pulls every model family (and no import cycles).
    global _loaded
    if not _loaded:
        for mod in _MODEL_MODULES:
            importlib.import_module(mod)
        _loaded = True


def model_config_class(name: str) -> type:
    """The config dataclass of a registered model (``NeATConfig``, ``RASTConfig``, ...): the factory's return
    annotation is the model class, whose ``__init__(cfg: <Family>Config)`` names it. The trainer's config checks
    ``model.kwargs`` against it when the file is loaded, so a wrong key or type is an error naming the file."""
    import typing

    _load_model_modules()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    model_cls = typing.get_type_hints(_REGISTRY[name])["return"]
    return typing.get_type_hints(model_cls.__init__)["cfg"]


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_model_modules()
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; kwargs override its config (see the model's ``model_config()``)."""
    _load_model_modules()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name](**kwargs)


def load_model_from_checkpoint(path: str, map_location: str | torch.device = "cpu", **overrides) -> nn.Module:
    """Rebuild a model from a trainer checkpoint (``model_name``, ``model_config``, ``model``) alone.

    ``overrides`` change inference-only options (e.g. ``attention_mode``). Frozen encoder weights stored in the
    checkpoint are used as they are, so no separate weight file is needed to stylise.
    """
    from train.checkpoint import load_checkpoint

    state = load_checkpoint(path, map_location=map_location)
    cfg = {**state["model_config"], **overrides}
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    for key, prefix in FROZEN_WEIGHTS.items():
        if key in cfg and any(k.startswith(prefix) for k in weights):
            cfg[key] = None  # the checkpoint carries these frozen weights: skip looking for the weight file
    model = create_model(state["model_name"], **cfg)
    model.load_state_dict(weights)
    # what the checkpoint said of itself, before the overrides above: bbst stylize reads it to tell a model that
    # cannot stylise (random loss network, few steps)
    model.checkpoint_meta = {"model_config": dict(state["model_config"]), "step": state.get("step")}
    return model.eval()


__all__ = ["create_model", "list_models", "load_model_from_checkpoint", "model_config_class", "register_model"]
