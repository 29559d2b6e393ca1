"""End-to-end tests of pipelines/build_bbst.py on a local Ray: invariants, statuses, config, demo."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from ray_local import ray_local  # noqa: F401 - session fixture

from core import schema, synthetic
from core.config import ConfigError, load_config
from curate.build_config import BuildConfig, iter_field_paths
from curate.demo import CLASSIFIER_DIR
from pipelines import build_bbst

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "pipelines" / "configs" / "build_bbst.example.yaml"

# route -> status the pipeline must give it (min_side 64, fault server images have a 96 px short side)
EXPECTED = {
    "ok.jpg": "ok",
    "ok.png": "ok",
    "image.webp": "near_duplicate",  # the ok.jpg picture re-encoded: same phash, other bytes
    "exif-rotated.jpg": "ok",
    "octet.jpg": "duplicate",  # same bytes as ok.jpg, larger key
    "404": "download_error",
    "always-500": "download_error",
    "redirect-loop": "download_error",
    "reset": "download_error",
    "html": "not_image",
    "empty": "not_image",
    "wrong-type": "not_image",
    "noai.jpg": "opted_out",
    "tiny.jpg": "too_small",
    "bomb.png": "too_large",
    "corrupt.jpg": "corrupt",
    "truncated": "download_error",
    "wide.jpg": "bad_aspect",
    "500-then-ok/smoke": "duplicate",  # retried after a 500, then the ok.jpg bytes
}


def read_meta(out: Path) -> pa.Table:
    files = sorted((out / schema.META_DIR).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("key")


def tar_members(out: Path) -> dict[str, list[str]]:
    """``{shard: [member names]}``, opening every tar fully (a truncated tar raises)."""
    res = {}
    for tar in sorted((out / schema.SHARDS_DIR).iterdir()):
        with tarfile.open(tar) as tf:
            res[tar.name] = [m.name for m in tf.getmembers()]
    return res


def check_invariants(out: Path) -> tuple[pa.Table, dict]:
    """The output contract every run must meet; returns (meta, summary)."""
    meta = read_meta(out)
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert list(meta.column_names[: len(schema.META_COLUMNS)]) == list(schema.META_COLUMNS)
    assert meta.num_rows == summary["rows_in"] == sum(summary["counts_by_status"].values())
    statuses = meta["status"].to_pylist()
    assert set(statuses) <= set(schema.STATUSES)
    keys = meta["key"].to_pylist()
    assert len(set(keys)) == len(keys) and all("." not in k for k in keys)
    members = tar_members(out)
    seen: dict[str, str] = {}
    for shard, names in members.items():
        assert re.fullmatch(r"(style|content)-\d{6}\.tar", shard), shard
        for name in names:
            key, ext = name.split(".", 1)
            if ext == "json":
                continue
            assert key not in seen, f"sample {key} in {seen[key]} and {shard}"
            seen[key] = shard
            assert f"{key}.json" in names
    ok_rows = {k: (s, sub) for k, st, s, sub in zip(keys, statuses, meta["shard"].to_pylist(),
                                                     meta["subset"].to_pylist()) if st == "ok"}
    assert set(ok_rows) == set(seen), "every ok row in exactly one tar, and nothing else in the tars"
    for k, (shard, subset) in ok_rows.items():
        assert seen[k] == shard and shard.startswith(subset + "-")
    manifest = json.loads((out / schema.MANIFEST_FILE).read_text())
    listed = {e["url"].rsplit("/", 1)[-1]: e for e in manifest["shardlist"]}
    assert set(listed) == set(members)
    for name, entry in listed.items():
        data = (out / schema.SHARDS_DIR / name).read_bytes()
        assert entry["filesize"] == len(data)
        assert entry["md5sum"] == hashlib.md5(data).hexdigest()
        assert entry["nsamples"] == sum(1 for m in members[name] if not m.endswith(".json"))
    assert sum(summary["counts_by_subset"].values()) == summary["counts_by_status"]["ok"]
    assert not (out / schema.STAGING).exists()
    return meta, summary


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, fault_server, ray_local):  # noqa: F811
    tmp = tmp_path_factory.mktemp("smoke")
    urls = [fault_server.url(r) for r in EXPECTED]
    sources = ["flickr" if i % 2 else "behance" for i in range(len(urls))]
    # a few more real images so there is more than one shard per subset
    for i in range(6):
        img = synthetic.make_image(i % 2, 120, 96, seed=100 + i)
        urls.append(fault_server.add_bytes(f"extra{i}.jpg", synthetic.encode(img)))
        sources.append("behance" if i % 2 else "flickr")
    urls.append("not a url")
    sources.append(None)
    pq.write_table(pa.table({"url": urls, "source": sources, "license": [f"cc-{i}" for i in range(len(urls))]}),
                   tmp / "urls.parquet")
    out = tmp / "out"
    args = [
        "--urls", str(tmp / "urls.parquet"), "--out", str(out), "--min-side", "64", "--allow-private-network",
        "--set", "reader.rows_per_partition=7", "--set", "download.timeout=2", "--set", "download.total_timeout=4",
        "--set", "download.retries=1", "--set", "download.backoff_base=0.05", "--set", "shards.target_samples=3",
        "--set", "progress_interval_s=0", "--set", "ray.unit_rows=4",
    ]
    summary = build_bbst.main(args)
    return out, summary, args


@pytest.mark.ray
@pytest.mark.slow
def test_ray_smoke_statuses_and_invariants(smoke_run):
    out, summary, _ = smoke_run
    meta, on_disk = check_invariants(out)
    assert summary == on_disk
    by_url = dict(zip(meta["url"].to_pylist(), meta["status"].to_pylist()))
    got = {route: by_url[url] for url in by_url for route in EXPECTED if url.endswith("/" + route)}
    assert got == EXPECTED
    assert by_url["not a url"] == "invalid_url"
    # pass-through column and the subset rule (source decides without a classifier)
    assert "license" in meta.column_names and meta["license"].null_count == 0
    for src, sub, st in zip(meta["source"].to_pylist(), meta["subset"].to_pylist(), meta["status"].to_pylist()):
        if st == "ok":
            assert sub == ("style" if src == "behance" else "content")
    assert meta.num_rows > 7 and len(list((out / schema.META_DIR).glob("*.parquet"))) == -(-meta.num_rows // 7)
    assert len(list((out / schema.SHARDS_DIR).glob("content-*.tar"))) >= 2
    assert "scoring skipped" in summary["scoring"]
    assert summary["duration_seconds"] > 0 and summary["images_per_second"] > 0
    # failures keep their reason; ok rows carry the image facts
    for row in meta.to_pylist():
        if row["status"] == "ok":
            assert row["width"] >= 64 and row["sha256"] and row["phash"] and row["mime"].startswith("image/")
        else:
            assert row["error"], row


@pytest.mark.ray
@pytest.mark.slow
def test_tar_samples_carry_original_bytes_and_metadata(smoke_run):
    out, _, _ = smoke_run
    meta = {r["key"]: r for r in read_meta(out).to_pylist()}
    for tar in (out / schema.SHARDS_DIR).glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                if ext == "json":
                    j = json.loads(data)
                    assert j["key"] == key and j["url"] == meta[key]["url"] and j["subset"] == meta[key]["subset"]
                else:
                    assert hashlib.sha256(data).hexdigest() == meta[key]["sha256"]
                    assert ext in ("jpg", "png", "webp", "gif", "tiff", "bmp")


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_of_finished_output_is_a_no_op(smoke_run, capsys):
    out, summary, args = smoke_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / schema.SHARDS_DIR).iterdir()}
    again = build_bbst.main(args)
    assert again == summary
    assert {p.name: p.stat().st_mtime_ns for p in (out / schema.SHARDS_DIR).iterdir()} == before
    # the same output with another list is refused, naming both lists; it is never "nothing to do"
    other = out.parent / "other.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/x.jpg"]}), other)
    changed = [a if a != str(out.parent / "urls.parquet") else str(other) for a in args]
    assert build_bbst.main(changed) == 2
    err = capsys.readouterr().err
    assert "finished build" in err and "urls.parquet" in err and "other.parquet" in err
    assert {p.name: p.stat().st_mtime_ns for p in (out / schema.SHARDS_DIR).iterdir()} == before


@pytest.mark.ray
@pytest.mark.slow
def test_demo_runs_in_process_and_matches_expected_statuses(tmp_path, ray_local):  # noqa: F811
    out = tmp_path / "demo"
    summary = build_bbst.main(["--out", str(out), "--demo-images", "10", "--min-side", "96",
                               "--set", "progress_interval_s=0"])
    meta, _ = check_invariants(out)
    assert summary["demo"] is True
    # the demo bootstraps a DEMO classifier and runs the score stage of a normal build with it
    clf = summary["classifier"]
    assert clf["demo"] is True and clf["version"].startswith("demo-") and "DEMO classifier" in summary["scoring"]
    assert (out / CLASSIFIER_DIR / "config.json").is_file()
    # the split uses the checkpoint's thresholds (chosen for a target precision) when the config sets none
    th = summary["split_thresholds"]
    assert th == {"style_min_score": clf["thresholds"]["style"], "content_max_score": clf["thresholds"]["content"]}
    rows = meta.to_pylist()
    # a kept image may only be dropped by the classifier (score_filtered), never by anything unexpected
    mismatched = [(r["url"], r["expect"], r["status"], r["error"]) for r in rows
                  if r["expect"] != r["status"] and not (r["expect"] == "ok" and r["status"] == "score_filtered")]
    assert not mismatched
    for r in rows:
        if r["status"] in ("ok", "score_filtered"):
            assert r["score"] is not None and r["classifier_version"] == clf["version"]
        if r["status"] == "ok" and r["subset"] == "style":
            assert r["source"] == "behance" and r["score"] >= th["style_min_score"]
        if r["status"] == "ok" and r["subset"] == "content":
            assert r["source"] == "flickr" and r["score"] <= th["content_max_score"]
    assert summary["counts_by_subset"]["style"] > 0 and summary["counts_by_subset"]["content"] > 0
    # the report shows rejected rows whose bytes the build downloaded (held in staging until the end) as images
    page = (out / schema.REPORT_FILE).read_text()
    for status in ("duplicate", "near_duplicate"):
        assert summary["counts_by_status"].get(status), status
        thumbs = page.split(f"id='thumbs-{status}'")[1].split("</div>")[0]
        assert thumbs.count("<img") >= 1, status
    too_small = page.split("id='rejected-too_small'")[1].split("</section>")[0]
    assert "<img" not in too_small and "never kept" in too_small  # rejected from the header: no bytes
    # a report rebuilt from the finished output has no staging: it says why those images are missing
    from curate.report import report_from_output

    rebuilt = report_from_output(str(out))
    assert "id='thumbs-duplicate'" not in rebuilt and "a rebuilt report cannot" in rebuilt


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("urls: x.parquet\ndownload:\n  timeout: 3\n  not_an_option: 1\n")
    with pytest.raises(ConfigError, match="not_an_option"):
        build_bbst.main(["--config", str(bad), "--debug"])
    with pytest.raises(ConfigError, match="bogus"):
        build_bbst.main(["--urls", "x.parquet", "--set", "bogus=1", "--debug"])
    with pytest.raises(ConfigError, match="min_side"):
        build_bbst.main(["--urls", "x.parquet", "--set", "check.min_side=big", "--debug"])


def test_flags_override_config_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("urls: a.parquet\nout: /tmp/a\ncheck:\n  min_side: 512\n")
    parser = build_bbst.build_parser()
    args = parser.parse_args(["--config", str(cfg_file), "--min-side", "256", "--out", "/tmp/b",
                              "--allow-private-network", "--set", "shards.target_samples=9"])
    cfg = build_bbst.load_cli_config(args)
    assert cfg.check.min_side == 256 and cfg.out == "/tmp/b" and cfg.download.allow_private_network
    assert cfg.shards.target_samples == 9 and cfg.urls == "a.parquet"
    assert build_bbst.load_cli_config(parser.parse_args(["--config", str(cfg_file)])).check.min_side == 512
    assert BuildConfig().check.min_side == 1024


def _flatten(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and v and not k.endswith("options"):
            out |= _flatten(v, f"{prefix}{k}.")
        out.add(prefix + k)
    return out


def test_example_config_documents_every_option():
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    present = _flatten(data)
    missing = [p for p in iter_field_paths(BuildConfig) if p not in present]
    assert not missing, f"options missing from {EXAMPLE.name}: {missing}"
    # every option line carries a comment
    for line in text.splitlines():
        if re.match(r"^\s*[a-z_]+:\s*\S", line):
            assert "#" in line, f"undocumented option line: {line!r}"
    cfg = load_config(BuildConfig, EXAMPLE)
    assert cfg == BuildConfig(urls=cfg.urls, out=cfg.out)


@pytest.mark.ray
@pytest.mark.slow
def test_rescore_existing_shards_without_download(smoke_run, tmp_path, fault_server):
    import shutil

    from classifier.demo import build_demo_classifier

    images, labels = synthetic.labelled_batch(16, size=64, seed=1)
    ckpt = build_demo_classifier([synthetic.encode(im) for im in images], labels.tolist(), str(tmp_path / "clf"))
    out, before, _ = smoke_run
    copy = tmp_path / "rescored"
    shutil.copytree(out, copy)
    requests_before = len(fault_server.requests)
    mine = copy / schema.SHARDS_DIR / "mine.tar"  # a file the user put there: bbst never wrote it, never removes it
    mine.write_bytes(b"user data")
    summary = build_bbst.main(["--rescore", str(copy), "--classifier", ckpt, "--set", "score.batch_size=4",
                               "--set", "split.style_min_score=0.0", "--set", "split.content_max_score=0.0",
                               "--set", "progress_interval_s=0"])
    assert len(fault_server.requests) == requests_before, "rescoring must not download"
    assert mine.read_bytes() == b"user data"
    mine.unlink()
    meta, _ = check_invariants(copy)
    assert summary["rows_in"] == before["rows_in"]
    ok_before = before["counts_by_status"]["ok"]
    # with both thresholds at 0 a behance row stays style, a flickr row needs score <= 0 (never): filtered
    assert summary["counts_by_status"]["ok"] + summary["counts_by_status"]["score_filtered"] == ok_before
    rows = [r for r in meta.to_pylist() if r["status"] in ("ok", "score_filtered")]
    assert rows and all(r["score"] is not None and r["classifier_version"] for r in rows)
    assert all(r["subset"] == "style" for r in rows if r["status"] == "ok")
    assert "scored with" in summary["scoring"]




def test_semantic_pass_without_a_classifier_is_an_input_error(tmp_path, capsys, monkeypatch):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    monkeypatch.setattr(build_bbst, "_init_ray", lambda *a: pytest.fail("an input error must be found before Ray"))
    code = build_bbst.main(["--urls", str(urls), "--out", str(tmp_path / "out"), "--set", "dedup.semantic.enabled=true"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bbst build: error: --set dedup.semantic.enabled=true") and "--classifier" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.ray
@pytest.mark.slow
def test_semantic_pass_marks_variants_publishes_embeddings_and_reports_pairs(tmp_path, fault_server, ray_local):  # noqa: F811
    """End to end with the tiny demo classifier: its style statistics (spatial means and deviations of each
    block) barely move when an image is resized or mirrored, so those two are caught at a strict threshold
    with phash dedup off; two unrelated images stay."""
    from PIL import ImageOps

    from classifier.demo import build_demo_classifier
    from curate import semantic

    images, labels = synthetic.labelled_batch(16, size=64, seed=1)
    ckpt = build_demo_classifier([synthetic.encode(im) for im in images], labels.tolist(), str(tmp_path / "clf"))
    base = synthetic.artwork_like(192, 144, seed=7)
    variants = {"orig": base, "resized": base.resize((160, 120)), "mirror": ImageOps.mirror(base),
                "other-photo": synthetic.photo_like(192, 144, seed=8), "other-art": synthetic.artwork_like(192, 144,
                                                                                                          seed=9)}
    urls = [fault_server.add_bytes(f"sem-{name}.jpg", synthetic.encode(im)) for name, im in variants.items()]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    out = tmp_path / "out"
    summary = build_bbst.main([
        "--urls", str(tmp_path / "urls.parquet"), "--out", str(out), "--min-side", "64", "--allow-private-network",
        "--classifier", ckpt, "--set", "dedup.near=false", "--set", "dedup.semantic.enabled=true",
        "--set", "dedup.semantic.embedding=style", "--set", "dedup.semantic.threshold=0.985",
        "--set", "split.style_min_score=0.0", "--set", "reader.rows_per_partition=3", "--set", "progress_interval_s=0"])
    meta, _ = check_invariants(out)
    rows = {r["url"].rsplit("/", 1)[-1][4:-4]: r for r in meta.to_pylist()}
    for name in ("resized", "mirror"):
        assert rows[name]["status"] == "semantic_duplicate", (name, rows[name]["error"])
        assert rows[name]["duplicate_of"] == rows["orig"]["key"] and "cosine" in rows[name]["error"]
    assert [rows[n]["status"] for n in ("orig", "other-photo", "other-art")] == ["ok"] * 3
    sem = summary["semantic_dedup"]
    assert summary["counts_by_status"]["semantic_duplicate"] == sem["semantic_duplicates"] == 2
    assert {(e["key"], e["duplicate_of"]) for e in sem["examples"]} == {
        (rows[n]["key"], rows["orig"]["key"]) for n in ("resized", "mirror")}
    # the embeddings of every scored row, beside the metadata, float16, keyed by the sample key; recorded
    emb = pa.concat_tables([pq.read_table(f) for f in sorted((out / semantic.EMBEDDINGS_DIR).glob("part-*.parquet"))])
    assert sorted(emb["key"].to_pylist()) == sorted(r["key"] for r in rows.values())
    assert emb.schema.field("embedding").type.value_type == pa.float16()
    record = json.loads((out / "bbst-run.json").read_text())
    assert {f"{semantic.EMBEDDINGS_DIR}/part-{p:06d}.parquet" for p in range(2)} <= set(record["files"])
    page = (out / schema.REPORT_FILE).read_text()
    assert "id='semantic-h'" in page and page.count("class='thumbs pair'") == 2
    assert page.count("data:image/jpeg") >= 4  # both images of each pair, from the staged bytes


@pytest.mark.ray
@pytest.mark.slow
def test_first_shards_are_written_while_the_last_partition_still_downloads(tmp_path, fault_server, ray_local):  # noqa: F811
    """Steps overlap (curate/flow.py): the shards of the first partitions do not wait for a slow last one."""
    import time

    urls = []
    for i in range(12):
        data = synthetic.encode(synthetic.make_image(i % 2, 120, 96, seed=300 + i))
        if i < 8:
            urls.append(fault_server.add_bytes(f"early{i}.jpg", data))
        else:  # the last partition's images arrive after 4 s

            def late(h, data=data):
                time.sleep(4)
                h.send_bytes(data, "image/jpeg")

            fault_server.routes[f"/late{i}.jpg"] = late
            urls.append(fault_server.url(f"late{i}.jpg"))
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    summary = build_bbst.main(["--urls", str(tmp_path / "urls.txt"), "--out", str(out), "--min-side", "64",
                               "--allow-private-network", "--set", "reader.rows_per_partition=4",
                               "--set", "ray.unit_rows=4", "--set", "shards.target_samples=2",
                               "--set", "download.timeout=20", "--set", "progress_interval_s=0",
                               "--set", "report=false"])
    check_invariants(out)
    assert summary["counts_by_status"]["ok"] == 12
    phases = summary["phase_seconds"]
    assert phases["until_first_shard"] < phases["read_download_check"] - 2, phases
    assert summary["dedup_waves"] >= 2
