"""Bootstrap a demo classifier from known labels on tiny random-init backbones (never a real model)."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

DEMO_MODEL = "test_vit_shared"


def build_demo_classifier(images: list[bytes], labels: list[int], out_dir: str, seed: int = 0,
                          model_name: str = DEMO_MODEL) -> str:
    """Train a head on frozen random-init tiny-ViT features of ``images`` and save a checkpoint marked as demo.

    Takes a few seconds on a CPU. The checkpoint's ``config.json`` has ``"demo": true`` and a ``demo-`` version,
    and :class:`classifier.scoring.StyleScorer` warns loudly when it loads one. Returns the checkpoint path.
    """
    from classifier.checkpoint import data_hash
    from classifier.factory import create_classifier
    from classifier.features import extract_features, sha256_bytes
    from classifier.labels import TrainDataError
    from classifier.training import fit_classifier

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    labels_arr = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels_arr)) < 2:
        raise ValueError("the demo classifier needs examples of both classes (0 = photo, 1 = artwork)")
    torch.manual_seed(seed)
    model = create_classifier(model_name).eval()
    feats = extract_features(model, images, batch_size=64)
    shas = [sha256_bytes(b) for b in images]
    # small corpora: keep at least a few validation rows per class so calibration has something to fit
    val_fraction = 0.25 if len(images) >= 16 else 0.5
    extra = {"demo": True, "note": "demo classifier: random-init tiny backbone, generated images; not for real data"}
    for attempt in range(8):
        # a handful of images can hash into an empty or one-class split; another split seed fixes that
        try:
            fitted = fit_classifier(model, feats, labels_arr, shas, out_dir, val_fraction=val_fraction,
                                    seed=seed + attempt, max_epochs=200, extra=extra, source="demo labels",
                                    training_data_hash=data_hash(zip(shas, labels_arr)))
            break
        except TrainDataError:
            if attempt == 7:
                raise
    log.warning("built DEMO classifier %s in %s (held-out accuracy %.3f on generated images)", fitted.version, out_dir,
                fitted.result.metrics["accuracy"])
    return str(out_dir)

