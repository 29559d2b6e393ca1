"""Checkpoints and the pipeline scorer: round trip, demo marking, format errors, bad images, Ray actor pool."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch
from ray_local import ray_local  # noqa: F401 - session fixture

from classifier.calibration import calibrated
from classifier.checkpoint import CheckpointFormatError, load_classifier, save_classifier
from classifier.demo import build_demo_classifier
from classifier.factory import create_classifier
from classifier.head import HeadResult, predict_proba
from classifier.model import FusionHead
from classifier.scoring import StyleScorer
from classifier.transforms import ImageTransform
from core.schema import Status
from core.synthetic import encode, labelled_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo checkpoint trained on 200 generated images, plus 40 fresh labelled images to score."""
    images, labels = labelled_batch(200, size=64, seed=21)
    ckpt = build_demo_classifier([encode(im) for im in images], labels.tolist(),
                                 str(tmp_path_factory.mktemp("demo") / "clf"), seed=0)
    test_images, test_labels = labelled_batch(40, size=96, seed=22)
    return ckpt, [encode(im) for im in test_images], test_labels


def test_demo_checkpoint_is_marked_and_warns_loudly(demo, caplog):
    ckpt, blobs, labels = demo
    with open(f"{ckpt}/config.json") as f:
        meta = json.load(f)
    assert meta["demo"] is True and meta["version"].startswith("demo-")
    assert meta["format"] == "bbst-classifier" and meta["model_name"] == "test_vit_shared"
    with caplog.at_level(logging.WARNING, logger="classifier.scoring"):
        scorer = StyleScorer(ckpt)
    assert scorer.demo and "DEMO classifier" in caplog.text
    scores, errors = scorer.score_images(blobs)
    assert errors == [None] * len(blobs)
    assert ((scores >= 0.5) == labels).mean() >= 0.9  # unseen generated images, other size


def test_checkpoint_round_trip_gives_identical_scores(demo, tmp_path):
    ckpt, blobs, _ = demo
    model, head_result, meta = load_classifier(ckpt)
    t = ImageTransform(model.cfg.preprocess)
    x = torch.stack([t(b) for b in blobs])
    with torch.inference_mode():
        before = calibrated(model(x).numpy(), head_result.temperature)
        feats = model.forward_features(x).numpy()
    np.testing.assert_allclose(predict_proba(head_result, feats), before, rtol=1e-5, atol=1e-7)
    version = save_classifier(tmp_path / "again", model, head_result, training_data_hash=meta["training_data_hash"],
                              extra={"demo": True})
    assert version == meta["version"]  # the version is a function of what scores, not of when it was saved
    model2, head2, meta2 = load_classifier(tmp_path / "again" / "config.json")
    with torch.inference_mode():
        after = calibrated(model2(x).numpy(), head2.temperature)
    np.testing.assert_array_equal(after, before)
    assert meta2["thresholds"] == meta["thresholds"] and meta2["preprocess"] == meta["preprocess"]
    scored, _ = StyleScorer(str(tmp_path / "again")).score_images(blobs)
    np.testing.assert_allclose(scored, before, rtol=0, atol=1e-6)


def test_scorer_marks_undecodable_rows_and_scores_the_others(demo):
    ckpt, blobs, _ = demo
    scorer = StyleScorer(ckpt, batch_size=4, num_threads=2)
    good = blobs[:6]
    batch = {
        "key": np.array([f"k{i}" for i in range(9)], dtype=object),
        "image": np.array([*good[:3], blobs[0][:200], *good[3:], None, b"<html>"], dtype=object),
        "status": np.array(["ok"] * 7 + ["download_error", "ok"], dtype=object),
        "error": np.array([None] * 7 + ["HTTP 404", None], dtype=object),
    }
    out = scorer(batch)
    expected, _ = scorer.score_images(good)
    ok = [0, 1, 2, 4, 5, 6]
    np.testing.assert_allclose(out["score"][ok], expected, rtol=0, atol=1e-6)  # batch neighbours change nothing
    assert list(out["status"]) == ["ok"] * 3 + ["score_error"] + ["ok"] * 3 + ["download_error", "score_error"]
    assert "cannot decode image" in out["error"][3] and scorer.version in out["error"][3]
    assert out["error"][7] == "HTTP 404" and out["error"][0] is None
    assert np.isnan(out["score"][[3, 7, 8]]).all() and out["score"].dtype == np.float64
    assert list(out["classifier_version"][ok]) == [scorer.version] * 6
    assert out["classifier_version"][3] is None and out["classifier_version"][7] is None
    assert list(out["key"]) == list(batch["key"]) and Status.SCORE_ERROR.value == "score_error"
    assert "embedding" not in out


def test_scorer_gives_the_embedding_its_score_came_from(demo):
    """With ``embedding``, each scored row carries that part of ``forward_features``, unit length, float16."""
    ckpt, blobs, _ = demo
    plain = StyleScorer(ckpt, batch_size=4)
    batch = {"key": np.array(["a", "b", "c", "d"], dtype=object),
             "image": np.array([blobs[0], b"<html>", blobs[1], blobs[2]], dtype=object),
             "status": np.array(["ok", "ok", "too_small", "ok"], dtype=object)}
    expected = plain(dict(batch))
    model, t = plain.model, plain.transform
    with torch.inference_mode():
        feats = model.forward_features(torch.stack([t(b) for b in (blobs[0], blobs[2])])).numpy()
    for part, cols in (("content", slice(0, model.content_dim)), ("style", slice(model.content_dim, None)),
                       ("features", slice(None))):
        out = StyleScorer(ckpt, batch_size=4, embedding=part)(dict(batch))
        np.testing.assert_array_equal(out["score"], expected["score"])  # same scores, same statuses
        assert list(out["status"]) == list(expected["status"]) == ["ok", "score_error", "too_small", "ok"]
        assert out["embedding"][1] is None and out["embedding"][2] is None
        assert len(out["embedding"][0]) == StyleScorer(ckpt, embedding=part).embedding_dim
        for row, f in ((0, feats[0]), (3, feats[1])):
            e = out["embedding"][row]
            want = f[cols] / np.linalg.norm(f[cols])
            assert e.dtype == np.float16 and e.shape == want.shape
            np.testing.assert_allclose(e.astype(np.float32), want, atol=2e-3)


def test_wrong_or_unknown_checkpoint_format_is_a_clear_error(demo, tmp_path):
    import shutil

    ckpt, _, _ = demo
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointFormatError, match=r"format_version 99 is not supported"):
        StyleScorer(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "format": "something-else"}))
    with pytest.raises(CheckpointFormatError, match="something-else"):
        load_classifier(bad)
    with pytest.raises(CheckpointFormatError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "nothing-here")
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointFormatError, match="model.safetensors is missing"):
        load_classifier(bad)


def test_rescoring_ten_thousand_cached_vectors_is_fast():
    torch.manual_seed(0)
    head = FusionHead(768, 256)  # the ViT-B/16 configs: 512 content + 256 style
    result = HeadResult(head=head, temperature=1.7)
    feats = np.random.default_rng(0).normal(size=(10_000, 768)).astype(np.float32)
    predict_proba(result, feats[:10])  # warm-up
    t0 = time.perf_counter()
    p = predict_proba(result, feats)
    elapsed = time.perf_counter() - t0
    assert p.shape == (10_000,) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    assert elapsed < 2.0, f"{elapsed:.2f}s"


def test_untrained_real_config_scores_through_the_same_path(tmp_path):
    """The scorer is model-agnostic: a two-trunk tiny checkpoint scores the same way."""
    images, labels = labelled_batch(60, size=64, seed=5)
    blobs = [encode(im) for im in images]
    model = create_classifier("test_vit_2trunk").eval()
    from classifier.features import extract_features
    from classifier.head import train_head

    res = train_head(extract_features(model, blobs), labels, [str(i) for i in range(60)], val_fraction=0.3,
                     hidden=32, dropout=0.0, max_epochs=50)
    save_classifier(tmp_path / "c", model, res, training_data_hash="x")
    out = StyleScorer(str(tmp_path / "c"))({"image": np.array(blobs, dtype=object)})
    assert out["status"].tolist() == ["ok"] * 60 and np.isfinite(out["score"]).all()
    assert out["classifier_version"][0].startswith("bbst-clf-")


@pytest.mark.ray
def test_score_stage_in_a_local_ray_actor_pool(demo, ray_local):  # noqa: F811
    import ray

    ckpt, blobs, labels = demo
    rows = [{"key": f"{i:013d}", "image": b, "status": "ok", "error": None, "label": int(y)}
            for i, (b, y) in enumerate(zip(blobs, labels))]
    rows.append({"key": "9" * 13, "image": b"\x89PNG broken", "status": "ok", "error": None, "label": -1})
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(StyleScorer, fn_constructor_kwargs={"checkpoint": ckpt, "batch_size": 8, "num_threads": 1},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=16, batch_format="numpy",
                        num_cpus=1)
    out = sorted(ds.take_all(), key=lambda r: r["key"])
    assert len(out) == len(rows)
    bad = out[-1]
    assert bad["status"] == "score_error" and np.isnan(bad["score"]) and "cannot decode" in bad["error"]
    good = out[:-1]
    assert all(r["status"] == "ok" and r["classifier_version"].startswith("demo-") for r in good)
    direct, _ = StyleScorer(ckpt).score_images([r["image"] for r in good])
    np.testing.assert_allclose([r["score"] for r in good], direct, rtol=0, atol=1e-6)
