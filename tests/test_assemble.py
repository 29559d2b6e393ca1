"""Ray-free assembly steps: dedup decisions per partition, split, shard plan, shards, metadata, summary, rescore."""

from __future__ import annotations

import hashlib
import random
import tarfile

import pyarrow as pa
import pytest

from core import schema
from core.store import Store
from core.tarwrite import plan_shards
from curate import assemble, staging
from curate.split import SplitConfig


def _rows(store: Store, p: int, n: int, subset_of=lambda i: "style") -> pa.Table:
    """Partition ``p``: n ok rows whose bytes are staged in one unit file."""
    keys = [schema.make_key(p, i) for i in range(n)]
    datas = [hashlib.sha256(k.encode()).digest() * (1 + i % 3) for i, k in enumerate(keys)]
    rel = staging.unit_bin_rel(p, 0)
    store.write_bytes(rel, b"".join(datas))
    offsets = [sum(len(d) for d in datas[:i]) for i in range(n)]
    return pa.table({"key": keys, "url": [f"http://x/{k}" for k in keys], "source": ["behance"] * n,
                     "status": ["ok"] * n, "error": pa.nulls(n, pa.string()), "ext": ["jpg"] * n,
                     "sha256": [hashlib.sha256(d).hexdigest() for d in datas], "phash": pa.nulls(n, pa.string()),
                     "subset": [subset_of(i) for i in range(n)],
                     "_ref_path": [rel] * n, "_ref_offset": offsets, "_ref_length": [len(d) for d in datas]})


def test_planner_matches_plan_shards_across_partitions():
    rng = random.Random(1)
    members = [(schema.make_key(p, i), rng.randint(100, 5000)) for p in range(3) for i in range(rng.randint(0, 40))]
    planner = assemble.ShardPlanner(max_samples=7, max_bytes=20_000)
    for p in range(3):
        mine = [(k, s) for k, s in members if k.startswith(f"{p:06d}")]
        rng.shuffle(mine)
        planner.add_partition(p, [k for k, _ in mine], ["style"] * len(mine), [s for _, s in mine])
    specs = planner.finish()
    expected = plan_shards(members, max_samples=7, max_bytes=20_000)
    assert [(s.first, s.last, s.nsamples) for s in specs] == [(g[0][0], g[-1][0], len(g)) for g in expected]
    assert [s.name for s in specs] == [schema.shard_name("style", i) for i in range(len(expected))]
    keys = [k for k, _ in members]
    shard = assemble.shard_of_keys(keys, ["style"] * len(keys), ["ok"] * len(keys), specs)
    assert shard == [schema.shard_name("style", i) for i, g in enumerate(expected) for _ in g]
    assert assemble.shard_of_keys(keys[:1], ["content"], ["ok"], specs) == [None]


def test_planned_shard_is_written_verified_and_reused(tmp_path):
    store = Store(str(tmp_path))
    rows = _rows(store, 0, 5, subset_of=lambda i: "style" if i % 2 else "content")
    store.write_parquet(assemble.final_rel(0), rows)
    specs = assemble.plan_from_final(store, [0], max_samples=10, max_bytes=10**9)
    assert [(s["subset"], s["nsamples"]) for s in specs] == [("content", 3), ("style", 2)]
    entry = assemble.write_planned_shard(store, specs[0])
    assert entry["reused"] is False and assemble.verify_shard(store, specs[0]["name"], entry)
    with tarfile.open(tmp_path / schema.SHARDS_DIR / specs[0]["name"]) as tf:
        names = tf.getnames()
    assert names == [f"{schema.make_key(0, i)}.{ext}" for i in (0, 2, 4) for ext in ("jpg", "json")]
    assert assemble.write_planned_shard(store, specs[0])["reused"] is True
    (tmp_path / schema.SHARDS_DIR / specs[0]["name"]).write_bytes(b"damaged")
    assert assemble.write_planned_shard(store, specs[0])["reused"] is False


def test_meta_account_and_summary(tmp_path):
    store = Store(str(tmp_path))
    rows = _rows(store, 2, 4)
    rows = assemble.set_column(rows, "status", ["ok", "too_small", "ok", "too_small"])
    rows = assemble.set_column(rows, "error", [None, "short side 10", None, "short side 20"])
    rows = assemble.set_column(rows, "license", ["a", "b", "c", "d"])
    store.write_parquet(assemble.final_rel(2), rows)
    specs = assemble.plan_from_final(store, [2], 10, 10**9)
    acc = assemble.write_partition_meta(store, 2, specs)
    meta = store.read_parquet(f"{schema.META_DIR}/{schema.meta_name(2)}")
    assert meta.column_names[: len(schema.META_COLUMNS)] == list(schema.META_COLUMNS)
    assert "license" in meta.column_names and "_ref_path" not in meta.column_names
    assert meta["shard"].to_pylist() == ["style-000000.tar", None, "style-000000.tar", None]
    total = assemble.add_accounts([acc, {"rows": 1, "statuses": {"not_image": 1}, "examples": {"not_image": "x"}}])
    summary = assemble.make_summary(total, [{"filesize": 10}], 2.0, 1.0, "none", "out")
    assert summary["rows_in"] == 5 and summary["counts_by_status"]["too_small"] == 2
    assert summary["error_examples"] == {"not_image": "x", "too_small": "short side 10"}
    assert summary["counts_by_subset"]["style"] == 2 and summary["images_per_second"] == 1.0
    with pytest.raises(RuntimeError, match="vocabulary"):
        assemble.make_summary(assemble.add_accounts([{"statuses": {"bogus": 1}}]), [], 1, 0, "", "")


def test_scores_and_split_applied():
    rows = pa.table({"key": ["a", "b", "c"], "status": ["ok", "ok", "too_small"], "error": [None, None, "x"],
                     "source": ["behance", "flickr", "flickr"]})
    scores = pa.table({"key": ["a", "b"], "score": [0.9, float("nan")], "classifier_version": ["v1", "v1"],
                       "status": ["ok", "score_error"], "error": [None, "decode failed"]})
    merged = assemble.merge_scores(rows, scores)
    assert merged["score"].to_pylist() == [0.9, None, None]
    assert merged["status"].to_pylist() == ["ok", "score_error", "too_small"]
    split = assemble.apply_split(merged, SplitConfig(style_min_score=0.5, content_max_score=0.5))
    assert split["subset"].to_pylist()[0] == "style"


def test_distributed_dedup_decisions_read_back_per_partition(tmp_path):
    from curate.dedup import dedup_in_process

    store = Store(str(tmp_path))
    keys = [schema.make_key(0, 0), schema.make_key(0, 1), schema.make_key(1, 0), schema.make_key(1, 1)]
    dups, near = dedup_in_process(keys, ["s1", "s2", "s1", "s3"], ["00" * 8, "ff" * 8, "00" * 8, "ff" * 8 + ""])
    rel = f"{schema.DEDUP_DIR}/wave-000002"
    store.write_parquet(f"{rel}/exact-0000.parquet",
                        pa.table({"key": pa.array(list(dups), pa.int64()), "dup_of": pa.array(list(dups.values()))}))
    store.write_parquet(f"{rel}/near.parquet",
                        pa.table({"key": pa.array(list(near), pa.int64()), "dup_of": pa.array(list(near.values()))}))
    d1, n1 = assemble.load_decisions(store, 1, rel)
    assert d1 == {int(keys[2]): int(keys[0])} and n1 == {int(keys[3]): int(keys[1])}
    assert assemble.load_decisions(store, 0, rel) == ({}, {})
    assert assemble.load_decisions(store, 1, None) == ({}, {})


def test_rescore_rows_reopen_samples_found_in_old_shards():
    meta = pa.table({"key": ["a", "b", "c"], "status": ["ok", "score_filtered", "too_small"],
                     "error": [None, "score", "small"], "score": [0.1, 0.2, None], "classifier_version": ["v"] * 3,
                     "subset": ["style", None, None], "shard": ["style-000000.tar", None, None]})
    index = pa.table({"key": ["a"], "_ref_path": ["old.tar"], "_ref_offset": [512], "_ref_length": [9],
                      "ext": ["jpg"]})
    rows = assemble.rescore_rows(meta, index)
    assert rows["status"].to_pylist() == ["ok", "score_filtered", "too_small"]
    assert rows["score"].to_pylist() == [None, 0.2, None] and rows["shard"].to_pylist() == [None] * 3
    assert rows["_ref_offset"].to_pylist() == [512, None, None]
