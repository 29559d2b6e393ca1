"""One rule for every reader of a user's folder: a file whose real path (symbolic links resolved) leaves the folders
the user named is not read, unless the user named the folder it leads into as well.

A link inside ``--images DIR`` (or a labeling pool folder) to ``/etc/hostname`` or a private image elsewhere is
refused with status ``outside_root``, a failure row like any other, never an exception. The check resolves every
link once; the reader then opens the resolved path, so a link swapped after the check is not followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

OUTSIDE_ROOT = "outside_root"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_within(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> tuple[str, str | None]:
    """``(real path, None)`` when local ``path`` with its links resolved lies in one of ``roots`` (links in the roots
    resolved too), else ``(real path, why)``: ``why`` names the path, where it leads and the roots."""
    real = os.path.realpath(path)
    names = [os.fspath(r) for r in roots]
    if any(_under(real, os.path.realpath(r)) for r in names):
        return real, None
    where = ", ".join(names) if names else "no folder"
    return real, (f"{os.fspath(path)} leads to {real}, outside {where}; name that folder too to read it "
                  "(download.input_roots, or the pool's pool_roots)")
