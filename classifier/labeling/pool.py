"""Image pools for labeling: curated WebDataset shards, a folder of images, or a Parquet list of paths.

A pool is an index from ``key`` to where the bytes live, built once when the pool is opened. Bytes are only ever
read through that index, so a key sent by a client can name nothing outside the pool (no path traversal). Links
are checked again at read time: a file is opened component by component from a directory descriptor held since
the pool was opened, never following a link (``openat`` with ``O_NOFOLLOW``), so a symlink swapped in after start
is refused rather than followed. A folder pool follows the rule of every reader of a user's folder
(:func:`core.paths.resolve_within`): a file whose links lead out of the pool folder is not part of the pool but a
refused row (``Pool.refused``, status ``outside_root``), unless the user names the folder it leads into as well
(``roots``). Shards are indexed and read through :mod:`core.shards`. Downscaled JPEG
renditions for thumbnails and the focus view are cached in memory (bounded LRU) and, when ``cache_dir`` is
given, on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_write_bytes
from core.errors import BbstError
from core.images import is_image_name, thumbnail
from core.paths import OUTSIDE_ROOT, resolve_within
from core.schema import SHARDS_DIR
from core.shards import MemberRef, ShardFormatError, index_shard, read_member


class PoolError(BbstError, ValueError):
    """The pool specification cannot be opened (missing, empty, unknown layout)."""


class UnsafePathError(PoolError, PermissionError):
    """A pool file was replaced by a link, or by something that is not a regular file, after the pool was opened."""


@dataclass(frozen=True)
class PoolItem:
    """Where one pool image lives: a file, or a byte range inside a tar shard."""

    key: str
    path: str  # file path (links resolved when indexed), or the tar shard path
    offset: int = -1  # byte offset of the member data inside the tar; -1 for plain files
    size: int = -1  # member size inside the tar
    sha256: str | None = None  # known from the shard's JSON sidecar, else computed on first read
    rel: str | None = None  # folder pools: the resolved path relative to the pool root, opened from its descriptor

    @property
    def ref(self) -> str:
        """Human-readable source reference stored in the label database."""
        return f"{self.path}#{self.offset}" if self.offset >= 0 else self.path


class Pool:
    """Read-only key -> image bytes lookup over one of the supported layouts."""

    def __init__(self, items: list[PoolItem], source: str, cache_dir: str | Path | None = None,
                 memory_cache_bytes: int = 128 << 20, root: str | Path | None = None,
                 refused: list[dict] | None = None):
        # files found but not part of the pool: {"path", "status", "error"} rows (status outside_root)
        self.refused: list[dict] = list(refused or [])
        if not items:
            more = f" ({len(self.refused)} files refused, e.g. {self.refused[0]['error']})" if self.refused else ""
            raise PoolError(f"{source}: the pool holds no images{more}")
        self.source = source
        # folder pools keep a descriptor of their root: later reads walk down from it, so neither a link swapped
        # in below the root nor a rename of the root itself can redirect them
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY) if root is not None else None
        self._items = {it.key: it for it in items}
        if len(self._items) != len(items):
            raise PoolError(f"{source}: duplicate keys in the pool")
        self.keys: list[str] = [it.key for it in items]
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._mem: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._mem_bytes = 0
        self._mem_limit = memory_cache_bytes
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def item(self, key: str) -> PoolItem:
        try:
            return self._items[key]
        except (KeyError, TypeError):
            raise KeyError(f"no image with key {key!r} in the pool") from None

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def read_bytes(self, key: str) -> bytes:
        """Original encoded bytes of the image ``key``; raises ``KeyError`` for keys not in the pool and
        :class:`UnsafePathError` when the file has been replaced by a link since the pool was indexed."""
        it = self.item(key)
        if it.offset >= 0:
            _check_regular(it.path)
            try:
                return read_member(MemberRef(it.path, it.offset, it.size))
            except ShardFormatError as exc:
                raise OSError(str(exc)) from None
        if it.rel is not None and self._root_fd is not None:
            fd = open_beneath(self._root_fd, it.rel)
        else:
            fd = open_beneath(None, it.path)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def sha256(self, key: str, data: bytes | None = None) -> str:
        it = self.item(key)
        if it.sha256:
            return it.sha256
        return hashlib.sha256(data if data is not None else self.read_bytes(key)).hexdigest()

    def rendition(self, key: str, max_side: int, quality: int = 85) -> bytes:
        """JPEG of the image scaled to fit ``max_side`` (never upscaled), cached."""
        ck = (key, int(max_side))
        with self._lock:
            hit = self._mem.get(ck)
            if hit is not None:
                self._mem.move_to_end(ck)
                return hit
        disk = None
        if self._cache_dir is not None:
            name = hashlib.sha1(f"{self.source}|{key}".encode()).hexdigest()
            disk = self._cache_dir / str(max_side) / name[:2] / f"{name}.jpg"
            if disk.is_file():
                data = disk.read_bytes()
                self._remember(ck, data)
                return data
        data = thumbnail(self.read_bytes(key), max_side, quality)
        if disk is not None:
            atomic_write_bytes(disk, data)
        self._remember(ck, data)
        return data

    def _remember(self, ck: tuple[str, int], data: bytes) -> None:
        with self._lock:
            if ck in self._mem:
                return
            self._mem[ck] = data
            self._mem_bytes += len(data)
            while self._mem_bytes > self._mem_limit and self._mem:
                _, old = self._mem.popitem(last=False)
                self._mem_bytes -= len(old)


def _index_tar(tar_path: Path) -> list[PoolItem]:
    """Image members of a WebDataset shard with their byte ranges; sha256 from the ``{key}.json`` sidecar."""
    try:
        samples = index_shard(str(tar_path))
    except ShardFormatError as exc:
        raise PoolError(str(exc)) from None
    sidecars = _read_refs(str(tar_path), {s.key: s.members["json"] for s in samples if "json" in s.members})
    items = []
    for sample in samples:
        image = sample.image()
        if image is None:
            continue
        _, ref = image
        sha = None
        try:
            meta = json.loads(sidecars[sample.key]) if sample.key in sidecars else None
        except ValueError:
            meta = None
        if isinstance(meta, dict) and meta.get("sha256"):
            sha = str(meta["sha256"])
        items.append(PoolItem(sample.key, str(tar_path), ref.offset, ref.length, sha))
    return items


def _read_refs(url: str, refs: dict[str, MemberRef]) -> dict[str, bytes]:
    """The small members ``refs`` point at, read through one handle of the shard (``read_member`` opens the file
    for every member: tens of thousands of sidecars would cost more than indexing the shard)."""
    if not refs:
        return {}
    if len(refs) <= 8:
        return {k: read_member(r) for k, r in refs.items()}
    import fsspec

    out = {}
    with fsspec.open(url, "rb") as f:
        for key, ref in sorted(refs.items(), key=lambda kv: kv[1].offset):
            f.seek(ref.offset)
            data = f.read(ref.length)
            if len(data) == ref.length:
                out[key] = data
    return out


def _index_folder(root: Path, roots: Sequence[str] = ()) -> tuple[list[PoolItem], list[dict]]:
    """Items of a folder pool, and the refused rows of files whose links lead out of ``root`` and ``roots``."""
    root = root.resolve()
    items, refused = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith(".") or not is_image_name(fn):
                continue
            p = Path(dirpath) / fn
            resolved, outside = resolve_within(p, [root, *roots])
            real = Path(resolved)
            if outside:
                refused.append({"path": str(p), "status": OUTSIDE_ROOT, "error": outside})
                continue
            if not real.is_file():
                continue
            key = p.relative_to(root).as_posix()
            if real.is_relative_to(root):
                items.append(PoolItem(key, str(real), rel=real.relative_to(root).as_posix()))
            else:  # inside another folder the user named: opened by its resolved path, links refused there too
                items.append(PoolItem(key, str(real)))
    return items, refused


def _index_parquet(path: Path) -> list[PoolItem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise PoolError(f"{path}: not a readable Parquet file: {exc}") from None
    if "path" not in table.column_names:
        raise PoolError(f"{path}: a Parquet pool needs a 'path' column, found {table.column_names}")
    paths = table.column("path").to_pylist()
    keys = table.column("key").to_pylist() if "key" in table.column_names else paths
    shas = table.column("sha256").to_pylist() if "sha256" in table.column_names else [None] * len(paths)
    base = path.resolve().parent
    items = []
    for i, (k, p, s) in enumerate(zip(keys, paths, shas)):
        if not p or k is None:
            raise PoolError(f"{path}: row {i + 1} has an empty path or key")
        full = Path(p) if os.path.isabs(p) else base / p
        # links in the listed path are resolved once, here; a link found there at read time is refused
        items.append(PoolItem(str(k), str(full.resolve()), sha256=s))
    return items


def open_beneath(dir_fd: int | None, rel: str) -> int:
    """Open ``rel`` for reading, one component at a time from ``dir_fd`` (or ``/`` for an absolute ``rel``),
    following no link at any step; the result must be a regular file. Returns a file descriptor."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePathError(f"{rel!r}: not a path below the pool")
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    cur = os.open("/", os.O_RDONLY | os.O_DIRECTORY) if dir_fd is None else os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=cur)
            except OSError as exc:
                raise _link_error(rel, exc) from None
            os.close(cur)
            cur = nxt
        try:
            fd = os.open(parts[-1], os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=cur)
        except OSError as exc:
            raise _link_error(rel, exc) from None
    finally:
        os.close(cur)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(f"{rel}: not a regular file any more")
    return fd


def _link_error(rel: str, exc: OSError) -> OSError:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return UnsafePathError(f"{rel}: a link was found where the pool had a file or folder; refused")
    return exc


def _check_regular(path: str) -> None:
    """A local shard must still be a regular file, not a link swapped in after the pool was indexed."""
    if "://" in path:
        return
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path}: the shard was replaced by a link or special file; refused")


def open_pool(spec: str | Path, cache_dir: str | Path | None = None, roots: Sequence[str] = ()) -> Pool:
    """Open ``spec``: a curation run dir (``spec/shards/*.tar``), a dir of ``.tar`` shards, a single ``.tar``,
    a ``.parquet`` list of image paths (``path`` column, optional ``key``/``sha256``), or a folder of images.

    ``roots``: other folders a folder pool's links may lead into (by default only the pool folder itself)."""
    p = Path(spec)
    if not p.exists():
        raise PoolError(f"{p}: pool not found (expected a curation run dir, shards, a folder or a .parquet list)")
    if p.is_file():
        if p.suffix.lower() == ".parquet":
            items = _index_parquet(p)
        elif p.suffix.lower() == ".tar":
            items = _index_tar(p)
        else:
            raise PoolError(f"{p}: a pool file must be a .parquet list or a .tar shard")
    else:
        shard_dir = p / SHARDS_DIR if (p / SHARDS_DIR).is_dir() else p
        tars = sorted(shard_dir.glob("*.tar"))
        if tars:
            items = [it for t in tars for it in _index_tar(t)]
        else:
            items, refused = _index_folder(p, roots)
            return Pool(items, str(p), cache_dir=cache_dir, root=p.resolve(), refused=refused)
    return Pool(items, str(p), cache_dir=cache_dir)
