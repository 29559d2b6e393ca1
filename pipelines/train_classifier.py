"""Train the stylistic classifier from labels and images: cached features, head, calibration, report, checkpoint.

    python pipelines/train_classifier.py --labels labels.parquet --images DIR/shards --out runs/clf \\
        --model bbst_vitb16_clip --weights cache

Labels come from a Parquet/CSV file (columns ``key`` or ``path``, ``label``, optional ``annotator`` and
``time``/``created_at``) or from a labeling-session database (``--labels-db``, see ``classifier.labeling.store``).
Several decisions on one image are resolved like the labeling app does: each annotator's latest decision
counts, the majority wins, ties and skips are left out. Images come from WebDataset shards (member names
``<key>.<ext>``, read through ``curate.shards``) or from a folder of image files (by relative ``path`` or by file
stem = key). Features are cached under ``<out>/features`` unless ``--feature-cache`` names another folder; the
input folder is never written to. A model of test size (``test_*``) gives a checkpoint marked ``demo`` and
``test_size_model``, so every consumer shows it as a demonstration classifier.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/train_classifier.py` without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from curate.cli import error_boundary
from curate.config import ConfigError, to_dict
from curate.errors import BbstError

log = logging.getLogger("train_classifier")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class TrainClassifierConfig:
    """Options of pipelines/train_classifier.py (YAML via --config, flags and --set override)."""

    labels: str | None = None  # Parquet/CSV of decisions: key|path, label (stylistic/not_stylistic/skip or 1/0), annotator, time
    labels_db: str | None = None  # labeling-session SQLite database (table labels(key, label, annotator, created_at, ...))
    images: str | None = None  # folder holding WebDataset shards (*.tar, searched recursively) or image files
    out: str = "runs/classifier"  # output folder: checkpoint/, report/, summary.json
    model: str = "bbst_vitb16_clip"  # registered classifier architecture (classifier.factory.list_models())
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


class TrainDataError(BbstError, ValueError):
    """Labels or images that cannot be used, with the file and the first offending rows named."""


# ----------------------------------------------------------------------------------------------- labels
def read_label_file(path: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """``({key: 0/1}, {key: path})`` from a Parquet/CSV decision file, resolved to one label per key."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from classifier.labeling.store import _parse_label

    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: label file not found")
    try:
        table = pq.read_table(path) if path.suffix.lower() == ".parquet" else pacsv.read_csv(path)
    except Exception as exc:
        raise TrainDataError(f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: {exc}") from exc
    cols = table.column_names
    if "label" not in cols or not ({"key", "path"} & set(cols)):
        raise TrainDataError(f"{path}: needs a 'label' column and a 'key' or 'path' column, found {cols}")
    time_col = next((c for c in ("time", "created_at") if c in cols), None)
    if time_col:  # "latest decision" means latest in time, whatever the file order
        table = table.take(pc.sort_indices(table, sort_keys=[(time_col, "ascending")]))
    rows = []
    paths: dict[str, str] = {}
    for i, r in enumerate(table.to_pylist()):
        key = r.get("key") if r.get("key") not in (None, "") else r.get("path")
        label = _parse_label(r.get("label"))
        if key in (None, "") or label is None:
            raise TrainDataError(f"{path}: row {i + 1}: bad key/label ({key!r}, {r.get('label')!r}); label must be "
                                 "stylistic/not_stylistic/skip or 1/0")
        key = str(key)
        if r.get("path"):
            paths[key] = str(r["path"])
        rows.append({"key": key, "label": label, "annotator": str(r.get("annotator") or "file"), "source": "import"})
    return _consensus(rows), paths


def _consensus(rows: list[dict]) -> dict[str, int]:
    """The labeling store's resolution rule (latest per annotator, majority, ties out), applied to file rows."""
    from classifier.labeling.store import LabelStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore(Path(tmp) / "labels.sqlite")
        try:
            store.add_labels(rows)
            return store.consensus()
        finally:
            store.close()


def read_label_db(path: str | Path) -> dict[str, int]:
    """Consensus labels of a labeling-session database."""
    from classifier.labeling.store import LabelStore

    path = Path(path)
    if not path.is_file():
        raise TrainDataError(f"{path}: labeling database not found")
    store = LabelStore(path)
    try:
        return store.consensus()
    finally:
        store.close()


# ----------------------------------------------------------------------------------------------- images
def _shards(root: Path) -> list[Path]:
    if root.is_file() and root.suffix == ".tar":
        return [root]
    return sorted(root.rglob("*.tar")) if root.is_dir() else []


def load_images(root: str | Path, keys: set[str], paths: dict[str, str]) -> dict[str, bytes]:
    """Bytes of the labelled images: from WebDataset shards (member ``<key>.<ext>``) or a folder of files."""
    root = Path(root)
    if not root.exists():
        raise TrainDataError(f"{root}: image folder not found")
    out: dict[str, bytes] = {}
    shards = _shards(root)
    if shards:
        from curate.shards import ShardFormatError, index_shard, read_member

        for shard in shards:
            try:
                for sample in index_shard(str(shard)):
                    if sample.key not in keys or sample.key in out:
                        continue
                    image = sample.image() or next(((e, r) for e, r in sample.members.items()
                                                    if "." + e in IMAGE_EXTS), None)
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
            by_stem = {f.stem: f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()}
        if key in by_stem:
            out[key] = by_stem[key].read_bytes()
    return out


# ----------------------------------------------------------------------------------------------- fine-tuning
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


# ----------------------------------------------------------------------------------------------- main
EXAMPLES = (
    ("bbst train-classifier --labels labels.parquet --images RUN/shards --out runs/clf --weights cache",
     "labels from a file (key,label), images from a curation run's shards; backbone weights from the local caches"),
    ("bbst train-classifier --labels-db labels.sqlite --images RUN/shards --out runs/clf2 --weights cache",
     "the decisions of a `bbst label` session"),
    ("bbst train-classifier --labels labels.csv --images imgs/ --model test_vit_shared --out runs/smoke",
     "a smoke run: a tiny random-init test model on a folder of images (no weights needed; useless scores)"),
)


def build_parser() -> argparse.ArgumentParser:
    from curate.cli import ConfigFlags, add_config_file_flags, make_parser

    p = make_parser("train-classifier", __doc__.split("\n\n")[0], EXAMPLES)
    add_config_file_flags(p, "TrainClassifierConfig", "val_fraction=0.25")
    flags = ConfigFlags(TrainClassifierConfig)
    flags.add_all(p)  # every option of the dataclass, help from its one-line comment
    p.set_defaults(config_flags=flags)
    return p


def parse_args(argv: list[str] | None) -> TrainClassifierConfig:
    from curate.cli import load_args

    args = build_parser().parse_args(argv)
    return load_args(TrainClassifierConfig, args, args.config_flags)


def run(cfg: TrainClassifierConfig) -> dict:
    import torch

    from classifier.calibration import sigmoid
    from classifier.checkpoint import data_hash, save_classifier
    from classifier.evaluate import PAPER_REFERENCE, write_report
    from classifier.factory import create_model
    from classifier.features import FeatureCache, cached_features, feature_fingerprint, sha256_bytes
    from classifier.head import train_head
    from classifier.transforms import ImageDecodeError, ImageTransform

    t0 = time.monotonic()
    if bool(cfg.labels) == bool(cfg.labels_db):
        raise ConfigError("give exactly one of labels (Parquet/CSV file) or labels_db (labeling database)")
    if not cfg.images:
        raise ConfigError("images: the folder with the labelled images (WebDataset shards or image files) is required")
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    # data: one label per key, the bytes of every labelled image
    paths: dict[str, str] = {}
    labels = read_label_db(cfg.labels_db) if cfg.labels_db else None
    if labels is None:
        labels, paths = read_label_file(cfg.labels)
    source = cfg.labels_db or cfg.labels
    if not labels:
        raise TrainDataError(f"{source}: no usable labels (only skips or ties?)")
    images = load_images(cfg.images, set(labels), paths)
    transform = ImageTransform(create_model_cfg(cfg.model).preprocess)
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
    keys = sorted(k for k in labels if k not in skipped)
    if skipped:
        (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
        log.warning("skipping %d labelled keys without a usable image (listed in %s)", len(skipped), out / "skipped.json")
    y = np.array([labels[k] for k in keys], dtype=np.int64)
    blobs = [images[k] for k in keys]
    shas = [sha256_bytes(b) for b in blobs]
    log.info("%d labelled images (%d stylistic, %d not)", len(keys), int(y.sum()), int(len(y) - y.sum()))

    # model and frozen features (cached by sha256 under a folder per model fingerprint)
    if cfg.weights is None and not cfg.model.startswith("test_"):
        log.warning("model %s has random-init trunks (no --weights): the classifier will be near useless; see "
                    "docs/classifier.md for where real backbone weights go", cfg.model)
    model = create_model(cfg.model, weights=cfg.weights, style_weights=cfg.style_weights).to(device).eval()
    cache_root = Path(cfg.feature_cache) if cfg.feature_cache else out / "features"

    def features_of(m):
        fp = feature_fingerprint(m)
        cache = FeatureCache(cache_root / f"{cfg.model}-{fp}", fingerprint=fp)
        return cached_features(m, blobs, cache, batch_size=cfg.batch_size, num_threads=cfg.num_threads, sha256s=shas)

    warnings = check_split(keys, y, cfg.val_fraction, cfg.seed, source)
    t_feat = time.monotonic()
    feats = features_of(model)
    feat_seconds = time.monotonic() - t_feat
    head_kwargs = {"val_fraction": cfg.val_fraction, "seed": cfg.seed, "target_precision": cfg.target_precision,
                       "max_epochs": cfg.epochs, "patience": cfg.patience, "hidden": model.cfg.head.hidden,
                       "dropout": model.cfg.head.dropout}
    result = train_head(feats, y, keys, **head_kwargs)
    if cfg.finetune_blocks > 0:
        from classifier.head import split_by_key

        is_val = split_by_key(keys, cfg.val_fraction, cfg.seed)
        model.head = result.head
        finetune(model, [b for b, v in zip(blobs, is_val) if not v], y[~is_val], cfg, device)
        feats = features_of(model)
        result = train_head(feats, y, keys, head=model.head, **head_kwargs)

    test_size = cfg.model.startswith("test_")
    if test_size:
        log.warning("model %s is a test-size network: its checkpoint is marked demo (for tests and demos only)",
                    cfg.model)
    version = save_classifier(out / "checkpoint", model, result, training_data_hash=data_hash(zip(shas, y)),
                              extra={"labels": str(source), "images": str(cfg.images), "n_labels": len(keys),
                                     "finetune_blocks": cfg.finetune_blocks, "train_config": to_dict(cfg),
                                     "demo": test_size, "test_size_model": test_size})
    summary = {"version": version, "checkpoint": str(out / "checkpoint"), "metrics": result.metrics,
               "thresholds": result.thresholds, "temperature": result.temperature, "n_skipped": len(skipped),
               "test_size_model": test_size, "warnings": warnings,
               "feature_seconds": round(feat_seconds, 2), "seconds": round(time.monotonic() - t0, 2)}
    if cfg.report and result.val_logits is not None and len(result.val_keys):
        by_key = dict(zip(keys, blobs))
        write_report(out / "report", keys=result.val_keys, labels=result.val_labels,
                     probs=sigmoid(result.val_logits / result.temperature), probs_uncalibrated=sigmoid(result.val_logits),
                     thresholds=result.thresholds, version=version, image_lookup=by_key.get,
                     reference=PAPER_REFERENCE)
        summary["report"] = str(out / "report" / "report.md")
    (out / "summary.json").write_text(json_text(summary))
    log.info("classifier %s: accuracy %.3f, ROC-AUC %s, ECE %.4f -> %.4f; saved to %s", version,
             result.metrics["accuracy"], result.metrics["roc_auc"], result.metrics["ece_before"],
             result.metrics["ece_after"], out / "checkpoint")
    return summary


def check_split(keys: list[str], y: np.ndarray, val_fraction: float, seed: int, source) -> list[str]:
    """Refuse a split the head cannot be trained on; warn (and return the warnings) when held-out figures will be
    undefined or rough: a held-out side without examples of a class, or fewer than 20 held-out labels."""
    from classifier.head import split_by_key
    from classifier.labeling.active import MIN_HELD_OUT

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
    for w in warnings:
        log.warning("%s", w)
    return warnings


def json_text(obj) -> str:
    """Strict JSON (no ``NaN``/``Infinity`` tokens, which most JSON readers reject)."""
    from classifier.checkpoint import jsonable

    return json.dumps(jsonable(obj), indent=2, allow_nan=False, default=lambda v: None)


def create_model_cfg(name: str):
    from classifier.factory import get_model_config

    return get_model_config(name)


@error_boundary("train-classifier")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    summary = run(cfg)
    print(json_text({k: summary[k] for k in ("version", "checkpoint", "metrics")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
