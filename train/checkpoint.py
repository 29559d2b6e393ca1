"""Self-describing training checkpoints: atomic writes, newest-first discovery, pruning and RNG state capture.

A checkpoint is data: tensors, numbers, strings and lists, tuples and dicts of them, read back with
``torch.load(weights_only=True)``, which builds nothing else, so a shared checkpoint cannot run code. RNG states are
stored in that form too. A file that needs pickle to load is refused with one line; a checkpoint of an older bbst
(it stored NumPy arrays) is converted once by :func:`convert_checkpoint` (``bbst convert-checkpoint --trust``).
"""

from __future__ import annotations

import os
import random
import re
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from core.atomic import atomic_write
from core.errors import BadInputError
from core.tensorfile import PickleRefusedError, load_tensor_file

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
    atomic_write(final, lambda f: torch.save(_plain(state), f), fs=fs)
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
    atomic_write(str(path), lambda f: torch.save(_plain(state), f))


CONVERT_COMMAND = "bbst convert-checkpoint --trust"


def _legacy_globals() -> list:
    """What checkpoints of older bbst versions hold besides tensors and plain values: NumPy arrays and scalars (the
    NumPy RNG state, a few metrics) and torch's version string. Only :func:`convert_checkpoint` allows them."""
    from torch.torch_version import TorchVersion

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    out: list = [np.ndarray, np.dtype, TorchVersion]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    out += [type(np.dtype(t)) for t in (np.uint8, np.uint32, np.int32, np.int64, np.float32, np.float64, np.bool_)]
    return out


def _global_names(objs: list) -> set[str]:
    return {o[1] if isinstance(o, tuple) else f"{o.__module__}.{o.__qualname__}" for o in objs}


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
    """Read a checkpoint written by :func:`save_checkpoint` or :func:`save_model_checkpoint` (tensors and plain
    values only: nothing in the file can run)."""
    refuse_other_kinds(path)
    try:
        state = load_tensor_file(path, "checkpoint", map_location=map_location)
    except PickleRefusedError as exc:
        if exc.names and set(exc.names) <= _global_names(_legacy_globals()):
            raise BadInputError(f"{path}: refused: written by an older bbst, it stores NumPy arrays that load only "
                                f"through pickle; if you trust this file, convert it once: {CONVERT_COMMAND} {path} "
                                "NEW.pt") from None
        raise
    if not isinstance(state, dict):
        raise BadInputError(f"{path}: not a bbst training checkpoint (holds a {type(state).__name__}, not a dict)")
    for key in ("model_name", "model_config", "model", "step"):
        if key not in state:
            raise BadInputError(f"{path}: not a bbst training checkpoint (missing {key!r})")
    return state


def _plain(x: Any) -> Any:
    """NumPy arrays and scalars and str subclasses (torch's version) as plain lists, numbers and strings, containers
    kept: what ``torch.load(weights_only=True)`` reads back."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, str):
        return str(x)
    if isinstance(x, dict):
        items = ((k, _plain(v)) for k, v in x.items())
        return OrderedDict(items) if isinstance(x, OrderedDict) else dict(items)  # state dicts stay ordered
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple) and not isinstance(x, torch.Size):
        return tuple(_plain(v) for v in x)
    return x


def convert_checkpoint(old: str, new: str, *, trust: bool) -> dict:
    """Rewrite a checkpoint of an older bbst (NumPy arrays in its RNG states) as one :func:`load_checkpoint` reads.

    ``trust`` says the user vouches for ``old``. Even then only NumPy arrays and scalars and torch's version string
    are allowed besides tensors and plain values: a file that needs anything else is refused. ``new`` is written
    atomically and read back with ``weights_only=True`` before this returns ``{"old", "new", "converted"}``.
    """
    if not trust:
        raise BadInputError(f"{old}: converting reads NumPy arrays that only pickle loads; pass --trust to say you "
                            "trust this one file")
    state = load_tensor_file(old, "checkpoint", allowed=_legacy_globals())
    if not isinstance(state, dict) or not {"model_name", "model_config", "model", "step"} <= set(state):
        raise BadInputError(f"{old}: not a bbst training checkpoint (missing model_name, model_config, model or "
                            "step)")
    plain = _plain(state)
    from pathlib import Path

    if "://" not in new:
        Path(new).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(new), lambda f: torch.save(plain, f))
    load_checkpoint(new)
    return {"old": old, "new": new, "converted": True}


def capture_rng_state() -> dict[str, Any]:
    """Every random state the training step may touch: Python, NumPy, torch CPU and (if present) CUDA.

    Plain values only (tuples of ints, a list for NumPy's key, tensors), so the checkpoint loads without pickle.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (str(name), key.tolist(), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
