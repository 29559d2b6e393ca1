"""Shard writing: deterministic WebDataset tar shards, a wids shard-index manifest and Parquet metadata, atomically."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core.atomic import atomic_write

TAR_MTIME = 0  # fixed member mtime: the same samples always give byte-identical tars
TAR_HEADER = 512  # bytes per tar member header; data is padded to 512-byte blocks
JSON_ESTIMATE = 1024  # bytes a sample's .json member takes in plan_shards' size estimate (header + body)
MANIFEST_KIND = "wids-shard-index-v1"


class _HashingWriter:
    """File wrapper that hashes and counts what passes through (one pass: no re-read to checksum the shard).

    The MD5 runs on a helper thread, one write behind, while the file write runs in the caller: hashlib and file
    writes release the GIL for large buffers, so the two passes over a shard's bytes overlap. Call :meth:`close`
    (or read :attr:`md5` after it) before using the digest.
    """

    def __init__(self, f):
        from concurrent.futures import ThreadPoolExecutor

        self.f = f
        self.md5 = hashlib.md5()
        self.size = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="bbst-md5")
        self._pending = None

    def write(self, data) -> int:
        data = bytes(data) if not isinstance(data, bytes) else data  # the helper thread needs immutable bytes
        if self._pending is not None:
            self._pending.result()  # in order, and at most one buffer held by the helper
        self._pending = self._pool.submit(self.md5.update, data)
        self.f.write(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        """Wait for the helper thread (the digests are complete afterwards); the file itself stays open."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        self._pool.shutdown()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("binary values cannot go into the JSON metadata")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def sample_json(sample: Mapping[str, Any]) -> bytes:
    """The ``.json`` member of a sample: every field except the image bytes, keys sorted, compact."""
    meta = {}
    for k, v in sample.items():
        if k == "image":
            continue
        try:
            meta[k] = _jsonable(v)
        except TypeError as exc:
            raise TypeError(f"sample {sample.get('key')}: field {k!r}: {exc}") from None
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_shard(url: str, samples: Iterable[Mapping[str, Any] | tuple], fs=None, ordered: bool = False,
                ) -> dict[str, Any]:
    """Write one tar shard atomically and return its manifest entry.

    Each sample is a mapping with ``key`` (no dots), ``ext`` (``jpg``/``png``), ``image`` (the bytes) and any
    other fields, which go to the ``{key}.json`` member; or a tuple ``(key, ext, image, meta_dict)``. Members
    are ``{key}.{ext}`` and ``{key}.json``, samples sorted by key, with fixed mtime/owner so the same samples
    always produce the same bytes. ``samples`` may come in any order (they are sorted here, so all of them are
    held at once); with ``ordered=True`` they must already be in increasing key order and are written as they
    come, one in memory at a time (an iterator whose image bytes are read lazily keeps a large shard small).
    A bad sample raises ``ValueError`` and nothing is written.
    Returns ``{"url", "nsamples", "filesize", "md5sum"}`` (the MD5 is the checksum wids verifies a shard by).
    """
    if not ordered:
        samples = sorted((_as_sample(s) for s in samples), key=lambda s: s["key"])

    def write(f) -> tuple[_HashingWriter, int]:
        # the member layout of webdataset's TarWriter (members of a sample in sorted extension order, fixed
        # owner, mode and mtime) as tarfile's stream mode ("w|") writes it, byte for byte: each member's header
        # from the standard library, its data in one write (not tarfile's 10 KiB records), zero padding to
        # 512-byte blocks, two zero blocks at the end, the archive padded to a whole 10 KiB record
        import tarfile

        hashing = _HashingWriter(f)
        count, previous = 0, None
        try:
            offset, pad = 0, b""
            for s in map(_as_sample, samples):
                previous = _check_sample(url, s, previous)
                count += 1
                members = {str(s["ext"]): bytes(s["image"]), "json": sample_json(s)}
                for ext in sorted(members):
                    data = members[ext]
                    ti = tarfile.TarInfo(f"{s['key']}.{ext}")
                    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), TAR_MTIME, 0o444, "bbst", "bbst"
                    header = ti.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape")
                    hashing.write(pad + header)
                    hashing.write(data)
                    pad = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
                    offset += len(header) + len(data) + len(pad)
            offset += 2 * tarfile.BLOCKSIZE
            hashing.write(pad + b"\0" * (2 * tarfile.BLOCKSIZE + -offset % tarfile.RECORDSIZE))
        finally:
            hashing.close()
        return hashing, count

    hashing, count = atomic_write(url, write, fs=fs)
    return {"url": url, "nsamples": count, "filesize": hashing.size, "md5sum": hashing.md5.hexdigest()}


def _check_sample(url: str, s: Mapping[str, Any], previous: str | None) -> str:
    """Raise ``ValueError`` for a sample that cannot be written after the key ``previous``; returns its key."""
    key, ext = str(s["key"]), str(s.get("ext") or "")
    if not key or "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must be non-empty with no '.' or '/' (WebDataset splits on them)")
    if ext not in ("jpg", "png"):
        raise ValueError(f"sample {key}: ext must be 'jpg' or 'png', got {ext!r}")
    if not isinstance(s.get("image"), (bytes, bytearray, memoryview)) or not len(s["image"]):
        raise ValueError(f"sample {key}: no image bytes")
    if previous is not None and key <= previous:
        raise ValueError(f"{url}: duplicate sample keys in one shard ({key})" if key == previous else
                         f"{url}: samples out of key order ({key} after {previous})")
    return key


def _as_sample(sample: Mapping[str, Any] | tuple) -> Mapping[str, Any]:
    if isinstance(sample, Mapping):
        return sample
    key, ext, image, meta = sample
    return {**(meta or {}), "key": key, "ext": ext, "image": image}


def padded_size(n: int) -> int:
    """Bytes an ``n``-byte member takes in a tar: its header plus the data padded to 512-byte blocks."""
    return TAR_HEADER + (n + 511) // 512 * 512


def plan_shards(rows: Sequence[Any], max_samples: int, max_bytes: int, size_field: str = "num_bytes",
                ) -> list[list[Any]]:
    """Pack rows into shards deterministically: sorted by key, filled in order up to both limits.

    ``rows`` are mappings with ``key`` and ``size_field`` (the image byte size), or ``(key, size)`` tuples. A
    shard closes when the next sample would take it over ``max_samples`` or over ``max_bytes`` (estimated tar
    size: headers, padding and the JSON member); a single sample larger than ``max_bytes`` gets its own shard.
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be >= 1")

    def key_size(row: Any) -> tuple[str, int]:
        if isinstance(row, Mapping):
            return str(row["key"]), int(row.get(size_field) or 0)
        return str(row[0]), int(row[1] or 0)

    shards: list[list[Any]] = []
    current: list[Any] = []
    current_bytes = 1024  # end-of-archive blocks
    for row in sorted(rows, key=lambda r: key_size(r)[0]):
        size = padded_size(key_size(row)[1]) + JSON_ESTIMATE
        if current and (len(current) >= max_samples or current_bytes + size > max_bytes):
            shards.append(current)
            current, current_bytes = [], 1024
        current.append(row)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def write_manifest(url: str, shard_entries: Iterable[Mapping[str, Any]], name: str,
                   extra: Mapping[str, Any] | None = None, fs=None) -> dict[str, Any]:
    """Write a wids shard index (``wids-shard-index-v1``) listing ``shard_entries`` sorted by url, atomically.

    Entries need ``url``, ``nsamples`` and ``filesize``; other fields (``md5sum``, ``subset``, ...)
    are kept. wids resolves relative shard urls against the index's own location.
    """
    shardlist = []
    for entry in shard_entries:
        missing = {"url", "nsamples", "filesize"} - set(entry)
        if missing:
            raise ValueError(f"manifest entry {dict(entry)} lacks {sorted(missing)}")
        shardlist.append({k: _jsonable(v) for k, v in entry.items()})
    shardlist.sort(key=lambda e: e["url"])
    index = {"__kind__": MANIFEST_KIND, "wids_version": 1, "name": name, **(dict(extra) if extra else {}),
             "shardlist": shardlist}
    data = json.dumps(index, indent=1, sort_keys=False).encode("utf-8")
    atomic_write(url, lambda f: f.write(data), fs=fs)
    return index


def read_manifest(url: str, fs=None) -> dict[str, Any]:
    """Read a manifest written by :func:`write_manifest` (checks its kind)."""
    import fsspec

    fs, path = (fs, fs._strip_protocol(url)) if fs is not None else fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        index = json.load(f)
    if index.get("__kind__") != MANIFEST_KIND:
        raise ValueError(f"{url}: not a {MANIFEST_KIND} file (kind {index.get('__kind__')!r})")
    return index


def write_meta_parquet(url: str, table, fs=None) -> None:
    """Write a pyarrow Table (or a dict of columns) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.table(table)
    atomic_write(url, lambda f: pq.write_table(table, f, compression="zstd"), fs=fs)
