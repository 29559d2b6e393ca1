"""Classifier training: labelled images -> cached features -> head (optionally fine-tuned trunks) -> checkpoint.

:func:`fit_classifier` is the one place a head is fitted on features and saved as a checkpoint: the training
command (:func:`train_classifier`), the labeling session's retrain rounds (``classifier.labeling.active``) and the
demo classifier (``classifier.demo``) all call it, so all three guard the split with :func:`check_split`.

Images come from WebDataset shards (member names ``<key>.<ext>``, read through ``core.shards``) or from a folder
of image files (by relative ``path`` or by file stem = key). Features are cached under ``<out>/features`` unless
``feature_cache`` names another folder; the input folder is never written to. A model of test size (``test_*``)
gives a checkpoint marked ``demo`` and ``test_size_model``, so every consumer shows it as a demonstration classifier.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifier.labels import TrainDataError, read_label_db, read_label_file
from core.config import ConfigError, to_dict
from core.device import resolve_device
from core.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

# A held-out figure (accuracy, ROC-AUC, ECE) from fewer labels than this is reported with a caveat.
MIN_HELD_OUT = 20


@dataclass
class TrainClassifierConfig:
    """Options of ``bbst train-classifier`` (YAML via --config, flags and --set override)."""

    labels: str | None = None  # Parquet/CSV of decisions: key|path, label (stylistic/not_stylistic/skip or 1/0), annotator, time
    labels_db: str | None = None  # labeling-session SQLite database (table labels(key, label, annotator, created_at, ...))
    images: str | None = None  # folder holding WebDataset shards (*.tar, searched recursively) or image files
    out: str = "runs/classifier"  # output folder: checkpoint/, report/, summary.json
    model: str = "bbst_vitb16_clip"  # registered classifier architecture (classifier.factory.list_classifiers())
    weights: str | None = None  # content/shared trunk weights: a local file, or "cache" to search the local caches
    style_weights: str | None = None  # style trunk weights of a two-trunk model (file or "cache")
    feature_cache: str | None = None  # feature cache root; default <out>/features (one subfolder per model)
    finetune_blocks: int = 0  # also fine-tune the last N blocks of every trunk (0 = frozen trunks, head only)
    finetune_epochs: int = 2  # passes over the training images when fine-tuning
    finetune_lr: float = 1e-5  # learning rate of the fine-tuned blocks (the head uses 10x)
    epochs: int = 300  # maximum head epochs (early stopping on the held-out loss usually ends sooner)
    patience: int = 20  # head epochs without held-out improvement before stopping
    seed: int = 0  # seed of the split, the head initialisation and the data order
    val_fraction: float = 0.2  # share of keys held out for early stopping, calibration, thresholds and the report
    target_precision: float = 0.95  # precision each subset threshold must reach on the held-out split
    batch_size: int = 32  # images per backbone forward
    num_threads: int = 2  # decode threads and torch intra-op threads
    device: str | None = None  # "cpu", "cuda", ...; None = cuda when available
    skip_missing: bool = False  # labelled keys without a (decodable) image are listed and skipped instead of an error
    report: bool = True  # write the evaluation report (metrics, plots, confident mistakes)


@dataclass
class FittedClassifier:
    """What :func:`fit_classifier` saved: the head with its calibration, the checkpoint's version and folder."""

    result: object  # classifier.head.HeadResult
    version: str  # the checkpoint's version (bbst-clf-<hash8> or demo-<hash8>)
    path: Path  # the checkpoint folder
    warnings: list[str] = field(default_factory=list)  # held-out figures that will be undefined or rough


# ----------------------------------------------------------------------------------------------- the split
def check_split(keys: list[str], y: np.ndarray, val_fraction: float, seed: int, source) -> list[str]:
    """Refuse a split the head cannot be trained on; return warnings when held-out figures will be undefined or
    rough: a held-out side without examples of a class, or fewer than :data:`MIN_HELD_OUT` held-out labels."""
    from classifier.head import split_by_key

    is_val = split_by_key(keys, val_fraction, seed)
    n_val = int(is_val.sum())
    if n_val == 0 or n_val == len(keys):
        raise TrainDataError(f"{source}: {len(keys)} labelled images leave the {'held-out' if n_val == 0 else 'training'} "
                             f"split empty at val_fraction={val_fraction}; label more images or change --val-fraction")
    names = {1: "stylistic", 0: "not-stylistic"}
    for cls, name in names.items():
        if not (y[~is_val] == cls).any():
            raise TrainDataError(f"{source}: the training split has no {name} examples ({len(keys) - n_val} training "
                                 "labels); label some of both classes")
    warnings = []
    for cls, name in names.items():
        if not (y[is_val] == cls).any():
            warnings.append(f"the held-out split ({n_val} labels) has no {name} examples: ROC-AUC is undefined "
                            "(reported as null) and the thresholds are not checked on that class; label more or "
                            "raise --val-fraction")
    if n_val < MIN_HELD_OUT:
        warnings.append(f"only {n_val} held-out labels (fewer than {MIN_HELD_OUT}): accuracy, ROC-AUC and "
                        "calibration figures are rough")
    return warnings


# ----------------------------------------------------------------------------------------------- fitting
def fit_classifier(model, features: np.ndarray, labels: np.ndarray, keys: list[str], out: str | Path, *,
                   training_data_hash: str, val_fraction: float = 0.2, seed: int = 0, target_precision: float = 0.95,
                   max_epochs: int = 300, patience: int = 20, extra: dict | None = None, source: str = "labels",
                   refine: Callable[[object, np.ndarray], np.ndarray] | None = None) -> FittedClassifier:
    """Check the split, fit ``model``'s head on ``features``, save ``model`` with it as a checkpoint in ``out``.

    The head's shape comes from the model config, so the checkpoint reloads as the same network. ``refine``, when
    given, is called as ``refine(model, is_val)`` with the fitted head in place; it fine-tunes the model on the
    training keys and returns the new features, on which the head is fitted again. ``extra`` goes into the
    checkpoint's config (``"demo": True`` marks a demonstration classifier).
    """
    from classifier.checkpoint import save_classifier
    from classifier.head import split_by_key, train_head

    labels = np.asarray(labels, dtype=np.int64)
    warnings = check_split(keys, labels, val_fraction, seed, source)
    head_kwargs = {"val_fraction": val_fraction, "seed": seed, "target_precision": target_precision,
                   "max_epochs": max_epochs, "patience": patience, "hidden": model.cfg.head.hidden,
                   "dropout": model.cfg.head.dropout}
    result = train_head(features, labels, keys, **head_kwargs)
    if refine is not None:
        model.head = result.head
        features = refine(model, split_by_key(keys, val_fraction, seed))
        result = train_head(features, labels, keys, head=model.head, **head_kwargs)
    version = save_classifier(out, model, result, training_data_hash=training_data_hash, extra=extra)
    return FittedClassifier(result, version, Path(out), warnings)


def finetune(model, images: list[bytes], labels: np.ndarray, cfg: TrainClassifierConfig, device) -> None:
    """Train the head together with the last ``finetune_blocks`` blocks on decoded images (training keys only)."""
    import torch
    import torch.nn.functional as F

    from classifier.transforms import ImageTransform

    params = model.set_trainable(cfg.finetune_blocks)
    head_params = {id(p) for p in model.head.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in head_params], "lr": cfg.finetune_lr},
        {"params": [p for p in params if id(p) in head_params], "lr": cfg.finetune_lr * 10},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    transform = ImageTransform(model.cfg.preprocess)
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    pos_weight = torch.tensor(float((1 - labels).sum()) / max(float(labels.sum()), 1.0), device=device)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    model.head.eval()  # keep the head's dropout off: its statistics were fitted on frozen features
    for epoch in range(cfg.finetune_epochs):
        perm = torch.randperm(len(images), generator=gen).tolist()
        total = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            batch, errors = transform.batch([images[i] for i in idx], num_threads=cfg.num_threads)
            if any(errors):
                raise TrainDataError(f"undecodable image during fine-tuning: {next(e for e in errors if e)}")
            x = transform.normalize(batch.to(device))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x).float()
            loss = F.binary_cross_entropy_with_logits(logits, y_all[idx].to(device), pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log.info("fine-tune epoch %d: loss %.4f", epoch, total / max(1, len(images)))
    model.requires_grad_(False)
    model.eval()


# ----------------------------------------------------------------------------------------------- images
def load_images(root: str | Path, keys: set[str], paths: dict[str, str]) -> dict[str, bytes]:
    """Bytes of the labelled images: from WebDataset shards (member ``<key>.<ext>``) or a folder of files."""
    root = Path(root)
    if not root.exists():
        raise TrainDataError(f"{root}: image folder not found")
    out: dict[str, bytes] = {}
    shards = [root] if root.is_file() and root.suffix == ".tar" else sorted(root.rglob("*.tar")) if root.is_dir() else []
    if shards:
        from core.shards import ShardFormatError, index_shard, read_member

        for shard in shards:
            try:
                for sample in index_shard(str(shard)):
                    if sample.key not in keys or sample.key in out:
                        continue
                    image = sample.image()
                    if image is not None:
                        out[sample.key] = read_member(image[1])
            except ShardFormatError as exc:
                raise TrainDataError(str(exc)) from exc
        return out
    by_stem: dict[str, Path] | None = None
    for key in keys:
        if key in paths:
            p = Path(paths[key])
            p = p if p.is_absolute() else root / p
            if p.is_file():
                out[key] = p.read_bytes()
            continue
        if by_stem is None:
            by_stem = {f.stem: f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()}
        if key in by_stem:
            out[key] = by_stem[key].read_bytes()
    return out


def usable_images(cfg: TrainClassifierConfig, labels: dict[str, int], paths: dict[str, str], source: str,
                  out: Path) -> tuple[list[str], list[bytes], dict[str, str]]:
    """``(keys, image bytes, skipped)`` of the labelled keys whose image exists and decodes.

    A key without one is an error naming it, or with ``skip_missing`` is listed in ``out/skipped.json``.
    """
    from classifier.factory import get_classifier_config
    from classifier.transforms import ImageDecodeError, ImageTransform

    images = load_images(cfg.images, set(labels), paths)
    transform = ImageTransform(get_classifier_config(cfg.model).preprocess)
    skipped: dict[str, str] = {k: "no image found" for k in labels if k not in images}
    for k, data in images.items():
        try:
            transform.decode(data)
        except ImageDecodeError as exc:
            skipped[k] = str(exc)
    if skipped and not cfg.skip_missing:
        first = list(skipped.items())[:5]
        raise TrainDataError(f"{len(skipped)} labelled keys from {source} have no usable image under {cfg.images} "
                             f"(first: {first}); fix the data or pass --skip-missing")
    if skipped:
        (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
        log.warning("skipping %d labelled keys without a usable image (listed in %s)", len(skipped), out / "skipped.json")
    keys = sorted(k for k in labels if k not in skipped)
    return keys, [images[k] for k in keys], skipped


# ----------------------------------------------------------------------------------------------- the command
def train_classifier(cfg: TrainClassifierConfig) -> dict:
    """Labels + images -> features -> head (+ fine-tuning) -> checkpoint, report and ``summary.json`` in ``cfg.out``.

    Returns the summary (version, checkpoint, metrics, thresholds, warnings, timings).
    """
    import torch

    from classifier.checkpoint import data_hash
    from classifier.factory import create_classifier
    from classifier.features import FeatureCache, cached_features, feature_fingerprint, sha256_bytes

    t0 = time.monotonic()
    if bool(cfg.labels) == bool(cfg.labels_db):
        raise ConfigError("give exactly one of labels (Parquet/CSV file) or labels_db (labeling database)")
    if not cfg.images:
        raise ConfigError("images: the folder with the labelled images (WebDataset shards or image files) is required")
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    labels, paths = (read_label_db(cfg.labels_db), {}) if cfg.labels_db else read_label_file(cfg.labels)
    source = cfg.labels_db or cfg.labels
    if not labels:
        raise TrainDataError(f"{source}: no usable labels (only skips or ties?)")
    keys, blobs, skipped = usable_images(cfg, labels, paths, source, out)
    y = np.array([labels[k] for k in keys], dtype=np.int64)
    shas = [sha256_bytes(b) for b in blobs]
    log.info("%d labelled images (%d stylistic, %d not)", len(keys), int(y.sum()), int(len(y) - y.sum()))

    if cfg.weights is None and not cfg.model.startswith("test_"):
        log.warning("model %s has random-init trunks (no --weights): the classifier will be near useless; see "
                    "docs/classifier.md for where real backbone weights go", cfg.model)
    model = create_classifier(cfg.model, weights=cfg.weights, style_weights=cfg.style_weights).to(device).eval()
    cache_root = Path(cfg.feature_cache) if cfg.feature_cache else out / "features"

    def features_of(m) -> np.ndarray:  # cached by sha256 under a folder per model fingerprint
        fp = feature_fingerprint(m)
        cache = FeatureCache(cache_root / f"{cfg.model}-{fp}", fingerprint=fp)
        return cached_features(m, blobs, cache, batch_size=cfg.batch_size, num_threads=cfg.num_threads, sha256s=shas)

    def refine(m, is_val: np.ndarray) -> np.ndarray:
        finetune(m, [b for b, v in zip(blobs, is_val) if not v], y[~is_val], cfg, device)
        return features_of(m)

    check_split(keys, y, cfg.val_fraction, cfg.seed, source)  # refuse a bad split before the feature pass
    t_feat = time.monotonic()
    feats = features_of(model)
    feat_seconds = time.monotonic() - t_feat
    test_size = cfg.model.startswith("test_")
    if test_size:
        log.warning("model %s is a test-size network: its checkpoint is marked demo (for tests and demos only)",
                    cfg.model)
    fitted = fit_classifier(
        model, feats, y, keys, out / "checkpoint", training_data_hash=data_hash(zip(shas, y)),
        val_fraction=cfg.val_fraction, seed=cfg.seed, target_precision=cfg.target_precision, max_epochs=cfg.epochs,
        patience=cfg.patience, source=str(source), refine=refine if cfg.finetune_blocks > 0 else None,
        extra={"labels": str(source), "images": str(cfg.images), "n_labels": len(keys),
               "finetune_blocks": cfg.finetune_blocks, "train_config": to_dict(cfg), "demo": test_size,
               "test_size_model": test_size})
    for w in fitted.warnings:
        log.warning("%s", w)
    result = fitted.result
    summary = {"version": fitted.version, "checkpoint": str(fitted.path), "metrics": result.metrics,
               "thresholds": result.thresholds, "temperature": result.temperature, "n_skipped": len(skipped),
               "test_size_model": test_size, "warnings": fitted.warnings,
               "feature_seconds": round(feat_seconds, 2), "seconds": round(time.monotonic() - t0, 2)}
    if cfg.report and result.val_logits is not None and len(result.val_keys):
        summary["report"] = str(write_training_report(out / "report", result, fitted.version, dict(zip(keys, blobs))))
    (out / "summary.json").write_text(json_text(summary))
    log.info("classifier %s: accuracy %.3f, ROC-AUC %s, ECE %.4f -> %.4f; saved to %s", fitted.version,
             result.metrics["accuracy"], result.metrics["roc_auc"], result.metrics["ece_before"],
             result.metrics["ece_after"], fitted.path)
    return summary


def write_training_report(folder: Path, result, version: str, images: dict[str, bytes]) -> Path:
    """The evaluation report of a fitted head on its held-out split; returns the path of ``report.md``."""
    from classifier.calibration import sigmoid
    from classifier.evaluate import PAPER_REFERENCE, write_report

    write_report(folder, keys=result.val_keys, labels=result.val_labels,
                 probs=sigmoid(result.val_logits / result.temperature), probs_uncalibrated=sigmoid(result.val_logits),
                 thresholds=result.thresholds, version=version, image_lookup=images.get, reference=PAPER_REFERENCE)
    return folder / "report.md"


def json_text(obj) -> str:
    """Strict JSON (no ``NaN``/``Infinity`` tokens, which most JSON readers reject)."""
    from classifier.checkpoint import jsonable

    return json.dumps(jsonable(obj), indent=2, allow_nan=False, default=lambda v: None)
