"""The one atomic write: a file appears at its URL only once complete (local files and object stores).

Every writer of a file that another process, a resumed run or a live session may read (shards, manifests,
Parquet metadata, checkpoints, feature caches, configs, reports) goes through :func:`atomic_write`, so a crash
never leaves a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from typing import Any


def _fs(url: str):
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _tmp_name(path: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}")


def atomic_write(url: str | os.PathLike, write_fn, fs=None) -> Any:
    """Call ``write_fn(fileobj)`` so the file appears at ``url`` only once complete.

    ``fs`` is an fsspec filesystem to use (e.g. one built with S3 endpoint/credential options); without it the
    filesystem is inferred from the URL.

    Local and POSIX-like filesystems: write to a hidden temporary name in the same folder, then rename over
    the target. Object stores (s3://, gs://, ...): write the object directly; a PUT/multipart upload becomes
    visible only when it completes, which is the same guarantee, and a rename there would be a full copy. If
    ``write_fn`` raises, the upload is discarded (fsspec's own ``with`` would complete it with what was written).
    """
    url = os.fspath(url)
    fs, path = (fs, fs._strip_protocol(url)) if fs is not None else _fs(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not _is_local(fs):
        f = fs.open(path, "wb")
        try:
            result = write_fn(f)
        except BaseException:
            _abandon(f)
            raise
        f.close()
        return result
    tmp = _tmp_name(path)
    try:
        with fs.open(tmp, "wb") as f:
            result = write_fn(f)
            f.flush()
            _fsync(f)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    return result


def atomic_write_bytes(url: str | os.PathLike, data: bytes, fs=None) -> None:
    """Write ``data`` to ``url`` atomically (see :func:`atomic_write`)."""
    atomic_write(url, lambda f: f.write(data), fs=fs)


def _abandon(f) -> None:
    """Drop an unfinished object-store upload: uploaded parts are aborted and nothing is committed."""
    with contextlib.suppress(Exception):  # the write already failed: that error is the one to report
        f.discard()  # s3fs aborts the multipart upload; a single-PUT file has sent nothing yet
    f.closed = True  # close() would now flush and commit; a closed file does neither


def _fsync(f) -> None:
    try:
        os.fsync(f.fileno())
    except (AttributeError, OSError, ValueError):
        pass  # not a real file descriptor
