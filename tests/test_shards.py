"""The shard format reader: header-only index, ranged member reads, sequential streaming from an offset."""

import tarfile
from pathlib import Path

import pytest

from core.errors import BbstError
from core.shards import ShardFormatError, index_shard, index_shard_by_key, iter_samples, read_member, read_sample
from core.tarwrite import write_shard


def _shard(tmp_path, n=5):
    samples = [{"key": f"k{i:03d}", "ext": "jpg" if i % 2 else "png", "image": bytes([i]) * (100 + 700 * i),
                "score": i / 10} for i in range(n)]
    url = str(tmp_path / "style-000000.tar")
    write_shard(url, samples)
    return url, samples


def test_index_and_read_by_reference(tmp_path):
    url, samples = _shard(tmp_path)
    index = index_shard(url)
    assert [s.key for s in index] == [s["key"] for s in samples]
    for s, want in zip(index, samples):
        ext, ref = s.image()
        assert ext == want["ext"] and read_member(ref) == want["image"]
        assert b'"score"' in read_sample(s, exts=("json",))["json"]
    assert set(index_shard_by_key(url)) == {s["key"] for s in samples}


def test_iter_samples_resumes_at_any_sample_offset(tmp_path):
    url, samples = _shard(tmp_path)
    everything = list(iter_samples(url))
    assert [s["__key__"] for _, s in everything] == [s["key"] for s in samples]
    offsets = [off for off, _ in everything]
    assert offsets == [s.offset for s in index_shard(url)]
    tail = list(iter_samples(url, offsets[3]))
    assert [s["__key__"] for _, s in tail] == ["k003", "k004"]
    assert tail[0][1]["jpg"] == samples[3]["image"]


def test_damaged_shards_raise_the_user_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ShardFormatError, match="bad.tar"):
        index_shard(str(bad))
    with pytest.raises(BbstError, match="not found"):
        index_shard(str(tmp_path / "missing.tar"))
    url, _ = _shard(tmp_path)
    ref = index_shard(url)[-1].image()[1]
    data = Path(url).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: ref.offset + 10])
    with pytest.raises(ShardFormatError, match="truncated"):
        read_member(type(ref)(str(cut), ref.offset, ref.length))


def test_plain_tar_members_with_dirs_and_multi_dot_keys(tmp_path):
    path = tmp_path / "plain.tar"
    import io

    with tarfile.open(path, "w") as tf:
        for name, data in [("sub/a.b.jpg", b"x" * 10), ("sub/a.b.json", b"{}"), ("sub/c.png", b"y")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    index = index_shard(str(path))
    assert [(s.key, sorted(s.members)) for s in index] == [("a", ["b.jpg", "b.json"]), ("c", ["png"])]
