"""Self-describing training checkpoints: atomic writes, newest-first discovery, pruning and RNG state capture."""

from __future__ import annotations

import os
import random
import re
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write
from core.errors import BadInputError, MissingInputError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
CHECKPOINT_FORMAT = "bbst-train-checkpoint-v1"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _fs(directory: str):
    import fsspec

    return fsspec.core.url_to_fs(directory)


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint in ``directory`` (local or fsspec URL), oldest first."""
    fs, path = _fs(directory)
    if not fs.exists(path):
        return []
    found = []
    for p in fs.ls(path, detail=False):
        m = CKPT_RE.match(p.rstrip("/").rsplit("/", 1)[-1])
        if m:
            found.append((int(m.group(1)), p if "://" not in directory else fs.unstrip_protocol(p)))
    return sorted(found)


def latest_checkpoint(directory: str) -> str | None:
    """Path of the newest checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(state: dict, directory: str, step: int, keep: int = 0) -> str:
    """Write ``state`` as ``ckpt-{step}.pt`` atomically and prune to the newest ``keep``.

    A run killed mid-write leaves only a hidden temporary file behind, never a truncated checkpoint that
    ``--resume`` would pick up.
    """
    fs, path = _fs(directory)
    fs.makedirs(path, exist_ok=True)
    final = f"{path.rstrip('/')}/{checkpoint_name(step)}"
    atomic_write(final, lambda f: torch.save(state, f), fs=fs)
    if keep > 0:
        for _, old in list_checkpoints(directory)[:-keep]:
            fs.rm(old)
    return final if "://" not in directory else fs.unstrip_protocol(final)


def save_model_checkpoint(model: torch.nn.Module, path: str, model_name: str, extra: dict | None = None) -> None:
    """Write a model-only checkpoint (the trainer's format without optimizer or data state) atomically.

    ``model`` must have ``model_config()``; ``extra`` adds keys (e.g. an adaptation record). Loaded by
    ``train.models.load_model_from_checkpoint`` like any trainer checkpoint.
    """
    from pathlib import Path

    state = {"format": CHECKPOINT_FORMAT, "model_name": model_name, "model_config": model.model_config(),
             "model": {k: v.cpu() for k, v in model.state_dict().items()}, "step": 0, **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda f: torch.save(state, f))


def refuse_other_kinds(path: str) -> None:
    """One line naming what ``path`` is when it is a folder rather than a style-transfer checkpoint file.

    A classifier checkpoint (``config.json`` + ``model.safetensors``) and a training run's folder are the two
    folders users pass here by mistake; anything else that is a folder is named as one.
    """
    import json

    if "://" in path or not os.path.isdir(path):
        return
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        try:
            with open(config) as f:
                fmt = json.load(f).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt == "bbst-classifier":
            raise BadInputError(f"{path}: a stylistic classifier checkpoint, not a style-transfer checkpoint",
                                hint="pass it to --classifier (bbst build, bbst label); style-transfer checkpoints "
                                     "are the .pt files bbst train writes")
    latest = latest_checkpoint(path)
    if latest:
        raise BadInputError(f"{path}: a training run folder, not a checkpoint file", hint=f"its newest is {latest}")
    raise BadInputError(f"{path}: a folder, not a style-transfer checkpoint file",
                        hint="pass a .pt file written by bbst train")


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (holds Python/NumPy RNG states, so trusted files only)."""
    import fsspec

    refuse_other_kinds(path)
    try:
        with fsspec.open(path, "rb") as f:
            state = torch.load(f, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: checkpoint not found") from None
    for key in ("model_name", "model_config", "model", "step"):
        if key not in state:
            raise BadInputError(f"{path}: not a bbst training checkpoint (missing {key!r})")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every random state the training step may touch: Python, NumPy, torch CPU and (if present) CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
