"""A run directory on any fsspec filesystem (local folder or object-store prefix), written only through atomic_write.

Every worker of a build opens the same :class:`Store` (it pickles as its URL and storage options, so a Ray task on
another node rebuilds its own filesystem client), which is why nothing a build writes depends on a file that only
exists on the driver's node.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write


class Store:
    """Paths relative to the run directory ``url``; reads, atomic writes and removals of bbst's own files."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        import fsspec

        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.root = root.rstrip("/") or "/"

    def __reduce__(self):  # a fresh client on every worker (fsspec clients hold sockets and event loops)
        return Store, (self.url, self.storage_options)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *(p.strip("/") for p in parts if p)])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def isfile(self, *parts: str) -> bool:
        return self.fs.isfile(self.path(*parts))

    def ls(self, *parts: str) -> list[str]:
        """Names (not paths) in a folder, sorted; [] when it does not exist."""
        p = self.path(*parts)
        try:
            return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False))
        except FileNotFoundError:
            return []

    def open(self, rel: str, mode: str = "rb"):
        return self.fs.open(self.path(rel), mode)

    def write_bytes(self, rel: str, data: bytes) -> None:
        atomic_write(self.path(rel), lambda f: f.write(data), fs=self.fs)

    def write_with(self, rel: str, write_fn) -> Any:
        """``write_fn(fileobj)`` under ``rel``, visible only once complete; returns what ``write_fn`` returns."""
        return atomic_write(self.path(rel), write_fn, fs=self.fs)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "rb") as f:
            return json.load(f)

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.read_table(f, columns=columns, filters=filters)

    def rm(self, rel: str, recursive: bool = False) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=recursive)
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        with self.fs.open(self.path(rel), "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise OSError(f"{self.path(rel)}: short read at offset {offset} ({len(data)} of {length} bytes)")
        return data
