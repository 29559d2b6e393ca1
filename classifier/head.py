"""Training the fusion head on cached features: split by key, class balance, early stopping, calibration, thresholds."""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from classifier.calibration import (
    calibrated,
    expected_calibration_error,
    fit_temperature,
    precision_recall_at,
    roc_auc,
    select_thresholds,
    sigmoid,
)
from classifier.model import FusionHead

log = logging.getLogger(__name__)


@dataclass
class HeadResult:
    """A trained head and everything needed to turn its logits into calibrated, thresholded scores."""

    head: FusionHead  # features -> logit
    temperature: float = 1.0  # calibrated P = sigmoid(logit / temperature)
    thresholds: dict = field(default_factory=lambda: {"style": 0.5, "content": 0.5})  # style: >=, content: <=
    metrics: dict = field(default_factory=dict)  # held-out metrics (accuracy, roc_auc, ece_before, ece_after, ...)
    val_keys: list[str] = field(default_factory=list)  # keys of the held-out split (for the evaluation report)
    val_logits: np.ndarray | None = None  # raw held-out logits, aligned with val_keys
    val_labels: np.ndarray | None = None  # held-out labels, aligned with val_keys


def split_by_key(keys, val_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean "is validation" mask; a key's side depends only on (key, seed), so retraining keeps the split."""
    out = np.empty(len(keys), dtype=bool)
    for i, k in enumerate(keys):
        h = hashlib.sha256(f"{seed}:{k}".encode()).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2**64 < val_fraction
    return out


@torch.no_grad()
def head_logits(head: torch.nn.Module, features: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Raw logits of a head over a feature matrix, in eval mode, on the CPU."""
    head.eval()
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    out = [head(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def predict_proba(head_result: HeadResult, features: np.ndarray) -> np.ndarray:
    """Calibrated P(stylistic) of cached feature vectors (float64)."""
    with torch.inference_mode():
        return calibrated(head_logits(head_result.head, features), head_result.temperature)


def train_head(features: np.ndarray, labels: np.ndarray, keys, *, val_fraction: float = 0.2, seed: int = 0,
               target_precision: float = 0.95, max_epochs: int = 300, patience: int = 20, lr: float = 1e-2,
               weight_decay: float = 1e-3, batch_size: int = 256, hidden: int = 256, dropout: float = 0.1,
               head: FusionHead | None = None, num_threads: int | None = 1) -> HeadResult:
    """Train a :class:`FusionHead` on frozen features and calibrate it on a held-out split by key.

    Class balance: the positive class weight is n_neg / n_pos. Early stopping: the epoch with the lowest
    held-out (balanced) loss is kept, training stops ``patience`` epochs after it. Then a temperature is fitted
    on the held-out logits and thresholds are chosen to reach ``target_precision`` on each side. Pass ``head``
    to continue from an existing one (its architecture is reused). ``num_threads`` caps torch's intra-op
    threads while training (restored afterwards): a head's matrices are small, and extra threads only add
    synchronisation overhead, several times slower on a busy machine; None leaves the setting alone.
    """
    previous_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        return _train_head(features, labels, keys, val_fraction=val_fraction, seed=seed,
                           target_precision=target_precision, max_epochs=max_epochs, patience=patience, lr=lr,
                           weight_decay=weight_decay, batch_size=batch_size, hidden=hidden, dropout=dropout, head=head)
    finally:
        torch.set_num_threads(previous_threads)


def _train_head(features, labels, keys, *, val_fraction, seed, target_precision, max_epochs, patience, lr,
                weight_decay, batch_size, hidden, dropout, head) -> HeadResult:
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    keys = [str(k) for k in keys]
    if features.ndim != 2 or len(features) != len(labels) or len(labels) != len(keys):
        raise ValueError(f"features {features.shape}, labels {labels.shape}, keys {len(keys)} do not line up")
    if not set(np.unique(labels)) <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(labels).tolist()))}")
    is_val = split_by_key(keys, val_fraction, seed)
    if is_val.all() or not is_val.any():
        raise ValueError(f"{len(keys)} keys give an empty train or validation split at val_fraction={val_fraction}")
    tr, va = ~is_val, is_val
    if len(np.unique(labels[tr])) < 2:
        raise ValueError("the training split holds only one class; label some examples of both classes")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = torch.from_numpy(features[tr]), torch.from_numpy(labels[tr]).float()
    x_va, y_va = torch.from_numpy(features[va]), torch.from_numpy(labels[va]).float()
    if head is None:
        head = FusionHead(features.shape[1], hidden, dropout)
    else:
        head = copy.deepcopy(head)
    head.requires_grad_(True)  # a head taken from a frozen model arrives with gradients off
    head.set_standardization(x_tr)
    n_pos, n_neg = float(y_tr.sum()), float(len(y_tr) - y_tr.sum())
    pos_weight = torch.tensor(n_neg / max(n_pos, 1.0))
    # the validation loss uses the same weighting so "best" means best balanced loss, not majority-class fit
    va_pos, va_neg = float(y_va.sum()), float(len(y_va) - y_va.sum())
    va_pos_weight = torch.tensor(va_neg / va_pos) if va_pos and va_neg else torch.tensor(1.0)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = (float("inf"), copy.deepcopy(head.state_dict()), 0)
    for epoch in range(max_epochs):
        head.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.binary_cross_entropy_with_logits(head(x_tr[idx]), y_tr[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            val_loss = float(F.binary_cross_entropy_with_logits(head(x_va), y_va, pos_weight=va_pos_weight))
        if val_loss < best[0] - 1e-5:
            best = (val_loss, copy.deepcopy(head.state_dict()), epoch)
        elif epoch - best[2] >= patience:
            break
    head.load_state_dict(best[1])
    head.eval()
    val_logits = head_logits(head, features[va])
    val_labels = labels[va]
    temperature = fit_temperature(val_logits, val_labels)
    p_before = sigmoid(val_logits)
    p_after = sigmoid(val_logits / temperature)
    thresholds = select_thresholds(p_after, val_labels, target_precision)
    metrics = {
        "accuracy": float(((p_after >= 0.5) == val_labels).mean()),
        "roc_auc": roc_auc(p_after, val_labels),
        "ece_before": expected_calibration_error(p_before, val_labels),
        "ece_after": expected_calibration_error(p_after, val_labels),
        "n_train": int(tr.sum()),
        "n_val": int(va.sum()),
        "n_train_pos": int(n_pos),
        "n_val_pos": int(va_pos),
        "best_epoch": int(best[2]),
        "val_loss": float(best[0]),
        "temperature": float(temperature),
        **precision_recall_at(p_after, val_labels, thresholds),
    }
    log.info("head trained: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return HeadResult(head=head, temperature=temperature, thresholds=thresholds, metrics=metrics,
                      val_keys=[k for k, v in zip(keys, va) if v], val_logits=val_logits, val_labels=val_labels)
