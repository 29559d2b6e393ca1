"""Find backbone weight files locally: an explicit path or the standard caches. Never downloads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import BbstError

# What a trunk's weights are called in each cache; filled from the model config's "weights" section.
HF_FILENAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


class WeightsNotFoundError(BbstError, FileNotFoundError):
    """No weight file for a backbone; the message lists every place looked at and how to supply one."""


@dataclass
class WeightsSource:
    """Where a trunk's pretrained weights may be cached locally (part of the model config)."""

    hf_repo: str | None = None  # Hugging Face repo id whose cached snapshot holds the file
    hf_filenames: list[str] = field(default_factory=lambda: list(HF_FILENAMES))  # file names tried in that snapshot
    hub_filenames: list[str] = field(default_factory=list)  # file names tried in torch hub's checkpoints dir
    open_clip_filenames: list[str] = field(default_factory=list)  # file names tried in the open_clip/CLIP caches
    note: str = ""  # where a user gets the file, shown in the missing-file error


def cache_dirs() -> dict[str, Path]:
    """The local cache folders searched, by kind."""
    import torch

    home = Path.home()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", home / ".cache"))
    hf_hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    hf_home = Path(os.environ.get("HF_HOME", xdg / "huggingface"))
    return {
        "bbst": Path(os.environ.get("BBST_WEIGHTS_DIR", xdg / "bbst" / "weights")),
        "torch_hub": Path(torch.hub.get_dir()) / "checkpoints",
        "hf_hub": Path(hf_hub) if hf_hub else hf_home / "hub",
        "open_clip": xdg / "open_clip",
        "clip": xdg / "clip",
    }


def _hf_cached(repo: str, filename: str, hub_dir: Path) -> tuple[Path | None, Path]:
    """Path of ``filename`` in the newest cached snapshot of ``repo`` (pure file-system lookup)."""
    repo_dir = hub_dir / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    snapshots = repo_dir / "snapshots"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip() / filename
        if candidate.is_file():
            return candidate, candidate
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if (snap / filename).is_file():
                return snap / filename, snap / filename
    return None, snapshots / "<revision>" / filename


def resolve_weights(spec: str | os.PathLike | None, source: WeightsSource | None, what: str) -> Path | None:
    """Turn a weights argument into a local file.

    ``spec`` is None (random init: returns None), a path to a file, or ``"cache"`` (search the local caches
    for the files named by ``source``). A missing file raises :class:`WeightsNotFoundError` listing every
    path looked at; nothing is ever downloaded.
    """
    if spec is None or spec == "":
        return None
    spec = str(spec)
    if spec != "cache":
        path = Path(spec).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(
            f"{what}: weight file {path} does not exist. Pass the path of a local .safetensors/.bin/.pth file, "
            f"or 'cache' to search the local caches ({', '.join(str(p) for p in cache_dirs().values())})."
        )
    source = source or WeightsSource()
    dirs = cache_dirs()
    looked: list[str] = []
    names = list(dict.fromkeys(source.hub_filenames + source.open_clip_filenames + source.hf_filenames))
    for name in names:
        cand = dirs["bbst"] / name
        looked.append(str(cand))
        if cand.is_file():
            return cand
    for name in source.hub_filenames:
        cand = dirs["torch_hub"] / name
        looked.append(str(cand))
        if cand.is_file():
            return cand
    if source.hf_repo:
        for name in source.hf_filenames:
            found, where = _hf_cached(source.hf_repo, name, dirs["hf_hub"])
            looked.append(str(where))
            if found:
                return found
    for name in source.open_clip_filenames:
        for kind in ("open_clip", "clip"):
            cand = dirs[kind] / name
            looked.append(str(cand))
            if cand.is_file():
                return cand
    how = (
        f"Put the file in one of these places, or pass its path explicitly (weights=PATH / --weights PATH). "
        f"{source.note}".strip()
    )
    raise WeightsNotFoundError(f"{what}: no local weight file found (nothing is downloaded). Looked at:\n  "
                               + "\n  ".join(looked) + f"\n{how}")
