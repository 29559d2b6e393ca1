"""Frozen branch outputs computed once per image: extraction and a feature cache keyed by the image's sha256."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.atomic import atomic_write, atomic_write_bytes
from core.errors import BadInputError

META_FILE = "features.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def feature_fingerprint(model) -> str:
    """Short hash of everything that determines ``model.forward_features`` (config, preprocessing, weights).

    Features cached under one fingerprint are never mixed with those of another model or a fine-tuned trunk.
    """
    h = hashlib.sha256(json.dumps(_cfg_dict(model), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.feature_state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def _cfg_dict(model) -> dict:
    import dataclasses

    cfg = dataclasses.asdict(model.cfg)
    cfg.pop("head", None)  # the head is not part of the features
    cfg.pop("description", None)
    return cfg


def _load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """A cache shard: plain numbers or strings only. An array of Python objects would need pickle and is refused."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise BadInputError(f"{path}: refused: it holds Python objects, which only pickle loads (and pickle can run "
                                "code); a feature-cache shard holds numbers and digest strings") from None
        raise BadInputError(f"{path}: not a feature-cache shard: {exc}") from None
    except (OSError, EOFError) as exc:
        raise BadInputError(f"{path}: unreadable feature-cache shard: {exc}") from None


class FeatureCache:
    """Feature vectors keyed by image sha256, stored as ``.npy`` shards under ``root``.

    Each :meth:`put` writes one new shard pair (``part-<id>.npy`` float32 features, ``part-<id>.sha.npy``
    digests) atomically, so concurrent writers never clash and a crash never leaves a half-written shard.
    ``features.json`` records the dimension (and, when given, the model fingerprint): a cache is never
    silently reused for a different model.
    """

    def __init__(self, root: str | os.PathLike, fingerprint: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._index: dict[str, tuple[int, int]] = {}  # sha -> (shard number, row)
        self._shards: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self.dim: int | None = None
        meta = self.root / META_FILE
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadInputError(f"{meta}: not valid JSON: {exc}") from None
            if not isinstance(info, dict):
                raise BadInputError(f"{meta}: not a feature-cache record (a JSON object with dim and fingerprint)")
            self.dim = info.get("dim")
            if fingerprint and info.get("fingerprint") and info["fingerprint"] != fingerprint:
                raise BadInputError(f"{self.root}: feature cache was built by model {info['fingerprint']}, not "
                                 f"{fingerprint}; use a separate folder per model")
            if self.fingerprint is None:
                self.fingerprint = info.get("fingerprint")
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written by other processes since the last look."""
        with self._lock:
            for sha_file in sorted(self.root.glob("part-*.sha.npy")):
                name = sha_file.name[: -len(".sha.npy")]
                if name in self._loaded:
                    continue
                feats = _load_array(self.root / f"{name}.npy", mmap_mode="r")
                shas = _load_array(sha_file)
                if feats.ndim != 2 or shas.ndim != 1 or shas.dtype.kind != "U":
                    raise BadInputError(f"{sha_file}: not a feature-cache shard (features {feats.shape}, digests "
                                        f"{shas.shape} {shas.dtype})")
                if len(feats) != len(shas):
                    raise BadInputError(f"{sha_file}: {len(shas)} digests for {len(feats)} feature rows")
                if self.dim is not None and feats.shape[1] != self.dim:
                    raise BadInputError(f"{self.root / name}.npy: dimension {feats.shape[1]}, cache holds {self.dim}")
                self.dim = feats.shape[1]
                n = len(self._shards)
                self._shards.append(feats)
                for row, sha in enumerate(shas.tolist()):
                    self._index.setdefault(sha, (n, row))
                self._loaded.add(name)

    def __contains__(self, sha: str) -> bool:
        return sha in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, sha256s: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(features[len, dim] float32, found[len] bool)``; rows not found are zeros."""
        with self._lock:
            dim = self.dim or 0
            out = np.zeros((len(sha256s), dim), dtype=np.float32)
            found = np.zeros(len(sha256s), dtype=bool)
            for i, sha in enumerate(sha256s):
                loc = self._index.get(sha)
                if loc is not None:
                    out[i] = self._shards[loc[0]][loc[1]]
                    found[i] = True
            return out, found

    def put(self, sha256s: list[str], features: np.ndarray) -> int:
        """Store rows not already present; returns how many were new."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or len(features) != len(sha256s):
            raise ValueError(f"put: {len(sha256s)} digests for features of shape {features.shape}")
        with self._lock:
            if self.dim is not None and features.shape[1] != self.dim:
                raise ValueError(f"{self.root}: features of dimension {features.shape[1]}, cache holds {self.dim}")
            seen: set[str] = set()
            keep = []
            for i, sha in enumerate(sha256s):
                if sha not in self._index and sha not in seen:
                    seen.add(sha)
                    keep.append(i)
            if not keep:
                return 0
            if self.dim is None:
                self.dim = features.shape[1]
                meta = {"dim": self.dim, "fingerprint": self.fingerprint}
                atomic_write_bytes(self.root / META_FILE, json.dumps(meta).encode())
            name = f"part-{uuid.uuid4().hex[:12]}"
            feats, shas = features[keep], np.array([sha256s[i] for i in keep])
            for suffix, arr in ((".npy", feats), (".sha.npy", shas)):  # digests last: they mark the shard complete
                atomic_write(self.root / f"{name}{suffix}", lambda f, arr=arr: np.save(f, arr))
            n = len(self._shards)
            self._shards.append(feats)
            for row, sha in enumerate(shas.tolist()):
                self._index[sha] = (n, row)
            self._loaded.add(name)
            return len(keep)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def extract_features(model, images: list[bytes | Image.Image], batch_size: int = 32, num_threads: int = 1,
                     transform=None) -> np.ndarray:
    """Frozen ``[content, style]`` embeddings (the head's input) of images, float32 (N, model.num_features).

    Raises :class:`classifier.transforms.ImageDecodeError` naming the position of an undecodable image.
    """
    from classifier.transforms import ImageDecodeError, ImageTransform

    transform = transform or ImageTransform(model.cfg.preprocess)
    device = _device_of(model)
    out = np.zeros((len(images), model.num_features), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch, errors = transform.batch(chunk, num_threads=num_threads)
            bad = [(start + i, e) for i, e in enumerate(errors) if e is not None]
            if bad:
                raise ImageDecodeError(f"image #{bad[0][0]}: {bad[0][1]}")
            x = transform.normalize(batch.to(device, non_blocking=True))
            with torch.inference_mode(), _autocast(device):
                out[start:start + len(chunk)] = model.forward_features(x).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def cached_features(model, images: list[bytes], cache: FeatureCache | None, batch_size: int = 32,
                    num_threads: int = 1, sha256s: list[str] | None = None) -> np.ndarray:
    """Features of image bytes, reading what ``cache`` has and extracting (then storing) the rest."""
    shas = sha256s or [sha256_bytes(b) for b in images]
    if cache is None:
        return extract_features(model, images, batch_size, num_threads)
    feats, found = cache.get(shas)
    if feats.shape[1] == 0:
        feats = np.zeros((len(images), model.num_features), dtype=np.float32)
    missing = np.where(~found)[0]
    if len(missing):
        new = extract_features(model, [images[i] for i in missing], batch_size, num_threads)
        feats[missing] = new
        cache.put([shas[i] for i in missing], new)
    return feats
