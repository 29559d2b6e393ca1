"""The pipeline's score stage: a callable scorer (Ray Data actor) adding calibrated P(stylistic) to batches."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from classifier.calibration import calibrated
from core.device import resolve_device
from core.schema import EMBEDDING_PARTS, Status

log = logging.getLogger(__name__)


def select_embedding(features: np.ndarray, content_dim: int, part: str) -> np.ndarray:
    """The ``part`` of the classifier's ``[content, style]`` features, L2-normalised, as float16."""
    if part not in EMBEDDING_PARTS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDING_PARTS)}, got {part!r}")
    x = np.asarray(features, dtype=np.float32)
    x = x[:, :content_dim] if part == "content" else x[:, content_dim:] if part == "style" else x
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float16)


class StyleScorer:
    """Load a classifier checkpoint once; score batches in Ray's "numpy" format.

    ``__call__`` reads ``image`` (bytes, None for failed rows) for rows whose ``status`` is ``"ok"`` and adds
    ``score`` (float64 calibrated P(stylistic), NaN where not scored) and ``classifier_version`` (the
    checkpoint's version on scored rows, None elsewhere). An undecodable image sets that row's ``status`` to
    ``"score_error"`` with the reason in ``error``; other rows are unaffected. Decoding and resizing run on
    the CPU in ``num_threads`` threads; the forward runs under ``torch.inference_mode()`` (bf16 autocast on CUDA).

    With ``embedding`` (``"content"``, ``"style"`` or ``"features"``, see :func:`select_embedding`)
    the batch also gets ``embedding``: that part of the features the score was computed from, L2-normalised,
    float16 (None where not scored), for the semantic deduplication.
    """

    def __init__(self, checkpoint: str | None = None, device: str | None = None, batch_size: int = 32,
                 num_threads: int | None = None, embedding: str | None = None):
        from classifier.checkpoint import load_classifier
        from classifier.transforms import ImageTransform

        if not checkpoint:
            raise ValueError("StyleScorer needs a checkpoint (folder or its config.json)")

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.num_threads = num_threads or 1
        self.embedding = embedding
        self.model, self.head_result, self.meta = load_classifier(checkpoint, device=self.device)
        self.version: str = self.meta["version"]
        self.demo = bool(self.meta.get("demo"))
        self.transform = ImageTransform(self.model.cfg.preprocess)
        self.temperature = float(self.head_result.temperature)
        if self.demo:
            log.warning("!" * 78 + "\nStyleScorer: %s is a DEMO classifier (%s) trained on generated images with "
                        "random-init tiny backbones; its scores mean nothing for real data.\n" + "!" * 78,
                        checkpoint, self.version)

    @property
    def embedding_dim(self) -> int:
        """Length of the ``embedding`` vectors (0 without an ``embedding`` part)."""
        dims = {"content": self.model.content_dim, "style": self.model.style_dim, "features": self.model.num_features}
        return dims.get(self.embedding or "", 0)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def score_images(self, images: list) -> tuple[np.ndarray, list[str | None]]:
        """Calibrated scores of image bytes (NaN for undecodable ones) and the per-image decode errors."""
        scores, errors, _ = self.score_and_embed(images)
        return scores, errors

    def score_and_embed(self, images: list) -> tuple[np.ndarray, list[str | None], np.ndarray]:
        """:meth:`score_images` plus the features each score came from, float32 ``(len(images),
        model.num_features)`` (zeros for undecodable images); the head runs on the same features."""
        scores = np.full(len(images), np.nan, dtype=np.float64)
        errors: list[str | None] = [None] * len(images)
        features = np.zeros((len(images), self.model.num_features), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch, errs = self.transform.batch(chunk, num_threads=self.num_threads)
            ok = [i for i, e in enumerate(errs) if e is None]
            for i, e in enumerate(errs):
                errors[start + i] = e
            if not ok:
                continue
            x = self.transform.normalize(batch.to(self.device, non_blocking=True))
            with torch.inference_mode(), self._autocast():
                feats = self.model.forward_features(x)
                logits = self.model.forward_head(feats).float().cpu().numpy()
            rows = [start + i for i in ok]
            scores[rows] = calibrated(logits, self.temperature)
            features[rows] = feats.float().cpu().numpy()
        return scores, errors, features

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "image" not in batch:
            raise KeyError(f"StyleScorer needs an 'image' column; the batch has {sorted(batch)}")
        images = batch["image"]
        n = len(images)
        status = np.asarray(batch["status"], dtype=object).copy() if "status" in batch else \
            np.full(n, Status.OK.value, dtype=object)
        error = np.asarray(batch["error"], dtype=object).copy() if "error" in batch else np.full(n, None, dtype=object)
        rows = [i for i in range(n) if status[i] == Status.OK.value]
        scores = np.full(n, np.nan, dtype=np.float64)
        versions = np.full(n, None, dtype=object)
        embeddings = np.full(n, None, dtype=object)  # one float16 vector per scored row
        if rows:
            row_scores, errors, feats = self.score_and_embed([images[i] for i in rows])
            if self.embedding:
                feats = select_embedding(feats, self.model.content_dim, self.embedding)
            for j, i in enumerate(rows):
                if errors[j] is not None:
                    status[i] = Status.SCORE_ERROR.value
                    error[i] = f"classifier {self.version}: {errors[j]}"
                else:
                    scores[i] = row_scores[j]
                    versions[i] = self.version
                    embeddings[i] = feats[j]
        out = dict(batch)
        out["status"] = status
        out["error"] = error
        out["score"] = scores
        out["classifier_version"] = versions
        if self.embedding:
            out["embedding"] = embeddings
        return out
