"""Retrain loop: features cached, numbered rounds with metrics, pool rescored, labeling not blocked, resume."""

import time

import numpy as np
import pytest
import torch
from label_pool import make_folder_pool, truth_of_key

from classifier.checkpoint import load_classifier
from classifier.factory import create_classifier
from classifier.features import FeatureCache, feature_fingerprint
from classifier.labeling.active import ActiveConfig, ActiveLearner
from classifier.labeling.pool import open_pool
from classifier.labeling.store import LabelStore


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return create_classifier("test_vit_shared").eval()


def _learner(tmp_path, model, n=40, **cfg):
    root = tmp_path / "pool"
    if not root.exists():
        make_folder_pool(root, n)
    pool = open_pool(root)
    store = LabelStore(tmp_path / "l.sqlite")
    store.add_items((k, None, pool.item(k).ref) for k in pool.keys)
    cache = FeatureCache(tmp_path / "features", fingerprint=feature_fingerprint(model))
    cfg = ActiveConfig(**{"retrain_every": 10, "min_per_class": 3, **cfg})
    return ActiveLearner(store, pool, model, cache, cfg, rounds_dir=tmp_path / "rounds"), pool, store


def _label(store, keys, annotator="ann", reason="random"):
    for k in keys:
        store.add_label(k, "stylistic" if truth_of_key(k) else "not_stylistic", annotator, reason=reason)


def test_retrain_round_rescore_and_checkpoint(tmp_path, model, caplog):
    caplog.set_level("INFO", logger="classifier.labeling.active")
    learner, pool, store = _learner(tmp_path, model)
    assert learner.threshold is None and not learner.retrain_due()
    assert learner.compute_features(list(pool.keys)) == len(pool)  # what the background worker does
    keys = pool.keys[:24]
    _label(store, keys)
    assert learner.retrain_due()
    assert learner.retrain() == 1
    (rnd,) = store.rounds()
    m = rnd["metrics"]
    # the server log names every round with its figures (and says when the held-out split is small)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrain round 1:")]
    assert f"24 labels ({m['n_train']} train, {m['n_val']} held out" in line and "ROC-AUC" in line
    assert learner.model_version in line and ("too few for a firm figure" in line) == (m["n_val"] < 20)
    for name in ("accuracy", "roc_auc", "ece_before", "ece_after", "n_train", "n_val", "rescore_seconds"):
        assert name in m
    assert m["n_train"] + m["n_val"] == 24 and rnd["n_labels"] == 24
    assert rnd["model_version"] == learner.model_version and learner.model_version.startswith("bbst-clf-")
    # every cached pool item was scored, in memory and in the store, with the round's version
    assert len(learner.scores) == len(pool) and all(0 <= s <= 1 for s in learner.scores.values())
    assert {r["score_version"] for r in store.items()} == {learner.model_version}
    # the round's checkpoint is a classifier checkpoint that scores the same as the learner
    _, head, meta = load_classifier(m["checkpoint"])
    assert meta["version"] == learner.model_version
    from classifier.head import predict_proba

    k = pool.keys[30]
    feats, found = learner.cache.get([learner.sha256(k)])
    assert found.all()
    assert predict_proba(head, feats)[0] == pytest.approx(learner.scores[k], abs=1e-5)
    # and the pipeline's scorer (what build_bbst.py --classifier loads) accepts it and agrees
    from classifier.scoring import StyleScorer

    scores, errors = StyleScorer(m["checkpoint"]).score_images([pool.read_bytes(k)])
    assert errors == [None] and scores[0] == pytest.approx(learner.scores[k], abs=1e-4)
    assert not learner.retrain_due()  # no new labels since the round


def test_background_loop_does_not_block_labeling_and_resumes(tmp_path, model):
    learner, pool, store = _learner(tmp_path, model, retrain_every=8)
    learner.start()
    try:
        _label(store, pool.keys[:12])
        learner.notify_labels()
        # decisions keep committing fast while features are extracted and the head trains
        slowest = 0.0
        deadline = time.time() + 90
        i = 12
        while not store.rounds() and time.time() < deadline:
            t0 = time.perf_counter()
            if i < 30:
                _label(store, [pool.keys[i]])
                learner.notify_labels()
                i += 1
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.05)
        assert store.rounds(), f"no retrain round within 90 s (last error: {learner.last_error})"
        assert slowest < 0.5
    finally:
        learner.stop()
    version = learner.model_version
    # a restarted session reloads the latest round's head and keeps its scores and version
    again, _, _ = _learner(tmp_path, model, retrain_every=8)
    assert again.head_result is not None and again.model_version == version
    assert again.scores and again.threshold == 0.5


def test_undecodable_image_is_a_feature_error_row(tmp_path, model):
    root = make_folder_pool(tmp_path / "pool", 6)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    learner, pool, _ = _learner(tmp_path, model)
    assert learner.compute_features(list(pool.keys)) == 6
    assert set(learner.feature_errors) == {"broken.jpg"}
    assert learner.missing_features(pool.keys) == []  # not retried forever


def test_retrain_needs_both_classes(tmp_path, model):
    learner, pool, store = _learner(tmp_path, model, min_per_class=1, retrain_every=1)
    positives = [k for k in pool.keys if truth_of_key(k)][:6]
    _label(store, positives)
    assert not learner.retrain_due()
    store.add_label(next(k for k in pool.keys if not truth_of_key(k)), "not_stylistic", "ann")
    assert learner.retrain_due()
    assert learner.threshold is None and not learner.scores  # nothing scored before the first head


def test_likely_label_errors_use_held_out_predictions(tmp_path, model):
    from types import SimpleNamespace

    learner, _, _ = _learner(tmp_path, model, review_margin=0.8)
    head = SimpleNamespace(val_keys=["a", "b", "c", "d"], val_logits=np.array([4.0, -4.0, -6.0, 0.5]),
                           val_labels=np.array([1, 0, 1, 0]), temperature=1.0)
    # c: labelled stylistic, scored 0.0025 -> review; d: 0.62 vs 0 is not wide enough
    assert learner.likely_label_errors(head) == ["c"]
    assert learner.likely_label_errors(SimpleNamespace(val_keys=[], val_logits=None, val_labels=None)) == []
