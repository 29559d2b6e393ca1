"""Shard list: the non-empty shards of a subset under each ``data.root`` (manifest or glob), one Source per root."""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.schema import MANIFEST_FILE, SHARDS_DIR
from core.shards import ShardFormatError, index_shard
from train.config import DataConfig
from train.data.errors import LoaderError


@dataclass(frozen=True)
class Shard:
    url: str  # full URL or path of the tar
    nsamples: int  # samples (keys) in the tar


def _join(root: str, rel: str) -> str:
    return rel if "://" in rel or rel.startswith("/") else root.rstrip("/") + "/" + rel


def list_shards(root: str, subset: str, required: bool = True) -> list[Shard]:
    """Shards of ``subset`` under run directory ``root``: from ``manifest.json`` if present, else a glob + index.

    ``required=False`` returns ``[]`` instead of raising when the root holds no such shards.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    manifest = path.rstrip("/") + "/" + MANIFEST_FILE
    if fs.exists(manifest):
        with fs.open(manifest, "rb") as f:
            try:
                index = json.load(f)
            except json.JSONDecodeError as exc:
                raise LoaderError(f"{root}/{MANIFEST_FILE}: not valid JSON: {exc}") from None
        if not isinstance(index, dict) or "shardlist" not in index:
            raise LoaderError(f"{root}/{MANIFEST_FILE}: expected a wids shard index with a 'shardlist'")
        shards = []
        for i, entry in enumerate(index["shardlist"]):
            if "url" not in entry or "nsamples" not in entry:
                raise LoaderError(f"{root}/{MANIFEST_FILE}: shardlist[{i}] lacks 'url' or 'nsamples': {entry}")
            name = entry["url"].rsplit("/", 1)[-1]
            entry_subset = entry.get("subset") or name.rsplit("-", 1)[0]
            if entry_subset == subset and int(entry["nsamples"]) > 0:
                shards.append(Shard(_join(root, entry["url"]), int(entry["nsamples"])))
    else:
        found = sorted(fs.glob(f"{path.rstrip('/')}/{SHARDS_DIR}/{subset}-*.tar"))
        urls = [fs.unstrip_protocol(p) if "://" in root else p for p in found]
        try:
            shards = [Shard(u, n) for u in urls if (n := len(index_shard(u))) > 0]
        except ShardFormatError as exc:
            raise LoaderError(str(exc)) from None
    shards.sort(key=lambda s: s.url)  # the permutation below must start from the same order on every rank
    if not shards and required:
        raise LoaderError(f"{root}: no non-empty '{subset}' shards (looked for {MANIFEST_FILE} and "
                          f"{SHARDS_DIR}/{subset}-*.tar)")
    return shards


@dataclass(frozen=True)
class Source:
    """The shards of one subset under one root, with its share of the stream (None: every sample once)."""

    root: str
    shards: tuple[Shard, ...]
    weight: float | None = None

    @property
    def nsamples(self) -> int:
        return sum(s.nsamples for s in self.shards)


def subset_sources(data_cfg: DataConfig, subset: str, weights: list[float] | None = None) -> list[Source]:
    """One :class:`Source` per ``data.root`` entry that holds ``subset`` shards (with its weight, if weighted)."""
    roots = data_cfg.roots()
    if not roots or not all(roots):
        raise LoaderError("data.root is empty: set it to a curation output directory (local path or URL) "
                          "or a list of them")
    sources = []
    for i, root in enumerate(roots):
        weight = float(weights[i]) if weights else None
        if weight == 0.0:
            continue
        shards = list_shards(root, subset, required=len(roots) == 1 or weight is not None)
        if shards:
            sources.append(Source(root, tuple(shards), weight))
    if not sources:
        raise LoaderError(f"{', '.join(roots)}: no non-empty '{subset}' shards in any data.root entry")
    return sources


def flat_shards(sources: list[Source]) -> list[Shard]:
    return [s for src in sources for s in src.shards]
