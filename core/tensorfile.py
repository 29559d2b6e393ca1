"""Read files written by ``torch.save`` as data: ``torch.load(weights_only=True)``, and one line naming the file
when it would need pickle (which can run any code the file holds) or is not such a file at all.

Checkpoints, adapted models and backbone weight files all load through :func:`load_tensor_file` (or, for loaders
that call ``torch.load`` themselves, raise :func:`pickle_refusal` on their error).
"""

from __future__ import annotations

import contextlib
import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Any

from core.errors import BadInputError, MissingInputError


class PickleRefusedError(BadInputError):
    """A file that names classes or functions for pickle to call when loaded; ``names`` lists them."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pickle_globals(f) -> list[str]:
    """Every ``module.name`` a pickle stream would import when loaded, read from its opcodes without running them."""
    found: list[str] = []
    recent: list[str | None] = []  # what the latest opcodes pushed (strings only; None for anything else)
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(f):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL":
                if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                    found.append(f"{recent[-2]}.{recent[-1]}")
                recent.append(None)
            elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = recent[-1] if recent else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(int(arg)))
            else:
                recent.append(arg if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name) else None)
    except (ValueError, EOFError, OSError, UnicodeDecodeError):
        return list(dict.fromkeys(found))  # a damaged or truncated stream: what was read before it
    return list(dict.fromkeys(found))


def unsafe_globals(path: str) -> list[str]:
    """The globals the file's pickle names that ``weights_only=True`` does not build (empty when none are found)."""
    import fsspec
    import torch

    try:
        with fsspec.open(path, "rb") as f:
            if zipfile.is_zipfile(f):  # torch.save's format: torch lists what its weights-only loader refuses
                f.seek(0)
                return list(torch.serialization.get_unsafe_globals_in_checkpoint(f))
            f.seek(0)
            return pickle_globals(f)  # a bare pickle: no bbst checkpoint is one, so every global it names
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile):
        return []


def pickle_refusal(path: str, exc: BaseException, what: str = "checkpoint") -> BadInputError:
    """The one-line error for ``path``, which ``torch.load(weights_only=True)`` refused with ``exc``."""
    names = unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(exc))[:1]
    if not names:  # not a pickle at all, or one torch cannot read
        return BadInputError(f"{path}: not a bbst {what} (not a file torch.save wrote)")
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return PickleRefusedError(f"{path}: refused: loading it would need pickle to call {shown}, which can run any "
                              f"code; a bbst {what} holds only tensors, numbers, strings and lists or dicts of them",
                              names)


def unpickling_error_in(exc: BaseException | None) -> pickle.UnpicklingError | None:
    """The ``pickle.UnpicklingError`` behind ``exc`` (itself, or its cause or context), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, pickle.UnpicklingError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def load_tensor_file(path: str, what: str = "checkpoint", map_location: Any = "cpu", allowed: list | None = None
                     ) -> Any:
    """``torch.load(path, weights_only=True)`` (local path or fsspec URL) with one-line errors that name the file.

    A file that needs pickle to load is refused with :class:`PickleRefusedError` and nothing in it runs.
    ``allowed`` adds globals the weights-only loader may build (``torch.serialization.safe_globals`` entries).
    """
    import fsspec
    import torch

    allow = torch.serialization.safe_globals(allowed) if allowed else contextlib.nullcontext()
    try:
        with fsspec.open(path, "rb") as f, allow, warnings.catch_warnings():
            # a bare pickle of another protocol makes torch warn before it refuses the file: the refusal says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not a {what} file") from None
    except pickle.UnpicklingError as exc:
        raise pickle_refusal(path, exc, what) from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AssertionError, OverflowError,
            zipfile.BadZipFile, OSError) as exc:  # what torch's loader raises on bytes that are no pickle
        raise BadInputError(f"{path}: not a bbst {what} (not a file torch.save wrote: {_first_line(exc)})") from None


def _whole_pickle(data: bytes) -> bool:
    """Whether ``data`` is exactly one complete pickle stream (raw tensor bytes almost never parse as one)."""
    if data[:1] != b"\x80":
        return False
    try:
        last = None
        for op, _, pos in pickletools.genops(data):
            last = (op.name, pos)
        return last is not None and last[0] == "STOP" and last[1] == len(data) - 1
    except (ValueError, EOFError, UnicodeDecodeError):
        return False


def _allowed_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
    except ImportError:  # another torch: every global of a bare pickle is then refused
        return set()
    return set(_get_allowed_globals())


def refuse_pickles_in_archive(path: str, what: str = "model archive") -> None:
    """Refuse a zip archive (a ``torch.export`` ``.pt2``) any member of which would need pickle to build more than
    tensors and plain values; its loader unpickles such members without the weights-only guard."""
    import io

    import torch

    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: {what} not found") from None
    except (zipfile.BadZipFile, OSError):
        return  # not an archive: the loader reports what it is
    names: list[str] = []
    allowed = None
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            with archive.open(info) as f:
                head = f.read(4)
            if head == b"PK\x03\x04":  # a torch.save file inside the archive
                names += torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(archive.read(info)))
            elif head[:1] == b"\x80":
                data = archive.read(info)
                if _whole_pickle(data):
                    allowed = _allowed_globals() if allowed is None else allowed
                    names += [n for n in pickle_globals(io.BytesIO(data)) if n not in allowed]
    if names:
        names = list(dict.fromkeys(names))
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise PickleRefusedError(f"{path}: refused: loading it would need pickle to call {shown}, which can run any "
                                 f"code; a {what} bbst loads holds only tensors, numbers, strings and lists or dicts "
                                 "of them", names)
