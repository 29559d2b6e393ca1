"""Self-describing classifier checkpoints: ``model.safetensors`` + ``config.json`` in one folder."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write_bytes
from core.errors import BbstError

FORMAT = "bbst-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointFormatError(BbstError, ValueError):
    """A checkpoint that is missing, of another format, or of an unsupported format version."""


def jsonable(x):
    """Plain JSON values: NaN/inf (an undefined metric, e.g. ROC-AUC of a one-class split) become None, numpy
    scalars and arrays plain numbers and lists. Dump the result with ``allow_nan=False``."""
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN; "unknown" reads better than a parse error elsewhere
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return jsonable(x.item())
    return x


def data_hash(shas_and_labels) -> str:
    """Hash of the training data: sorted (image sha256 or key, label) pairs."""
    h = hashlib.sha256()
    for sha, label in sorted((str(s), int(v)) for s, v in shas_and_labels):
        h.update(f"{sha}\t{label}\n".encode())
    return h.hexdigest()


def save_classifier(path: str | os.PathLike, model, head_result, *, training_data_hash: str,
                    extra: dict | None = None) -> str:
    """Write ``path/model.safetensors`` and ``path/config.json``; return the version string.

    The head of ``head_result`` becomes the model's head. The version is ``bbst-clf-<hash8>`` (``demo-<hash8>``
    when ``extra["demo"]`` is true), the hash covering the weights, temperature and thresholds, so any
    change to the scoring function changes the version that is written next to every score.
    """
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.head = head_result.head
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].float().numpy().tobytes())
    h.update(json.dumps(jsonable({"t": head_result.temperature, "th": head_result.thresholds}),
                        sort_keys=True).encode())
    extra = dict(extra or {})
    demo = bool(extra.pop("demo", False))
    version = f"{'demo' if demo else 'bbst-clf'}-{h.hexdigest()[:8]}"
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        bbst_version = pkg_version("bbst")
    except PackageNotFoundError:
        bbst_version = "unknown"
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "demo": demo,
        "model_name": model.name,
        "model_config": dataclasses.asdict(model.cfg),
        "preprocess": dataclasses.asdict(model.cfg.preprocess),
        "temperature": float(head_result.temperature),
        "thresholds": head_result.thresholds,
        "metrics": head_result.metrics,
        "training_data_hash": training_data_hash,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bbst_version": bbst_version,
        "extra": extra,
    }
    # both files atomically: a labeling session re-saves a checkpoint while the scorer may be reading it
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "version": version}
    atomic_write_bytes(path / WEIGHTS_FILE, save(state, metadata=metadata))
    atomic_write_bytes(path / CONFIG_FILE, json.dumps(jsonable(config), indent=2, sort_keys=False).encode())
    return version


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` is a ``torch.save`` archive (a zip holding ``data.pkl``); read without unpickling."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_checkpoint_config(path: str | os.PathLike) -> tuple[Path, dict]:
    """``(folder, config)`` of a checkpoint given its folder or its config.json; checks format and version."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    cfg_file = folder / CONFIG_FILE
    if path.is_file() and path.name != CONFIG_FILE and is_torch_file(path):
        raise CheckpointFormatError(f"{path}: a PyTorch checkpoint file (a style-transfer checkpoint from bbst "
                                    "train), not a classifier checkpoint",
                                    hint=f"a classifier checkpoint is a folder holding {CONFIG_FILE} and "
                                         f"{WEIGHTS_FILE} (bbst train-classifier --out); give this file to "
                                         "bbst stylize --checkpoint")
    if not cfg_file.is_file():
        raise CheckpointFormatError(f"{path}: not a classifier checkpoint (no {CONFIG_FILE} in {folder})")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{cfg_file}: not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointFormatError(f"{cfg_file}: format {found!r} is not {FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{cfg_file}: format_version {config.get('format_version')!r} is not supported by this bbst "
            f"(supports {FORMAT_VERSION}); retrain the head with pipelines/train_classifier.py or use a matching bbst"
        )
    for key in ("version", "model_name", "model_config", "temperature", "thresholds"):
        if key not in config:
            raise CheckpointFormatError(f"{cfg_file}: missing field {key!r}")
    if not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointFormatError(f"{folder}: {WEIGHTS_FILE} is missing next to {CONFIG_FILE}")
    return folder, config


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(model, head_result, meta)`` rebuilt from the checkpoint alone (no backbone weight files needed)."""
    from safetensors.torch import load_file

    from classifier.factory import create_classifier
    from classifier.head import HeadResult

    folder, meta = read_checkpoint_config(path)
    model = create_classifier(meta["model_name"], config=meta["model_config"])
    state = load_file(str(folder / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointFormatError(f"{folder / WEIGHTS_FILE}: weights do not match the config "
                                    f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device).eval()
    head_result = HeadResult(head=model.head, temperature=float(meta["temperature"]),
                             thresholds=dict(meta["thresholds"]), metrics=dict(meta.get("metrics") or {}))
    return model, head_result, meta
