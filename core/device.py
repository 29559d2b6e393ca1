"""Device resolution: the one rule behind every ``--device`` flag and ``device`` config value."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import BbstError

if TYPE_CHECKING:
    import torch

AUTO = "auto"


class DeviceError(BbstError, ValueError):
    """A device value that names no usable device (unknown name, or CUDA on a machine that has none)."""


def resolve_device(name: str | None = AUTO, local_rank: int | None = None) -> torch.device:
    """The torch device a ``device`` value names.

    ``auto`` (or ``None``/empty): CUDA when a CUDA device is visible, else the CPU. Anything else is torch's own
    name (``cpu``, ``cuda``, ``cuda:1``, ``mps``). ``local_rank`` is this process's GPU under a multi-process
    launch: ``auto`` and a bare ``cuda`` then mean ``cuda:<local_rank>``. Asking for CUDA where none is visible
    raises :class:`DeviceError` naming the value, rather than failing later inside a model.
    """
    import torch

    text = (name or AUTO).strip().lower()
    if text == AUTO:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise DeviceError(f"device {name!r}: not a device name ({exc})", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: no CUDA device is visible", hint="use --device cpu (or auto)")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device
