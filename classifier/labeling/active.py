"""Background active-learning loop: cache pool features, retrain the head every N labels, rescore the pool.

Two daemon threads keep labeling responsive:

* the **feature worker** fills the feature cache for the pool (labelled items first, then the rest) with the
  frozen backbone, and scores newly cached items with the current head as they arrive;
* the **retrainer** wakes after every ``retrain_every`` new decisions (once both classes have
  ``min_per_class`` consensus labels), trains the head on cached features, saves the round's checkpoint,
  rescores every cached pool item and records a numbered round with its metrics in the label store.

Neither ever holds the label store's lock while computing, so a decision is committed as fast during a retrain
as outside one. The held-out set of each round is the labels drawn by the sampler's uniform ``random`` share,
so the per-round accuracy and ROC-AUC estimate the pool distribution rather than the boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifier.labeling.pool import Pool
from classifier.labeling.sampling import RANDOM
from classifier.labeling.store import LabelStore
from classifier.training import MIN_HELD_OUT

log = logging.getLogger(__name__)


@dataclass
class ActiveConfig:
    retrain_every: int = 50  # retrain after this many new (non-skip) decisions since the last round
    min_per_class: int = 10  # the first head is trained once both classes have this many consensus labels
    val_fraction: float = 0.2  # held-out share of the labelled keys (split by key hash, stable across rounds)
    target_precision: float = 0.95  # precision the head's subset thresholds aim for (see classifier.head)
    decision_threshold: float = 0.5  # calibrated score separating the classes; uncertainty sampling centres here
    review_margin: float = 0.8  # held-out items whose calibrated score is this far from their label are re-asked
    feature_batch_size: int = 32  # images per backbone forward in the feature worker
    seed: int = 0  # seed for the head's split and initialisation


class ActiveLearner:
    """Owns the backbone, the feature cache and the current head for one labeling session."""

    def __init__(self, store: LabelStore, pool: Pool, model, cache, cfg: ActiveConfig, rounds_dir: str | Path,
                 head_result=None, model_version: str | None = None, demo: bool = False):
        self.store, self.pool, self.model, self.cache, self.cfg = store, pool, model, cache, cfg
        self.rounds_dir = Path(rounds_dir)
        self.rounds_dir.mkdir(parents=True, exist_ok=True)
        self.head_result = head_result
        self.model_version = model_version
        # started from a demo checkpoint (random-init tiny backbone): everything saved from it stays marked demo
        self.demo = demo
        self.checkpoint_path: Path | None = None
        self.scores: dict[str, float] = {}
        self.feature_errors: dict[str, str] = {}  # key -> why its features could not be computed
        self.last_error: str | None = None
        self.retraining = False
        self._model_lock = threading.Lock()  # one backbone forward at a time (worker and retrainer share it)
        self._state_lock = threading.Lock()
        self._wake_features = threading.Event()
        self._wake_retrain = threading.Event()
        self._stop = threading.Event()
        self._priority: list[str] = []
        self._sha: dict[str, str] = {k: s for k, s in ((r["key"], r["sha256"]) for r in store.items()) if s}
        for r in store.items():
            if r["score"] is not None:
                self.scores[r["key"]] = float(r["score"])
        self._threads: list[threading.Thread] = []
        # likely label errors found by the last round; persisted so a restart keeps asking for them
        self.review_keys: list[str] = json.loads(store.get_meta("review_keys") or "[]")
        self._resume_last_round()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for target, name in ((self._feature_loop, "bbst-features"), (self._retrain_loop, "bbst-retrain")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._wake_features.set()
        self._wake_retrain.set()  # a restart may owe a round (labels came in after the last one)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake_features.set()
        self._wake_retrain.set()
        for t in self._threads:
            t.join(timeout)

    @property
    def threshold(self) -> float | None:
        """Decision threshold on the calibrated score, or None while there is no head."""
        return None if self.head_result is None else float(self.cfg.decision_threshold)

    def _resume_last_round(self) -> None:
        """After a restart, reload the head of the latest round so scores and versions carry on."""
        rounds = self.store.rounds()
        if not rounds:
            return
        path = rounds[-1]["metrics"].get("checkpoint")
        if path and Path(path).exists():
            from classifier.checkpoint import load_classifier

            _, self.head_result, _ = load_classifier(path)
            self.model_version = rounds[-1]["model_version"]
            self.checkpoint_path = Path(path)

    # ------------------------------------------------------------------ features
    def sha256(self, key: str) -> str | None:
        return self._sha.get(key) or self.pool.item(key).sha256

    def prioritise(self, keys) -> None:
        """Ask the feature worker to do these keys next (labelled or about to be shown)."""
        with self._state_lock:
            self._priority.extend(k for k in keys if k in self.pool)
        self._wake_features.set()

    def has_features(self, key: str) -> bool:
        sha = self.sha256(key)
        return sha is not None and sha in self.cache

    def missing_features(self, keys) -> list[str]:
        return [k for k in keys if not self.has_features(k) and k not in self.feature_errors]

    def compute_features(self, keys: list[str]) -> int:
        """Extract and cache features for ``keys``; undecodable images become ``feature_errors`` rows."""
        from classifier.features import extract_features

        keys = self.missing_features(keys)
        done = 0
        for i in range(0, len(keys), self.cfg.feature_batch_size):
            chunk = keys[i:i + self.cfg.feature_batch_size]
            datas, shas, ok = [], [], []
            for k in chunk:
                try:
                    data = self.pool.read_bytes(k)
                except OSError as exc:
                    self.feature_errors[k] = f"read failed: {exc}"
                    continue
                datas.append(data)
                shas.append(self.pool.sha256(k, data))
                ok.append(k)
            if not ok:
                continue
            feats, good = self._extract(extract_features, datas, ok)
            keep = [j for j in range(len(ok)) if good[j]]
            if keep:
                self.cache.put([shas[j] for j in keep], feats[keep])
                new = [(ok[j], shas[j]) for j in keep if self._sha.get(ok[j]) != shas[j]]
                self._sha.update(dict(new))
                if new:
                    self.store.set_sha256(new)
                done += len(keep)
                if self.head_result is not None:
                    self._score([ok[j] for j in keep], feats[keep])
        return done

    def _extract(self, extract_features, datas: list[bytes], keys: list[str]) -> tuple[np.ndarray, list[bool]]:
        from classifier.transforms import ImageDecodeError

        with self._model_lock:
            try:
                return extract_features(self.model, datas, batch_size=len(datas)), [True] * len(datas)
            except ImageDecodeError:  # one bad image fails the batch: redo one by one to find it
                feats, good = [], []
                for data, key in zip(datas, keys):
                    try:
                        feats.append(extract_features(self.model, [data], batch_size=1)[0])
                        good.append(True)
                    except ImageDecodeError as exc:
                        self.feature_errors[key] = str(exc)
                        good.append(False)
                dim = feats[0].shape[-1] if feats else 1
                out = np.zeros((len(datas), dim), dtype=np.float32)
                j = 0
                for i, g in enumerate(good):
                    if g:
                        out[i] = feats[j]
                        j += 1
                return out, good

    @staticmethod
    def _lower_priority() -> None:
        """Nice this thread (Linux schedules threads individually) so requests win the CPU on a busy machine."""
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
            pass

    def _feature_loop(self) -> None:
        self._lower_priority()
        remaining = list(self.pool.keys)
        while not self._stop.is_set():
            with self._state_lock:
                prio, self._priority = self._priority, []
            batch = self.missing_features(prio)[: self.cfg.feature_batch_size]
            if not batch:
                while remaining and len(batch) < self.cfg.feature_batch_size:
                    k = remaining.pop()
                    if not self.has_features(k) and k not in self.feature_errors:
                        batch.append(k)
            if not batch:
                self._wake_features.wait(5.0)
                self._wake_features.clear()
                continue
            try:
                self.compute_features(batch)
            except Exception:
                self.last_error = traceback.format_exc(limit=3)
                log.exception("feature extraction failed")
                self._stop.wait(2.0)

    # ------------------------------------------------------------------ scoring
    def _score(self, keys: list[str], feats: np.ndarray) -> None:
        from classifier.head import predict_proba

        head, version = self.head_result, self.model_version
        probs = np.asarray(predict_proba(head, feats), dtype=np.float64).reshape(-1)
        self.store.set_scores(keys, probs, version)
        self.scores.update(zip(keys, probs.tolist()))

    def rescore_pool(self) -> tuple[int, float]:
        """Score every pool item that has cached features with the current head; returns (count, seconds)."""
        t0 = time.perf_counter()
        keys = [k for k in self.pool.keys if self.sha256(k)]
        if not keys or self.head_result is None:
            return 0, time.perf_counter() - t0
        feats, found = self.cache.get([self.sha256(k) for k in keys])
        found = np.asarray(found, dtype=bool)
        keys = [k for k, f in zip(keys, found) if f]
        if keys:
            self._score(keys, np.asarray(feats)[found])
        return len(keys), time.perf_counter() - t0

    # ------------------------------------------------------------------ retraining
    def notify_labels(self) -> None:
        """Called after each committed decision; cheap, the check runs in the retrain thread."""
        self._wake_retrain.set()

    def retrain_due(self) -> bool:
        cons = self.store.consensus()
        pos = sum(cons.values())
        if min(pos, len(cons) - pos) < self.cfg.min_per_class:
            return False
        rounds = self.store.rounds()
        last = rounds[-1]["n_labels"] if rounds else 0
        return self.store.label_count() - last >= self.cfg.retrain_every

    def _retrain_loop(self) -> None:
        self._lower_priority()
        while not self._stop.is_set():
            self._wake_retrain.wait(5.0)
            self._wake_retrain.clear()
            if self._stop.is_set():
                break
            try:
                if self.retrain_due():
                    self.retrain()
            except Exception as exc:
                self.last_error = f"retrain failed: {type(exc).__name__}: {exc}"
                log.warning("retrain round %d failed (%s: %s); retried after the next decision",
                            self.store.current_round() + 1, type(exc).__name__, exc, exc_info=log.isEnabledFor(10))

    def retrain(self) -> int:
        """Train a head on the consensus labels now, save it, rescore the pool, record the round. Returns it."""
        from classifier.checkpoint import jsonable
        from classifier.training import fit_classifier

        self.retraining = True
        try:
            t0 = time.perf_counter()
            n_labels = self.store.label_count()
            cons = self.store.consensus()
            keys = sorted(cons)
            self.compute_features(keys)
            keys = [k for k in keys if self.has_features(k)]
            feats, found = self.cache.get([self.sha256(k) for k in keys])
            found = np.asarray(found, dtype=bool)
            keys = [k for k, f in zip(keys, found) if f]
            feats = np.asarray(feats)[found]
            y = np.array([cons[k] for k in keys], dtype=np.int64)
            rnd = self.store.current_round() + 1
            path = self.rounds_dir / f"round-{rnd:04d}.ckpt"
            data_hash = _labels_hash(keys, y)
            fitted = fit_classifier(self.model, feats, y, keys, path, training_data_hash=data_hash,
                                    val_fraction=self.cfg.val_fraction, seed=self.cfg.seed,
                                    target_precision=self.cfg.target_precision, source="labeled items with features",
                                    extra={"labeling_round": rnd, "labeling_db": str(self.store.path),
                                           "demo": self.demo})
            head_result, version = fitted.result, fitted.version
            train_seconds = time.perf_counter() - t0
            with self._state_lock:
                self.head_result, self.model_version, self.checkpoint_path = head_result, str(version), path
            n_scored, rescore_seconds = self.rescore_pool()
            metrics = dict(head_result.metrics)
            metrics.update(self._random_share_metrics(head_result, keys, feats, y))
            self.review_keys = self.likely_label_errors(head_result)
            self.store.set_meta("review_keys", json.dumps(self.review_keys))
            metrics["n_review"] = len(self.review_keys)
            metrics.update(train_seconds=round(train_seconds, 3), rescore_seconds=round(rescore_seconds, 3),
                           n_scored=n_scored, checkpoint=str(path), training_data_hash=data_hash,
                           threshold=self.threshold)
            metrics = jsonable(metrics)
            rnd = self.store.add_round(metrics, str(version), n_labels)
            self.last_error = None
            log.info("retrain round %d: %d labels (%d train, %d held out%s), accuracy %s, ROC-AUC %s, "
                     "accuracy on random share %s; %d rescored in %.1f s (train %.1f s); model %s, checkpoint %s",
                     rnd, n_labels, metrics.get("n_train") or 0, metrics.get("n_val") or 0,
                     "; too few for a firm figure" if (metrics.get("n_val") or 0) < MIN_HELD_OUT else "",
                     _fmt(metrics.get("accuracy")), _fmt(metrics.get("roc_auc")),
                     _fmt(metrics.get("accuracy_random")), n_scored, rescore_seconds, train_seconds, version, path)
            return rnd
        finally:
            self.retraining = False

    def likely_label_errors(self, head_result) -> list[str]:
        """Held-out keys whose calibrated score contradicts their label by ``review_margin`` or more, worst first.

        Only held-out predictions are used: they are out-of-sample, as confident-learning methods require
        (cleanlab's ``pred_probs`` "must be out-of-sample"); training-split predictions would mostly agree with
        the labels they were fitted to.
        """
        keys = list(getattr(head_result, "val_keys", None) or [])
        logits, labels = getattr(head_result, "val_logits", None), getattr(head_result, "val_labels", None)
        if not keys or logits is None or labels is None:
            return []
        p = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / float(head_result.temperature)))
        gap = np.abs(p - np.asarray(labels, dtype=np.float64))
        order = np.argsort(-gap, kind="stable")
        return [keys[i] for i in order if gap[i] >= self.cfg.review_margin]

    def _random_share_metrics(self, head_result, keys: list[str], feats: np.ndarray, y: np.ndarray) -> dict:
        """Accuracy / ROC-AUC on the held-out keys that were drawn by the uniform random share.

        The whole held-out split inherits the sampler's bias towards the boundary; its random-share part does not,
        so these two numbers estimate accuracy on the pool itself (None until there are enough such labels).
        """
        from classifier.calibration import roc_auc
        from classifier.head import predict_proba

        val = set(getattr(head_result, "val_keys", None) or [])
        random_keys = {r["key"] for r in self.store.labels() if r["reason"] == RANDOM}
        idx = [i for i, k in enumerate(keys) if k in val and k in random_keys]
        out = {"n_val_random": len(idx), "accuracy_random": None, "roc_auc_random": None}
        if len(idx) >= 5:
            p = predict_proba(head_result, feats[idx])
            out["accuracy_random"] = float(((p >= self.cfg.decision_threshold) == y[idx]).mean())
            if len(set(y[idx].tolist())) == 2:
                out["roc_auc_random"] = float(roc_auc(p, y[idx]))
        return out

    def export_checkpoint(self, path: str | Path) -> str:
        """Save the current head with the backbone as a classifier checkpoint the pipeline accepts."""
        from classifier.checkpoint import save_classifier

        if self.head_result is None:
            raise ValueError("no head has been trained yet: label both classes, then retrain")
        cons = self.store.consensus()
        keys = sorted(cons)
        return str(save_classifier(Path(path), self.model, self.head_result,
                                   training_data_hash=_labels_hash(keys, [cons[k] for k in keys]),
                                   extra={"labeling_db": str(self.store.path), "round": self.store.current_round(),
                                          "demo": self.demo}))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _labels_hash(keys, y) -> str:
    h = hashlib.sha256()
    for k, v in zip(keys, y):
        h.update(f"{k}\t{int(v)}\n".encode())
    return h.hexdigest()
