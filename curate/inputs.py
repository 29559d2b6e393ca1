"""Inputs beyond http: which local paths and fsspec URLs a run may read, and where an image folder's source comes from.

A row of a URL list is an ``http(s)://`` URL, an absolute local path, a ``file://`` URL or any other fsspec URL
(``s3://bucket/a.jpg``, ``gs://...``). Rows that are not http(s) are read through fsspec, and only when they lie
under one of the roots the user named (``download.input_roots``, which ``--images`` fills with its own folder):
a URL list, wherever it came from, cannot make a run read ``/etc/passwd`` or a bucket the user did not name.
The check is first lexical, on the normalised path (``..`` cannot climb out of a root); then, for local files, on
the real path (:func:`core.paths.resolve_within`): a symbolic link may point anywhere inside the roots, and one that
leads out of every root is refused (``outside_root``) unless the user names the folder it leads into as a root too.
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal

# Folder names that identify a known source when a folder of images is listed (matched case-insensitively).
DEFAULT_SOURCE_FOLDERS = {
    "wikiart": "wikiart",
    "coco": "coco", "mscoco": "coco", "ms-coco": "coco", "ms_coco": "coco",
    "train2014": "coco", "val2014": "coco", "test2014": "coco",
    "train2017": "coco", "val2017": "coco", "test2017": "coco", "unlabeled2017": "coco",
}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
GLOB_CHARS = re.compile(r"[*?\[]")

UrlKind = Literal["http", "local", "fsspec", "relative", "other"]


def url_kind(url: str) -> UrlKind:
    """What a row names: ``http`` (http/https), ``local`` (absolute path or ``file://``), ``fsspec`` (another
    ``scheme://`` URL), ``relative`` (a path that is not absolute) or ``other`` (empty, ``data:``, ``mailto:``...)."""
    text = url.strip()
    m = _SCHEME.match(text)
    if m:
        scheme = m.group(1).lower()
        if scheme in ("http", "https"):
            return "http"
        return "local" if scheme in ("file", "local") else "fsspec"
    if text.startswith("/"):
        return "local"
    if not text or re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:", text):
        return "other"  # "data:...", "javascript:...", or nothing at all
    return "relative"


def canonical(location: str) -> str:
    """Normalised form of a local path or fsspec URL, for comparing against roots: ``proto://path`` without
    ``.``/``..`` segments or doubled slashes; local paths (and ``file://`` URLs) become ``file:///abs/path``."""
    text = location.strip()
    m = _SCHEME.match(text)
    if m:
        scheme, rest = m.group(1).lower(), text[m.end():]
        if scheme in ("file", "local"):
            from urllib.parse import unquote

            host, _, path = rest.partition("/")
            if host not in ("", "localhost"):
                raise ValueError(f"{location}: file:// URLs name a file on this machine, not on host {host!r}")
            rest = unquote("/" + path)
            scheme = "file"
    else:
        scheme, rest = "file", text
    path = posixpath.normpath("/" + rest.lstrip("/"))  # one leading slash: POSIX keeps a doubled one as is
    if scheme == "file":
        return "file://" + path
    return f"{scheme}://" + path.lstrip("/")  # fsspec paths start with the bucket or host


def _within(location: str, root: str) -> bool:
    return location == root or location.startswith(root.rstrip("/") + "/")


class InputPolicy:
    """Decides whether a non-http row may be read: it must lie under one of ``roots`` (see the module docstring)."""

    def __init__(self, roots: list[str]):
        self.roots = [canonical(r) for r in roots]

    def local_roots(self) -> list[str]:
        """The roots that are folders on this machine, as paths."""
        return [r[len("file://"):] for r in self.roots if r.startswith("file://")]

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be read (a short message), or None when it may."""
        try:
            where = canonical(url)
        except ValueError as exc:
            return str(exc)
        if any(_within(where, root) for root in self.roots):
            return None
        kind = "local path" if where.startswith("file://") else "URL"
        named = f"outside download.input_roots {self.roots}" if self.roots else "not allowed: download.input_roots is empty"
        return f"{kind} {url.strip()[:200]} {named}"


def image_root(spec: str) -> str:
    """The folder an ``--images`` folder or glob lists from: the spec itself, or its part before the first
    wildcard (``/data/art/*/*.jpg`` -> ``/data/art``)."""
    text = spec.strip()
    m = GLOB_CHARS.search(text)
    if not m:
        return text.rstrip("/") or "/"
    head = text[:m.start()]
    return head[:head.rfind("/")] if "/" in head else "."


def source_for(path: str, root: str, folders: dict[str, str]) -> str | None:
    """The source of an image at ``path`` listed under ``root``.

    The first folder on the path (root included) whose name is a key of ``folders`` gives its value
    (``/data/coco/train2017/1.jpg`` -> ``coco``); failing that, the first folder below the root names the source
    (``root/behance/x/1.jpg`` -> ``behance``); an image directly in the root has none.
    """
    lowered = {k.lower(): v for k, v in folders.items()}
    parts = [p for p in path.split("/")[:-1] if p]
    for part in parts:
        if part.lower() in lowered:
            return lowered[part.lower()]
    below = path[len(root.rstrip("/")) + 1:].split("/") if path.startswith(root.rstrip("/") + "/") else []
    return below[0] if len(below) > 1 else None
