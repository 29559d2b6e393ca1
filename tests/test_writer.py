"""Writer: deterministic tar shards with checksums, shard planning, wids manifest, atomic Parquet."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from core import synthetic
from core.tarwrite import plan_shards, read_manifest, write_manifest, write_meta_parquet, write_shard


def samples(n=5):
    out = []
    for i in range(n):
        img = synthetic.photo_like(64, 48, seed=i)
        ext = "png" if i % 2 else "jpg"
        out.append({"key": f"{i:013d}", "ext": ext, "image": synthetic.encode(img, "PNG" if ext == "png" else "JPEG"),
                    "url": f"http://h/{i}", "width": np.int64(64), "score": float("nan") if i == 0 else 0.5})
    return out


def test_shard_members_checksums_and_determinism(tmp_path):
    s = samples()
    a = write_shard(str(tmp_path / "style-000000.tar"), list(reversed(s)))
    b = write_shard(str(tmp_path / "copy.tar"), s)
    data = (tmp_path / "style-000000.tar").read_bytes()
    assert a["nsamples"] == 5 and a["filesize"] == len(data)
    assert a["md5sum"] == hashlib.md5(data).hexdigest() and "sha256" not in a
    assert (a["md5sum"], a["filesize"]) == (b["md5sum"], b["filesize"])  # input order does not matter
    with tarfile.open(tmp_path / "style-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members][:2] == ["0000000000000.jpg", "0000000000000.json"]
        assert {m.mtime for m in members} == {0}
        meta = json.loads(tar.extractfile("0000000000001.json").read())
        assert tar.extractfile("0000000000001.png").read() == s[1]["image"]
    assert meta["url"] == "http://h/1" and meta["width"] == 64 and "image" not in meta
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary files left


def test_shard_bytes_match_the_standard_tar_stream_writer(tmp_path):
    """The shard is byte for byte what tarfile's stream mode writes for the same members (long names and
    non-ASCII metadata included, and sizes at, below and above a 512-byte block)."""
    import io

    from core.tarwrite import sample_json

    s = [{"key": "k" * 120, "ext": "jpg", "image": b"\xff" * 512, "note": "caf\u00e9"},
         {"key": "b", "ext": "png", "image": b"p" * 511},
         {"key": "c", "ext": "jpg", "image": os.urandom(10_241)}]
    entry = write_shard(str(tmp_path / "x.tar"), s)
    ref = io.BytesIO()
    with tarfile.open(fileobj=ref, mode="w|") as tar:
        for sample in sorted(s, key=lambda x: x["key"]):
            members = {sample["ext"]: sample["image"], "json": sample_json(sample)}
            for ext in sorted(members):
                ti = tarfile.TarInfo(f"{sample['key']}.{ext}")
                ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(members[ext]), 0, 0o444, "bbst", "bbst"
                tar.addfile(ti, io.BytesIO(members[ext]))
    assert (tmp_path / "x.tar").read_bytes() == ref.getvalue()
    assert entry["md5sum"] == hashlib.md5(ref.getvalue()).hexdigest()


def test_webdataset_reads_it_back(tmp_path):
    s = samples(4)
    write_shard(str(tmp_path / "s.tar"), s)
    got = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False))
    assert [g["__key__"] for g in got] == [x["key"] for x in s]
    assert got[1]["png"] == s[1]["image"] and json.loads(got[0]["json"])["score"] is None


def test_bad_samples_rejected_before_writing(tmp_path):
    for bad in ({"key": "a.b", "ext": "jpg", "image": b"x"}, {"key": "a", "ext": "gif", "image": b"x"},
                {"key": "a", "ext": "jpg", "image": None}):
        with pytest.raises(ValueError):
            write_shard(str(tmp_path / "bad.tar"), [bad])
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(str(tmp_path / "bad.tar"), samples(2) + samples(1))
    assert os.listdir(tmp_path) == []


def test_ordered_samples_are_streamed(tmp_path):
    """ordered=True writes from an iterator as it comes (same bytes as the sorted list); order is enforced."""
    s = samples()
    pulled: list[str] = []

    def lazily():
        for x in s:
            pulled.append(x["key"])
            yield x

    a = write_shard(str(tmp_path / "list.tar"), list(reversed(s)))
    b = write_shard(str(tmp_path / "stream.tar"), lazily(), ordered=True)
    assert (a["md5sum"], a["nsamples"]) == (b["md5sum"], b["nsamples"]) and pulled == [x["key"] for x in s]
    with pytest.raises(ValueError, match="out of key order"):
        write_shard(str(tmp_path / "bad.tar"), iter(list(reversed(s))), ordered=True)
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(str(tmp_path / "bad.tar"), iter(s[:2] + s[1:2]), ordered=True)
    assert sorted(os.listdir(tmp_path)) == ["list.tar", "stream.tar"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from core import tarwrite as writer

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "sample_json", boom)
    with pytest.raises(OSError):
        write_shard(str(tmp_path / "s.tar"), samples(2))
    assert os.listdir(tmp_path) == []


def test_plan_shards_limits_and_order():
    rows = [{"key": f"{i:013d}", "num_bytes": 3000} for i in reversed(range(10))]
    plan = plan_shards(rows, max_samples=4, max_bytes=10**9)
    assert [len(p) for p in plan] == [4, 4, 2]
    assert [r["key"] for p in plan for r in p] == sorted(r["key"] for r in rows)
    by_bytes = plan_shards(rows, max_samples=100, max_bytes=3 * (512 + 3072 + 1024) + 1024)
    assert [len(p) for p in by_bytes] == [3, 3, 3, 1]
    assert plan_shards([("a", 10**9)], 10, 1000) == [[("a", 10**9)]]  # oversize sample gets its own shard
    assert plan_shards([], 10, 1000) == []


def test_manifest_is_wids_index(tmp_path):
    e1 = write_shard(str(tmp_path / "style-000001.tar"), samples(2))
    e0 = write_shard(str(tmp_path / "content-000000.tar"), samples(3))
    entries = [{**e1, "url": "style-000001.tar", "subset": "style"}, {**e0, "url": "content-000000.tar",
                                                                       "subset": "content"}]
    write_manifest(str(tmp_path / "manifest.json"), entries, name="demo")
    index = read_manifest(str(tmp_path / "manifest.json"))
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1 and index["name"] == "demo"
    assert [e["url"] for e in index["shardlist"]] == ["content-000000.tar", "style-000001.tar"]
    assert index["shardlist"][0]["nsamples"] == 3 and index["shardlist"][0]["md5sum"] == e0["md5sum"]
    with pytest.raises(ValueError, match="lacks"):
        write_manifest(str(tmp_path / "m2.json"), [{"url": "x"}], name="x")
    wids = pytest.importorskip("wids")
    ds = wids.ShardListDataset(str(tmp_path / "manifest.json"), transformations=[])
    assert len(ds) == 5 and ds[0][".json"] is not None


def test_meta_parquet_atomic(tmp_path):
    path = str(tmp_path / "meta" / "part-000000.parquet")
    write_meta_parquet(path, {"key": ["a", "b"], "status": ["ok", "too_small"], "width": [1024, None]})
    table = pq.read_table(path)
    assert table.column("status").to_pylist() == ["ok", "too_small"]
    write_meta_parquet(path, pa.table({"key": ["c"]}))  # replaces atomically
    assert pq.read_table(path).num_rows == 1
    assert [n for n in os.listdir(tmp_path / "meta")] == ["part-000000.parquet"]


def test_explicit_filesystem_and_tuple_samples(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    s = samples(2)
    tuples = [(x["key"], x["ext"], x["image"], {"url": x["url"]}) for x in s]
    entry = write_shard(str(tmp_path / "t.tar"), tuples, fs=fs)
    assert entry["nsamples"] == 2
    got = list(wds.WebDataset(str(tmp_path / "t.tar"), shardshuffle=False))
    assert json.loads(got[1]["json"]) == {"key": s[1]["key"], "ext": "png", "url": s[1]["url"]}
    write_manifest(str(tmp_path / "m.json"), [entry], name="t", fs=fs)
    assert read_manifest(str(tmp_path / "m.json"), fs=fs)["shardlist"][0]["md5sum"] == entry["md5sum"]


def test_binary_metadata_is_a_clear_error(tmp_path):
    bad = {**samples(1)[0], "thumbnail": np.bytes_(b"\x00\x01")}
    with pytest.raises(TypeError, match="field 'thumbnail'"):
        write_shard(str(tmp_path / "b.tar"), [bad])
    assert os.listdir(tmp_path) == []
