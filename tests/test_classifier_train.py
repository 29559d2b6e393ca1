"""Classifier training: head on frozen tiny-ViT features, calibration, thresholds, feature cache, train entry point."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from classifier.calibration import expected_calibration_error, fit_temperature, roc_auc, select_thresholds, sigmoid
from classifier.factory import create_classifier
from classifier.features import FeatureCache, cached_features, extract_features, feature_fingerprint, sha256_bytes
from classifier.head import predict_proba, split_by_key, train_head
from core.schema import make_key
from core.synthetic import encode, labelled_batch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def generated():
    """300 generated 64 px images (half artwork-like, half photo-like) as JPEG bytes, with keys and labels."""
    images, labels = labelled_batch(300, size=64, seed=11)
    blobs = [encode(im) for im in images]
    keys = [make_key(0, i) for i in range(len(blobs))]
    return blobs, labels, keys


@pytest.mark.parametrize("name", ["test_vit_shared", "test_vit_2trunk"])
def test_head_on_frozen_random_tiny_backbone_learns_the_generated_problem(generated, name):
    blobs, labels, keys = generated
    torch.manual_seed(0)
    model = create_classifier(name).eval()
    feats = extract_features(model, blobs, batch_size=64)
    assert feats.shape == (len(blobs), model.num_features)
    result = train_head(feats, labels, keys, val_fraction=0.25, seed=0, hidden=32, dropout=0.0, max_epochs=200)
    m = result.metrics
    assert m["accuracy"] >= 0.9, m
    assert m["roc_auc"] >= 0.95, m
    assert m["n_val"] + m["n_train"] == len(blobs) and 40 <= m["n_val"] <= 110
    # the held-out split is by key: none of its keys were trained on, and predict_proba agrees with the metrics
    val = split_by_key(keys, 0.25, 0)
    assert result.val_keys == [k for k, v in zip(keys, val) if v]
    p = predict_proba(result, feats[val])
    assert ((p >= 0.5) == labels[val]).mean() == pytest.approx(m["accuracy"])
    assert set(result.thresholds) >= {"style", "content"} and result.thresholds["content"] < result.thresholds["style"]


def test_split_by_key_is_stable_under_new_labels_and_reordering():
    keys = [make_key(1, i) for i in range(2000)]
    a = dict(zip(keys, split_by_key(keys, 0.2, seed=3)))
    more = keys[::-1] + [make_key(2, i) for i in range(500)]
    b = dict(zip(more, split_by_key(more, 0.2, seed=3)))
    assert all(a[k] == b[k] for k in keys)
    assert 0.17 < np.mean(list(a.values())) < 0.23
    assert dict(zip(keys, split_by_key(keys, 0.2, seed=4))) != a


def test_temperature_scaling_lowers_ece_of_an_over_confident_model():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    labels = (rng.random(4000) < sigmoid(true_logit)).astype(int)
    over = 4.0 * true_logit  # an over-confident model: right ranking, logits 4x too large
    cal, test = slice(0, 2000), slice(2000, None)
    t = fit_temperature(over[cal], labels[cal])
    assert t == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(sigmoid(over[test]), labels[test])
    after = expected_calibration_error(sigmoid(over[test] / t), labels[test])
    assert before > 0.08 and after < 0.03 and after < before / 3


def test_head_training_reports_lower_ece_after_calibration_on_noisy_labels():
    rng = np.random.default_rng(1)
    n, d = 800, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.random(n) < sigmoid(1.5 * x[:, 0])).astype(int)  # overlapping classes: an MLP over-fits confidently
    keys = [str(i) for i in range(n)]
    r = train_head(x, y, keys, val_fraction=0.3, hidden=64, dropout=0.0, patience=150, max_epochs=150, lr=3e-2,
                   weight_decay=0.0)
    assert r.temperature > 1.0
    assert r.metrics["ece_after"] < r.metrics["ece_before"]


def test_thresholds_reach_the_target_precision_on_each_side():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(500), np.zeros(500)].astype(int)
    probs = np.clip(np.r_[rng.beta(5, 2, 500), rng.beta(2, 5, 500)], 0, 1)
    th = select_thresholds(probs, labels, target_precision=0.95)
    assert th["style_reached"] and th["content_reached"]
    assert labels[probs >= th["style"]].mean() >= 0.95
    assert (1 - labels[probs <= th["content"]]).mean() >= 0.95
    # the loosest such threshold: one step looser falls below the target
    looser = probs[probs < th["style"]].max()
    assert labels[probs >= looser].mean() < 0.95
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # the textbook example
    assert roc_auc([0.5, 0.5], [0, 1]) == 0.5 and np.isnan(roc_auc([0.2, 0.3], [1, 1]))
    impossible = select_thresholds(np.full(10, 0.5), np.r_[np.ones(5), np.zeros(5)].astype(int), 0.95)
    assert not impossible["style_reached"] and impossible["style"] == 1.0 and impossible["content"] == 0.0


def test_feature_cache_round_trip_persistence_and_model_guard(tmp_path, generated):
    blobs = generated[0][:40]
    model = create_classifier("test_vit_shared").eval()
    fp = feature_fingerprint(model)
    cache = FeatureCache(tmp_path / "fc", fingerprint=fp)
    shas = [sha256_bytes(b) for b in blobs]
    feats = cached_features(model, blobs[:30], cache)
    assert len(cache) == 30 and shas[0] in cache and shas[35] not in cache
    got, found = cache.get(shas)
    assert found[:30].all() and not found[30:].any()
    np.testing.assert_array_equal(got[:30], feats)
    assert cache.put(shas[:30], feats) == 0  # nothing new
    # a second process sees the same features; only the missing ones are extracted
    again = FeatureCache(str(tmp_path / "fc"))
    both = cached_features(model, blobs, again)
    assert len(again) == 40
    np.testing.assert_allclose(both[:30], feats)
    np.testing.assert_allclose(both[30:], extract_features(model, blobs[30:]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="built by model"):
        FeatureCache(tmp_path / "fc", fingerprint="another-model")
    with pytest.raises(ValueError, match="dimension"):
        again.put(["x" * 64], np.zeros((1, 3), np.float32))
    torch.manual_seed(5)
    assert feature_fingerprint(create_classifier("test_vit_shared")) != fp  # other weights, other features


# ------------------------------------------------------------------------------------------ entry point
def _write_shard(path, keys, blobs):
    with tarfile.open(path, "w") as tar:
        for k, b in zip(keys, blobs):
            for name, data in ((f"{k}.jpg", b), (f"{k}.json", json.dumps({"key": k}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_train_classifier_main_from_shards_and_label_file(tmp_path, generated):
    from pipelines.train_classifier import main

    blobs, labels, keys = generated
    blobs, labels, keys = blobs[:200], labels[:200], keys[:200]
    shards = tmp_path / "run" / "shards"
    shards.mkdir(parents=True)
    _write_shard(shards / "style-000000.tar", keys[:100], blobs[:100])
    _write_shard(shards / "content-000000.tar", keys[100:], blobs[100:])
    # two annotators; the second one's later decisions win the tie-free majority with the first one's
    rows = {"key": [], "label": [], "annotator": [], "time": []}
    for i, (k, y) in enumerate(zip(keys, labels)):
        rows["key"].append(k), rows["label"].append(str(int(y))), rows["annotator"].append("ann1"), rows["time"].append(i)
    rows["key"] += [keys[0], keys[0], keys[1]]
    rows["label"] += ["skip", str(int(labels[0])), "skip"]
    rows["annotator"] += ["ann2", "ann2", "ann2"]
    rows["time"] += [1000, 1001, 1002]
    pq.write_table(pa.table(rows), tmp_path / "labels.parquet")
    out = tmp_path / "clf"
    argv = ["--labels", str(tmp_path / "labels.parquet"), "--images", str(tmp_path / "run" / "shards"),
            "--model", "test_vit_shared", "--epochs", "200", "--num-threads", "1", "--set", "val_fraction=0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["accuracy"] >= 0.9
    # a test-size network: the checkpoint says so, and every consumer shows it as a demo classifier
    assert summary["version"].startswith("demo-") and summary["test_size_model"] is True
    cfg = json.loads((out / "checkpoint" / "config.json").read_text())
    assert cfg["version"] == summary["version"] and cfg["model_name"] == "test_vit_shared" and cfg["demo"] is True
    assert cfg["extra"]["test_size_model"] is True
    assert cfg["preprocess"]["size"] == 64 and len(cfg["training_data_hash"]) == 64
    for f in ("report.md", "report.json", "reliability.png", "score_histograms.png"):
        assert (out / "report" / f).stat().st_size > 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert {"accuracy", "roc_auc", "ece_before", "ece_after", "style_precision", "content_recall"} <= set(report["metrics"])
    # the feature cache is beside the output; the input shards folder is never written to
    assert sorted(p.name for p in shards.iterdir()) == ["content-000000.tar", "style-000000.tar"]
    caches = list((out / "features").iterdir())
    assert len(caches) == 1 and len(FeatureCache(caches[0])) == 200
    # retraining with --feature-cache pointing there reads every feature from it, and writes nothing new
    before = sorted(p.name for p in caches[0].rglob("*"))
    assert main([*argv, "--out", str(tmp_path / "clf2"), "--feature-cache", str(out / "features")]) == 0
    assert sorted(p.name for p in caches[0].rglob("*")) == before and not (tmp_path / "clf2" / "features").exists()
    again = json.loads((tmp_path / "clf2" / "summary.json").read_text())
    assert again["version"] == summary["version"]  # same data, same seed: the same classifier


def test_train_classifier_from_folder_csv_and_labeling_db_with_finetuning(tmp_path, generated):
    from classifier.labeling.store import LabelStore
    from pipelines.train_classifier import main

    blobs, labels, keys = generated
    blobs, labels, keys = blobs[:120], labels[:120], keys[:120]
    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for k, b in zip(keys, blobs):
        (folder / f"{k}.jpg").write_bytes(b)
    # a labeling-session database: keys are file stems
    db = LabelStore(tmp_path / "session.sqlite")
    db.add_labels([{"key": k, "label": "stylistic" if y else "not_stylistic", "annotator": "a"}
                   for k, y in zip(keys, labels)])
    db.close()
    out = tmp_path / "ft"
    assert main(["--labels-db", str(tmp_path / "session.sqlite"), "--images", str(tmp_path / "imgs"),
                 "--model", "test_vit_shared", "--out", str(out), "--finetune-blocks", "1", "--finetune-epochs", "1",
                 "--num-threads", "1", "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["accuracy"] >= 0.85 and not (out / "report").exists()
    # CSV with relative paths; a labelled image that does not exist is an error naming it ...
    csv = tmp_path / "labels.csv"
    lines = ["path,label,annotator,time"] + [f"sub/{k}.jpg,{y},a,{i}" for i, (k, y) in enumerate(zip(keys, labels))]
    csv.write_text("\n".join(lines + ["sub/missing.jpg,1,a,999"]) + "\n")
    args = ["--labels", str(csv), "--images", str(tmp_path / "imgs"), "--model", "test_vit_shared",
            "--out", str(tmp_path / "csv"), "--num-threads", "1", "--no-report"]
    from classifier.labels import TrainDataError
    from classifier.training import TrainClassifierConfig, train_classifier

    with pytest.raises(TrainDataError, match="sub/missing.jpg"):
        train_classifier(TrainClassifierConfig(labels=str(csv), images=str(tmp_path / "imgs"), model="test_vit_shared",
                                               out=str(tmp_path / "csv"), num_threads=1, report=False))
    assert main(args) == 2
    # ... unless skipped explicitly, which lists it
    assert main(args + ["--skip-missing"]) == 0
    assert "sub/missing.jpg" in json.loads((tmp_path / "csv" / "skipped.json").read_text())


def _strict_json(path):
    def no_nan(token):
        raise AssertionError(f"{path} holds {token}: not JSON")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_held_out_side_without_examples_warns_and_json_has_no_nan(tmp_path, generated, caplog):
    from classifier.labels import TrainDataError
    from classifier.training import TrainClassifierConfig, train_classifier
    from pipelines.train_classifier import main

    blobs, labels, keys = generated
    blobs, labels, keys = blobs[:80], labels[:80], keys[:80]
    is_val = split_by_key(keys, 0.25, 0)
    keep = [i for i in range(len(keys)) if not (is_val[i] and labels[i] == 1)]  # no stylistic held-out images
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_shard(shards / "s-000000.tar", [keys[i] for i in keep], [blobs[i] for i in keep])
    pq.write_table(pa.table({"key": [keys[i] for i in keep], "label": [int(labels[i]) for i in keep]}),
                   tmp_path / "labels.parquet")
    argv = ["--labels", str(tmp_path / "labels.parquet"), "--images", str(shards), "--model", "test_vit_shared",
            "--epochs", "30", "--num-threads", "1", "--val-fraction", "0.25", "--out", str(tmp_path / "out")]
    caplog.set_level("WARNING", logger="classifier.training")
    assert main(argv) == 0
    summary = _strict_json(tmp_path / "out" / "summary.json")
    assert summary["metrics"]["roc_auc"] is None
    assert any("has no stylistic examples: ROC-AUC is undefined" in w for w in summary["warnings"])
    assert any("fewer than 20" in w for w in summary["warnings"])
    assert any("has no stylistic examples" in r.getMessage() for r in caplog.records)
    _strict_json(tmp_path / "out" / "report" / "report.json")
    # a training split without one class is refused with a message, not a traceback
    train_pos = [keys[i] for i in keep if not is_val[i] and labels[i] == 1]
    pq.write_table(pa.table({"key": [k for k in (keys[i] for i in keep) if k not in train_pos],
                             "label": [int(labels[i]) for i in keep if keys[i] not in train_pos]}),
                   tmp_path / "one-class.parquet")
    with pytest.raises(TrainDataError, match="training split has no stylistic examples"):
        train_classifier(TrainClassifierConfig(labels=str(tmp_path / "one-class.parquet"), images=str(shards),
                                               model="test_vit_shared", epochs=30, num_threads=1, val_fraction=0.25,
                                               out=str(tmp_path / "out")))
