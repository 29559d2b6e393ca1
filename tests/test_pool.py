"""Pools: shards, folders and Parquet lists resolve keys only inside the pool; renditions are cached."""

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from label_pool import make_folder_pool, make_shard_pool
from PIL import Image

from classifier.labeling.pool import PoolError, open_pool


def test_shard_pool_reads_members_and_sidecar_sha(tmp_path):
    run = make_shard_pool(tmp_path / "run", 12, per_shard=5)
    pool = open_pool(run)
    assert len(pool) == 12 and pool.keys[0] == "0000000000000"
    data = pool.read_bytes("0000000000007")
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    import hashlib

    assert pool.item("0000000000007").sha256 == hashlib.sha256(data).hexdigest()
    assert len(open_pool(run / "shards" / "style-000001.tar")) == 5


def test_folder_pool_rejects_traversal_and_symlink_escape(tmp_path):
    root = make_folder_pool(tmp_path / "pool", 4)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes((root / "img00000.jpg").read_bytes())
    os.symlink(secret, root / "escape.jpg")
    (root / "notes.txt").write_text("not an image")
    pool = open_pool(root)
    assert sorted(pool.keys) == [f"img0000{i}.jpg" for i in range(4)]
    for bad in ["../secret.jpg", str(secret), "escape.jpg", "notes.txt", "img00000.jpg/../../secret.jpg", ""]:
        with pytest.raises(KeyError):
            pool.read_bytes(bad)
        assert bad not in pool


def test_folder_pool_link_out_is_a_refused_row_unless_its_folder_is_named(tmp_path):
    """The rule every reader of a user's folder follows (core.paths): outside_root rows, or named roots."""
    root = make_folder_pool(tmp_path / "pool", 2)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "art.jpg").write_bytes((root / "img00000.jpg").read_bytes())
    os.symlink(shared / "art.jpg", root / "linked.jpg")
    os.symlink("/etc/hostname", root / "host.jpg")
    pool = open_pool(root)
    assert sorted(pool.keys) == ["img00000.jpg", "img00001.jpg"]
    assert [(r["path"], r["status"]) for r in pool.refused] == [(str(root / "host.jpg"), "outside_root"),
                                                              (str(root / "linked.jpg"), "outside_root")]
    assert f"leads to {shared / 'art.jpg'}, outside" in pool.refused[1]["error"]
    named = open_pool(root, roots=[str(shared)])
    assert "linked.jpg" in named and named.read_bytes("linked.jpg") == (shared / "art.jpg").read_bytes()
    assert [r["path"] for r in named.refused] == [str(root / "host.jpg")]


def test_parquet_pool_relative_paths(tmp_path):
    root = make_folder_pool(tmp_path / "imgs", 3)
    pq.write_table(pa.table({"path": [f"imgs/img0000{i}.jpg" for i in range(3)], "key": ["a", "b", "c"]}),
                   tmp_path / "list.parquet")
    pool = open_pool(tmp_path / "list.parquet")
    assert pool.keys == ["a", "b", "c"]
    assert pool.read_bytes("b") == (root / "img00001.jpg").read_bytes()
    pq.write_table(pa.table({"file": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(PoolError, match="bad.parquet: a Parquet pool needs a 'path' column"):
        open_pool(tmp_path / "bad.parquet")


def test_missing_and_empty_pools(tmp_path):
    with pytest.raises(PoolError, match="pool not found"):
        open_pool(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="holds no images"):
        open_pool(tmp_path / "empty")


def test_rendition_downscales_and_caches(tmp_path):
    root = make_folder_pool(tmp_path / "pool", 2, size=300)
    pool = open_pool(root, cache_dir=tmp_path / "thumbs")
    thumb = pool.rendition("img00001.jpg", 128)
    assert max(Image.open(io.BytesIO(thumb)).size) == 128
    assert len(list((tmp_path / "thumbs").rglob("*.jpg"))) == 1
    assert pool.rendition("img00001.jpg", 128) is thumb  # memory hit
    fresh = open_pool(root, cache_dir=tmp_path / "thumbs")
    assert fresh.rendition("img00001.jpg", 128) == thumb  # disk hit after a restart
    assert max(Image.open(io.BytesIO(pool.rendition("img00000.jpg", 1024))).size) == 300  # never upscaled


def test_links_swapped_in_after_start_are_refused_at_read_time(tmp_path):
    from classifier.labeling.pool import UnsafePathError

    root = make_folder_pool(tmp_path / "pool", 2)
    (root / "sub").mkdir()
    (root / "sub" / "img.jpg").write_bytes((root / "img00000.jpg").read_bytes())
    os.symlink(root / "img00001.jpg", root / "alias.jpg")  # a link inside the pool, there when it was opened
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"\xff\xd8\xff secret")
    (outside / "img.jpg").write_bytes(b"\xff\xd8\xff secret too")
    pool = open_pool(root)
    assert pool.read_bytes("alias.jpg") == (root / "img00001.jpg").read_bytes()
    assert pool.read_bytes("sub/img.jpg") == (root / "img00000.jpg").read_bytes()
    # the file, then a folder on its path, are replaced by links pointing out of the pool
    (root / "img00000.jpg").unlink()
    os.symlink(outside / "secret.jpg", root / "img00000.jpg")
    with pytest.raises(UnsafePathError, match="link"):
        pool.read_bytes("img00000.jpg")
    os.rename(root / "sub", tmp_path / "sub-moved")
    os.symlink(outside, root / "sub")
    with pytest.raises(UnsafePathError, match="link"):
        pool.read_bytes("sub/img.jpg")
    # a FIFO in place of a file is refused too, without blocking
    (root / "img00001.jpg").unlink()
    os.mkfifo(root / "img00001.jpg")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        pool.read_bytes("alias.jpg")
    # a shard replaced by a link after indexing
    run = make_shard_pool(tmp_path / "run", 3)
    shards = open_pool(run)
    tar = run / "shards" / "style-000000.tar"
    tar.rename(tmp_path / "moved.tar")
    os.symlink(tmp_path / "moved.tar", tar)
    with pytest.raises(UnsafePathError, match="shard was replaced"):
        shards.read_bytes(shards.keys[0])
