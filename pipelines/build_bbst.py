"""Build a BBST-style dataset: URL lists -> download -> inspect -> dedup -> score -> split -> WebDataset shards.

Runs on a laptop (``python pipelines/build_bbst.py`` starts a local Ray and, with no arguments, the built-in
demo) and unchanged on a cluster (``ray job submit --working-dir . -- python pipelines/build_bbst.py
--config my.yaml``: ``ray.init()`` attaches to the cluster named by ``RAY_ADDRESS``).

The run is split in phases so that it is deterministic and resumable after a SIGKILL at any point:

1. *Stage* (streaming, Ray Data): the driver streams the URL list into one small Parquet per input
   partition (``DIR/_staging/input``); Ray Data reads them, downloads (actor pool, one HTTP session per
   actor) and inspects the images. The driver appends the ok bytes of each partition to
   ``DIR/_staging/images/part-P.bin`` and commits the partition by writing ``DIR/_staging/rows/part-P.parquet``
   last. Committed partitions are skipped on a rerun.
2. *Dedup* (global): exact and near duplicates over every staged row, smallest key wins, so a resumed run
   keeps exactly the set an uninterrupted one keeps.
3. *Score* (only with a classifier), *split*, *plan* shards by key order, *write* each shard under a
   temporary name and rename it (finished shards are verified by checksum and skipped on a rerun), then the
   per-partition metadata, the wids manifest, the summary (last) and the HTML report.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema
from curate.build_config import BuildConfig
from curate.cli import error_boundary, exit_with
from curate.config import ConfigError, to_dict
from curate.progress import ProgressMeter
from curate.split import SplitConfig

log = logging.getLogger("bbst.build")

STAGING = "_staging"
REF_COLUMNS = ("_ref_path", "_ref_offset", "_ref_length")  # where an ok row's bytes live (staging or a tar)
INTERNAL_COLUMNS = frozenset(REF_COLUMNS) | {"image"}
DEFAULT_DEMO_OUT = "./bbst-demo"
DEMO_CLASSIFIER_DIR = "demo-classifier"  # where the demo writes its bootstrapped classifier (local outputs)

# Arrow types of the schema columns in the metadata Parquet files; pass-through columns keep their own.
META_TYPES: dict[str, pa.DataType] = {c: pa.string() for c in schema.META_COLUMNS}
META_TYPES.update({c: pa.int64() for c in ("width", "height", "original_width", "original_height", "num_bytes")})
META_TYPES["score"] = pa.float64()


# --------------------------------------------------------------------------------------------------- storage
class Store:
    """The run directory on any fsspec filesystem, with the atomic-write primitives the phases rely on."""

    def __init__(self, out: str, storage_options: dict | None = None) -> None:
        import fsspec

        self.url = out
        self.fs, self.root = fsspec.core.url_to_fs(out, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def ls(self, *parts: str) -> list[str]:
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(x.rsplit("/", 1)[-1] for x in self.fs.ls(p, detail=False))

    def _tmp(self, final: str) -> str:
        head, name = final.rsplit("/", 1)
        return f"{head}/.tmp-{uuid.uuid4().hex[:12]}-{name}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` under a temporary name and rename it into place (readers never see half a file)."""
        final = self.path(rel)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        tmp = self._tmp(final)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, final)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any:
        with self.fs.open(self.path(rel), "rb") as f:
            return json.load(f)

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.read_table(f, columns=columns)

    def rm(self, rel: str, recursive: bool = False) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=recursive)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _to_table(batch: dict[str, np.ndarray], drop: frozenset[str] = frozenset()) -> pa.Table:
    cols = {}
    for name, arr in batch.items():
        if name in drop:
            continue
        arr = np.asarray(arr)
        if arr.dtype == object:
            # NaN in an object column means "missing" (numpy has no None for numbers)
            vals = [None if isinstance(v, float) and math.isnan(v) else (v.item() if isinstance(v, np.generic) else v)
                    for v in arr.tolist()]
            cols[name] = pa.array(vals, from_pandas=True)
        else:
            cols[name] = pa.array(arr, from_pandas=True)  # NaN -> null
        if len(arr) and cols[name].null_count == len(arr):
            # an all-missing column arrives as NaN floats; give it its real type so batches concatenate
            cols[name] = pa.nulls(len(arr), META_TYPES.get(name, pa.null()))
    return pa.table(cols)


def _kill_hook(env: str, count: int) -> None:
    """Test hook: SIGKILL this process once ``count`` reaches the number in environment variable ``env``."""
    limit = os.environ.get(env)
    if limit and count >= int(limit):
        log.warning("%s=%s reached: killing the run to test resume", env, limit)
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- phase 1
class PartitionStager:
    """Collects finished rows per input partition on the driver; commits a partition once all rows are in.

    The ok bytes go straight to an append-only file (no image is held in memory); the rows file, written
    atomically after the bytes file is renamed into place, is the partition's commit marker.
    """

    def __init__(self, store: Store, expected: dict[int, int]) -> None:
        self.store = store
        self.expected = dict(expected)
        self.seen: dict[int, int] = {}
        self.tables: dict[int, list[pa.Table]] = {}
        self.files: dict[int, tuple[str, Any]] = {}
        self.offsets: dict[int, int] = {}
        self.committed = 0

    def _bin_rel(self, p: int) -> str:
        return f"{STAGING}/images/part-{p:06d}.bin"

    def add(self, batch: dict[str, np.ndarray]) -> None:
        keys = batch["key"]
        parts = np.array([schema.split_key(str(k))[0] for k in keys])
        for p in np.unique(parts):
            idx = np.nonzero(parts == p)[0]
            self._add_partition(int(p), {k: v[idx] for k, v in batch.items()})

    def _add_partition(self, p: int, batch: dict[str, np.ndarray]) -> None:
        if p not in self.files:
            final = self.store.path(self._bin_rel(p))
            self.store.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            tmp = self.store._tmp(final)
            self.files[p] = (tmp, self.store.fs.open(tmp, "wb"))
            self.offsets[p] = 0
            self.tables[p] = []
            self.seen[p] = 0
        _, f = self.files[p]
        n = len(batch["key"])
        offsets = np.full(n, -1, dtype=np.int64)
        lengths = np.full(n, -1, dtype=np.int64)
        images = batch.get("image")
        for i in range(n):
            if batch["status"][i] == "ok" and images is not None and images[i] is not None:
                data = bytes(images[i])
                f.write(data)
                offsets[i], lengths[i] = self.offsets[p], len(data)
                self.offsets[p] += len(data)
        table = _to_table(batch, drop=INTERNAL_COLUMNS)
        table = table.append_column("_ref_path", pa.array([self._bin_rel(p) if o >= 0 else None for o in offsets],
                                                           pa.string()))
        table = table.append_column("_ref_offset", pa.array(offsets)).append_column("_ref_length", pa.array(lengths))
        self.tables[p].append(table)
        self.seen[p] += n
        if self.seen[p] > self.expected[p]:
            raise RuntimeError(f"partition {p}: got {self.seen[p]} rows, expected {self.expected[p]}")
        if self.seen[p] == self.expected[p]:
            self._commit(p)

    def _commit(self, p: int) -> None:
        tmp, f = self.files.pop(p)
        f.close()
        self.store.fs.mv(tmp, self.store.path(self._bin_rel(p)))
        rows = _concat(self.tables.pop(p)).sort_by("key")
        self.store.write_parquet(f"{STAGING}/rows/part-{p:06d}.parquet", rows)
        self.committed += 1
        _kill_hook("BBST_KILL_AFTER_PARTITIONS", self.committed)

    def close(self) -> None:
        missing = {p: self.expected[p] - self.seen.get(p, 0) for p in self.expected if p in self.files}
        for tmp, f in self.files.values():
            f.close()
            self.store.fs.rm(tmp)
        if missing:
            raise RuntimeError(f"partitions ended with rows missing: {missing}")


def stage_inputs(cfg: BuildConfig, store: Store) -> dict[int, int]:
    """Stream the URL list into per-partition staging Parquet files; return ``{partition: rows}``."""
    from curate.reader import iter_partitions

    fingerprint = {"urls": cfg.urls, "reader": to_dict(cfg.reader)}
    if store.exists(STAGING, "run.json"):
        previous = store.read_json(f"{STAGING}/run.json")
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(f"{store.url}: holds an unfinished run of a different URL list or reader config "
                              f"({previous.get('fingerprint')}); use another --out or delete {STAGING}/ there")
        if previous.get("partitions") is not None:
            return {int(k): v for k, v in previous["partitions"].items()}
    partitions: dict[int, int] = {}
    for p, table in iter_partitions(cfg.urls, cfg.reader, storage_options=cfg.storage_options):
        partitions[p] = table.num_rows
        rel = f"{STAGING}/input/part-{p:06d}.parquet"
        if not store.exists(rel):
            store.write_parquet(rel, table)
    if not partitions:
        raise ValueError(f"{cfg.urls}: the URL list has no rows")
    store.write_json(f"{STAGING}/run.json", {"fingerprint": fingerprint, "partitions": partitions})
    return partitions


def _read_staged_inputs(batch: dict[str, np.ndarray], fs, root: str, rows_per_block: int) -> Iterator[pa.Table]:
    """Yield the staged URL rows of the given partitions in blocks of ``rows_per_block`` rows.

    Small blocks spread one partition over all downloader actors instead of handing it to one of them.
    """
    for p in batch["partition"]:
        with fs.open(f"{root}/{STAGING}/input/part-{int(p):06d}.parquet", "rb") as f:
            table = pq.read_table(f)
        for start in range(0, table.num_rows, rows_per_block):
            yield table.slice(start, rows_per_block)


def download_and_check(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> float | None:
    """Phase 1: Ray Data graph over the pending partitions; the driver stages and commits them.

    Returns the monotonic time at which the first checked rows reached the driver (None when nothing was
    pending): the part of the phase before it is the actor pools' ramp-up (process start, imports, first batch).
    """
    import ray

    from curate.downloader import Downloader
    from curate.imagecheck import ImageChecker

    done = {int(n[5:11]) for n in store.ls(STAGING, "rows") if n.startswith("part-")}
    pending = sorted(p for p in partitions if p not in done)
    if done:
        log.info("resume: %d of %d partitions already staged", len(done & set(partitions)), len(partitions))
    if not pending:
        return None
    # Small blocks keep the stages pipelined: with Ray's default (128 MiB) a whole partition's images would
    # travel as one block, checked by one actor only after every download of that partition finished.
    ray.data.DataContext.get_current().target_max_block_size = cfg.ray.block_mb * 2**20
    # one block per pending partition, read by a small task through the run's own fsspec filesystem
    ds = ray.data.from_items([{"partition": p} for p in pending], override_num_blocks=len(pending))
    # Ray Data fuses a task stage into the next actor stage when their resources match; fused, a partition's
    # blocks would all go to one downloader, so the read asks for a (slightly) different CPU share.
    read_cpus = cfg.ray.read_num_cpus
    if read_cpus == cfg.ray.download_num_cpus:
        read_cpus /= 2
    ds = ds.map_batches(_read_staged_inputs, fn_args=(store.fs, store.root, cfg.ray.download_batch_size), batch_size=1,
                        batch_format="numpy", num_cpus=read_cpus)
    ds = ds.map_batches(
        Downloader,
        fn_constructor_args=(cfg.download,),
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.download_actors),
        batch_size=cfg.ray.download_batch_size,
        batch_format="numpy",
        num_cpus=cfg.ray.download_num_cpus,
    )
    check_actors = cfg.ray.check_actors
    if not check_actors:
        # what the read tasks and downloaders leave of the cluster's CPUs; taking more would starve the reads
        spare = ray.cluster_resources().get("CPU", 1) - read_cpus - \
            cfg.ray.download_actors * cfg.ray.download_num_cpus
        check_actors = max(1, int(spare // cfg.ray.check_num_cpus))
    ds = ds.map_batches(
        ImageChecker,
        fn_constructor_args=(cfg.check,),
        compute=ray.data.ActorPoolStrategy(size=check_actors),
        batch_size=cfg.ray.check_batch_size,
        batch_format="numpy",
        num_cpus=cfg.ray.check_num_cpus,
    )
    stager = PartitionStager(store, {p: partitions[p] for p in pending})
    meter = ProgressMeter(total=sum(partitions[p] for p in pending), interval_s=cfg.progress_interval_s)
    first_rows = None
    try:
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            first_rows = first_rows or time.monotonic()
            stager.add(batch)
            meter.update(batch["status"], batch.get("error"))
    finally:
        stager.close()
    log.info(meter.line())
    log.debug("Ray Data stats of the download graph:\n%s", ds.stats())
    return first_rows


def load_staged_rows(store: Store, partitions: dict[int, int]) -> pa.Table:
    tables = [store.read_parquet(f"{STAGING}/rows/part-{p:06d}.parquet") for p in sorted(partitions)]
    return _concat(tables).sort_by("key")


# --------------------------------------------------------------------------------------------------- phase 2
def apply_dedup(cfg: BuildConfig, rows: pa.Table) -> pa.Table:
    """Mark exact and near duplicates among ok rows over the whole run (smallest key wins)."""
    from curate.dedup import dedup_rows

    status = np.array(rows["status"].to_pylist(), dtype=object)
    ok = np.nonzero(status == "ok")[0]
    dup_of = np.array(rows["duplicate_of"].to_pylist() if "duplicate_of" in rows.column_names
                      else [None] * rows.num_rows, dtype=object)
    errors = np.array(rows["error"].to_pylist() if "error" in rows.column_names else [None] * rows.num_rows,
                      dtype=object)
    if len(ok):
        keys = rows["key"].to_numpy(zero_copy_only=False)[ok]
        sha = np.array(rows["sha256"].to_pylist(), dtype=object)[ok]
        ph = np.array(rows["phash"].to_pylist(), dtype=object)[ok]
        new_status, new_dup = dedup_rows(list(keys), list(sha), list(ph), cfg.dedup)
        new_status, new_dup = np.asarray(new_status, dtype=object), np.asarray(new_dup, dtype=object)
        status[ok] = new_status
        dup_of[ok] = new_dup
        for i, s, d in zip(ok, new_status, new_dup):
            if s != "ok":
                errors[i] = f"{s.replace('_', ' ')} of {d}"
    rows = _set_column(rows, "status", pa.array(status.tolist(), pa.string()))
    rows = _set_column(rows, "duplicate_of", pa.array(dup_of.tolist(), pa.string()))
    return _set_column(rows, "error", pa.array(errors.tolist(), pa.string()))


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


# --------------------------------------------------------------------------------------------------- phase 3
class _LoadBytes:
    """Ray Data stage: fetch each row's image bytes from its staging or shard file by offset."""

    def __init__(self, fs, root: str) -> None:
        self.fs, self.root = fs, root

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["image"] = np.array(read_refs(self.fs, self.root, batch["_ref_path"], batch["_ref_offset"],
                                            batch["_ref_length"]) + [None], dtype=object)[:-1]
        return batch


def read_refs(fs, root: str, paths, offsets, lengths) -> list[bytes]:
    """Bytes of each (path, offset, length) reference, one open file per distinct path."""
    out: list[bytes] = []
    handles: dict[str, Any] = {}
    try:
        for p, o, n in zip(paths, offsets, lengths):
            if p not in handles:
                handles[p] = fs.open(f"{root}/{p}", "rb")
            f = handles[p]
            f.seek(int(o))
            data = f.read(int(n))
            if len(data) != int(n):
                raise OSError(f"{root}/{p}: short read at offset {o} ({len(data)} of {n} bytes)")
            out.append(data)
    finally:
        for f in handles.values():
            f.close()
    return out


def apply_scores(cfg: BuildConfig, store: Store, rows: pa.Table) -> tuple[pa.Table, str, dict | None]:
    """Phase 3a: score ok rows with the classifier (actor pool); cached in staging so a resume skips it.

    Returns the rows, a one-line account of the stage and the classifier's identity (path, version, demo flag,
    thresholds; None when scoring is off).
    """
    if not cfg.score.classifier:
        msg = "scoring skipped: no classifier given (set --classifier PATH to score and split by score)"
        log.info(msg)
        return rows, msg, None
    import ray

    from classifier.checkpoint import read_checkpoint_config

    ckpt = cfg.score.classifier
    _, meta = read_checkpoint_config(ckpt)  # a wrong or broken checkpoint fails here, before any actor starts
    info = {"path": str(ckpt), "version": meta["version"], "demo": bool(meta.get("demo")),
            "thresholds": dict(meta["thresholds"])}
    cache = f"{STAGING}/scores.parquet"
    status = rows["status"].to_numpy(zero_copy_only=False)
    ok_idx = np.nonzero(status == "ok")[0]
    fingerprint = f"{ckpt}:{_file_digest(ckpt)}"
    scores = None
    if store.exists(cache):
        cached = store.read_parquet(cache)
        cached_meta = cached.schema.metadata or {}
        if cached_meta.get(b"fingerprint", b"").decode() == fingerprint:
            scores = cached
            log.info("resume: scores loaded from %s", cache)
    if scores is None:
        from classifier.scoring import StyleScorer

        refs = rows.take(pa.array(ok_idx)).select(["key", *REF_COLUMNS])
        t0 = time.monotonic()
        kwargs = {"checkpoint": ckpt, **cfg.score.options}
        if cfg.score.device:
            kwargs["device"] = cfg.score.device
        ds = ray.data.from_arrow(refs)
        ds = ds.map_batches(_LoadBytes, fn_constructor_args=(store.fs, store.root), batch_size=cfg.score.batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.score.actors)),
                            batch_format="numpy", num_cpus=0.25)
        ds = ds.map_batches(StyleScorer, fn_constructor_kwargs=kwargs,
                            compute=ray.data.ActorPoolStrategy(size=cfg.score.actors), batch_size=cfg.score.batch_size,
                            batch_format="numpy", num_gpus=cfg.score.num_gpus, num_cpus=cfg.score.num_cpus)
        parts = []
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            keep = {k: batch[k] for k in ("key", "score", "classifier_version", "status", "error") if k in batch}
            parts.append(_to_table(keep))
        scores = _concat(parts)
        scores = scores.replace_schema_metadata({"fingerprint": fingerprint})
        store.write_parquet(cache, scores)
        log.info("scored %d images in %.1fs", scores.num_rows, time.monotonic() - t0)
    rows = _merge_by_key(rows, scores, ("score", "classifier_version", "status", "error"))
    kind = "DEMO classifier" if info["demo"] else "classifier"
    return rows, f"scored with {kind} {info['version']} ({ckpt})", info


def _file_digest(path: str) -> str:
    """Content fingerprint of a checkpoint file, or of every file of a checkpoint folder."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    files = sorted(fs.find(root)) if fs.isdir(root) else [root]
    if not files:
        raise FileNotFoundError(f"{path}: classifier checkpoint not found (pass --classifier PATH)")
    h = hashlib.sha256()
    for name in files:
        h.update(name[len(root):].encode())
        with fs.open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _merge_by_key(rows: pa.Table, update: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    """Overwrite ``columns`` of ``rows`` with the values of ``update`` for the keys it holds."""
    index = {k: i for i, k in enumerate(rows["key"].to_pylist())}
    pos = np.array([index[k] for k in update["key"].to_pylist()], dtype=np.int64)
    for col in columns:
        if col not in update.column_names:
            continue
        base = rows[col].to_pylist() if col in rows.column_names else [None] * rows.num_rows
        vals = update[col].to_pylist()
        for i, v in zip(pos, vals):
            if isinstance(v, float) and math.isnan(v):
                v = None
            if col in ("error",) and v is None:
                continue
            base[i] = v
        rows = _set_column(rows, col, pa.array(base, META_TYPES.get(col)))
    return rows


def apply_split(rows: pa.Table, split: SplitConfig) -> pa.Table:
    """Phase 3b: assign ok rows to ``style``/``content``; ok rows that fit neither become ``score_filtered``."""
    from curate.split import assign_subsets

    batch = {c: np.array(rows[c].to_pylist(), dtype=object) for c in ("status", "error", "source")}
    if "score" in rows.column_names:
        batch["score"] = np.array(rows["score"].to_pylist(), dtype=object)
    out = assign_subsets(batch, split)
    for col in ("status", "error", "subset"):
        rows = _set_column(rows, col, pa.array(list(out[col]), pa.string()))
    return rows


def _sample_json(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in INTERNAL_COLUMNS and k != "shard"}


def _write_one_shard(fs, root: str, name: str, rows: list[dict]) -> dict:
    """Write shard ``name`` (atomically) from rows that reference their bytes; return its manifest entry."""
    from curate.writer import write_shard

    datas = read_refs(fs, root, [r["_ref_path"] for r in rows], [r["_ref_offset"] for r in rows],
                      [r["_ref_length"] for r in rows])
    samples = [(r["key"], r["ext"], data, _sample_json(r)) for r, data in zip(rows, datas)]
    entry = write_shard(f"{root}/{schema.SHARDS_DIR}/{name}", samples, fs=fs)
    # wids resolves relative urls against the manifest's own location, so the output folder stays movable
    return {**entry, "url": f"{schema.SHARDS_DIR}/{name}", "subset": name.rsplit("-", 1)[0]}


def write_shards(cfg: BuildConfig, store: Store, rows: pa.Table) -> tuple[pa.Table, list[dict]]:
    """Phase 3c: plan shards per subset by key order, write the missing ones, verify the finished ones."""
    from curate.writer import plan_shards

    ok_rows = rows.filter(pa.compute.equal(rows["status"], "ok"))
    by_key = {r["key"]: r for r in ok_rows.to_pylist()}
    plan: list[tuple[str, list[str]]] = []
    for subset in schema.SUBSETS:
        members = [(k, r["_ref_length"]) for k, r in by_key.items() if r["subset"] == subset]
        groups = plan_shards(members, max_samples=cfg.shards.target_samples, max_bytes=cfg.shards.target_bytes)
        plan.extend((schema.shard_name(subset, i), [k for k, _ in group]) for i, group in enumerate(groups))
    shard_of: dict[str, str] = {}
    entries: dict[str, dict] = {}
    todo = []
    for name, keys in plan:
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
        for k in keys:
            shard_of[k] = name
        marker = f"{STAGING}/shards/{name}.json"
        if store.exists(marker) and store.exists(schema.SHARDS_DIR, name):
            entry = store.read_json(marker)
            if entry.get("keys_digest") == digest and _verify_shard(store, name, entry):
                entries[name] = entry
                continue
        todo.append((name, keys, digest))
    if entries:
        log.info("resume: %d of %d shards already complete (checksums verified)", len(entries), len(plan))
    # Shards are written by driver threads: the work is copying bytes and hashing (both release the GIL), and
    # fresh Ray workers would each pay the import of the tar writer's dependencies first.
    from concurrent.futures import ThreadPoolExecutor, as_completed

    written = 0
    with ThreadPoolExecutor(max_workers=max(1, cfg.shards.writers), thread_name_prefix="bbst-shard") as pool:
        futures = {pool.submit(_write_one_shard, store.fs, store.root, name, [by_key[k] for k in keys]): (name, digest)
                   for name, keys, digest in todo}
        for fut in as_completed(futures):
            name, digest = futures[fut]
            entry = {**fut.result(), "keys_digest": digest}
            store.write_json(f"{STAGING}/shards/{name}.json", entry)
            entries[name] = entry
            written += 1
            _kill_hook("BBST_KILL_AFTER_SHARDS", written)
    # shards left over from an earlier plan (e.g. before a rescore) would be read by a glob over the folder
    planned = {name for name, _ in plan}
    for stale in store.ls(schema.SHARDS_DIR):
        if stale not in planned:  # also the temporary file of a shard whose writer was killed
            store.rm(f"{schema.SHARDS_DIR}/{stale}")
    shards = [shard_of.get(k) for k in rows["key"].to_pylist()]
    rows = _set_column(rows, "shard", pa.array(shards, pa.string()))
    return rows, [entries[name] for name, _ in plan]


def _verify_shard(store: Store, name: str, entry: dict) -> bool:
    path = store.path(schema.SHARDS_DIR, name)
    if store.fs.size(path) != entry.get("filesize"):
        return False
    h = hashlib.md5()
    with store.fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == entry.get("md5sum")


def write_meta(store: Store, rows: pa.Table) -> None:
    """One Parquet per input partition in DIR/meta with every input row and every schema column."""
    from curate.writer import write_meta_parquet

    names = [c for c in rows.column_names if c not in INTERNAL_COLUMNS]
    cols = list(schema.META_COLUMNS) + sorted(c for c in names if c not in schema.META_COLUMNS)
    parts = np.array([schema.split_key(k)[0] for k in rows["key"].to_pylist()])
    for p in np.unique(parts):
        sub = rows.take(pa.array(np.nonzero(parts == p)[0]))
        arrays = []
        for c in cols:
            if c in sub.column_names:
                arr = sub[c]
                if c in META_TYPES and arr.type != META_TYPES[c]:
                    arr = arr.cast(META_TYPES[c])
            else:
                arr = pa.nulls(sub.num_rows, META_TYPES.get(c, pa.string()))
            arrays.append(arr)
        write_meta_parquet(store.path(schema.META_DIR, schema.meta_name(int(p))), pa.table(arrays, names=cols),
                           fs=store.fs)


def make_summary(rows: pa.Table, entries: list[dict], duration: float, startup: float, scoring: str,
                 out: str, extra: dict | None = None) -> dict:
    statuses = Counter(rows["status"].to_pylist())
    subsets = Counter(s for s, st in zip(rows["subset"].to_pylist(), rows["status"].to_pylist()) if st == "ok")
    ok = statuses.get("ok", 0)
    summary = {
        "out": out,
        "rows_in": rows.num_rows,
        "counts_by_status": {s: statuses.get(s, 0) for s in schema.STATUSES},
        "counts_by_subset": {s: subsets.get(s, 0) for s in schema.SUBSETS},
        "shards": len(entries),
        "shard_bytes": int(sum(e["filesize"] for e in entries)),
        "duration_seconds": round(duration, 3),
        "startup_seconds": round(startup, 3),
        "images_per_second": round(ok / duration, 2) if duration > 0 else None,
        "rows_per_second": round(rows.num_rows / duration, 2) if duration > 0 else None,
        "scoring": scoring,
    }
    unknown = set(statuses) - set(schema.STATUSES)
    if unknown:
        raise RuntimeError(f"stages produced statuses outside the schema vocabulary: {sorted(unknown)}")
    summary.update(extra or {})
    return summary


def finalize(cfg: BuildConfig, store: Store, rows: pa.Table, t_start: float, startup: float,
             extra: dict | None = None, phases: dict | None = None) -> dict:
    """Score, split, write shards, metadata, manifest, summary (last) and the report."""
    from curate.writer import write_manifest

    phases = dict(phases or {})
    _remove_temporaries(store)
    t = time.monotonic()
    rows, scoring, classifier = apply_scores(cfg, store, rows)
    split = cfg.split.with_classifier_thresholds(classifier["thresholds"] if classifier else None)
    rows = apply_split(rows, split)
    phases["score_split"], t = time.monotonic() - t, time.monotonic()
    rows, entries = write_shards(cfg, store, rows)
    phases["shards"], t = time.monotonic() - t, time.monotonic()
    log.info("%d shards written after %.1fs", len(entries), time.monotonic() - t_start)
    write_meta(store, rows)
    manifest_entries = [{k: v for k, v in e.items() if k != "keys_digest"} for e in entries]
    write_manifest(store.path(schema.MANIFEST_FILE), manifest_entries, name=Path(store.root).name, fs=store.fs)
    phases["meta_manifest"] = time.monotonic() - t
    extra = {**(extra or {}), "classifier": classifier,
             "split_thresholds": {"style_min_score": split.style_threshold(),
                                  "content_max_score": split.content_threshold()},
             "phase_seconds": {k: round(v, 3) for k, v in phases.items()}}
    summary = make_summary(rows, entries, time.monotonic() - t_start, startup, scoring, store.url, extra)
    store.write_json(schema.SUMMARY_FILE, summary)
    if cfg.report:
        try:
            write_report(cfg, store, rows, summary)
        except Exception:  # the report is a convenience; the dataset is already complete
            log.exception("could not write %s", schema.REPORT_FILE)
    return summary


def _remove_temporaries(store: Store) -> None:
    """Delete temporary files a killed run left next to the final outputs (they are never read)."""
    for folder in ("", schema.META_DIR):
        for name in store.ls(folder) if folder else store.ls():
            if name.startswith(".") and ".tmp-" in name:
                store.rm(f"{folder}/{name}" if folder else name)


def write_report(cfg: BuildConfig, store: Store, rows: pa.Table, summary: dict) -> None:
    """DIR/report.html: kept samples per subset and rejected ones whose bytes are still staged, embedded."""
    from curate.report import render_report, select_examples

    thumbs: dict[str, list[tuple[str, bytes]]] = {}
    for group, idx in select_examples(rows, per_subset=cfg.report_thumbnails).items():
        picked = rows.take(pa.array(idx, pa.int64()))
        datas = read_refs(store.fs, store.root, picked["_ref_path"].to_pylist(), picked["_ref_offset"].to_pylist(),
                          picked["_ref_length"].to_pylist())
        thumbs[group] = list(zip(picked["key"].to_pylist(), datas))
    limits = {"min_side": cfg.check.min_side, "max_aspect_ratio": cfg.check.max_aspect_ratio}
    html = render_report(summary, rows.drop_columns([c for c in REF_COLUMNS if c in rows.column_names]), thumbs,
                         limits=limits)
    store.write_bytes(schema.REPORT_FILE, html.encode())


# --------------------------------------------------------------------------------------------------- runs
def _prewarm_writer() -> None:
    import webdataset  # noqa: F401

    import curate.writer  # noqa: F401


def run_build(cfg: BuildConfig, startup: float = 0.0, extra: dict | None = None) -> dict:
    """The whole build for ``cfg`` on the already initialised Ray; returns the summary."""
    store = Store(cfg.out, cfg.storage_options)
    if store.exists(schema.SUMMARY_FILE) and not store.exists(STAGING):
        log.info("%s is already complete (summary.json present, no staging): nothing to do", cfg.out)
        return store.read_json(schema.SUMMARY_FILE)
    t_start = time.monotonic()
    # the tar writer's imports (webdataset pulls in torch) take seconds; overlap them with the downloads
    threading.Thread(target=_prewarm_writer, name="bbst-prewarm", daemon=True).start()
    partitions = stage_inputs(cfg, store)
    log.info("URL list: %d rows in %d partitions", sum(partitions.values()), len(partitions))
    first_rows = download_and_check(cfg, store, partitions)
    phases = {"read_download_check": time.monotonic() - t_start}
    if first_rows is not None:
        phases["until_first_rows"] = first_rows - t_start  # included in read_download_check
    log.info("staged all partitions after %.1fs", time.monotonic() - t_start)
    rows = load_staged_rows(store, partitions)
    rows = apply_dedup(cfg, rows)
    phases["dedup"] = time.monotonic() - t_start - phases["read_download_check"]
    log.info("dedup done after %.1fs", time.monotonic() - t_start)
    summary = finalize(cfg, store, rows, t_start, startup, extra, phases)
    if not cfg.keep_staging:
        store.rm(STAGING, recursive=True)
    return summary


def run_rescore(cfg: BuildConfig, directory: str, startup: float = 0.0) -> dict:
    """Re-score the samples of an existing output ``directory`` from its shards (no download) and re-shard."""
    if not cfg.score.classifier:
        raise ConfigError("--rescore needs a classifier: pass --classifier PATH (or score.classifier in the config)")
    store = Store(directory, cfg.storage_options)
    if not store.exists(schema.MANIFEST_FILE) and not store.exists(STAGING, "rescore", "sources.json"):
        raise FileNotFoundError(f"{directory}: no {schema.MANIFEST_FILE}; --rescore needs a finished build output")
    t_start = time.monotonic()
    src_dir = f"{STAGING}/rescore"
    if not store.exists(src_dir, "sources.json"):
        # move the old shards aside first: the new plan may reuse their names
        manifest = store.read_json(schema.MANIFEST_FILE)
        names = [e["url"].rsplit("/", 1)[-1] for e in manifest["shardlist"]]
        store.fs.makedirs(store.path(src_dir), exist_ok=True)
        for name in names:
            if store.exists(schema.SHARDS_DIR, name):
                store.fs.mv(store.path(schema.SHARDS_DIR, name), store.path(src_dir, name))
        store.write_json(f"{src_dir}/sources.json", names)
    sources = store.read_json(f"{src_dir}/sources.json")
    metas = [n for n in store.ls(schema.META_DIR) if n.endswith(".parquet")]
    rows = _concat([store.read_parquet(f"{schema.META_DIR}/{n}") for n in metas]).sort_by("key")
    refs = _index_tars(store, src_dir, sources)
    keys = rows["key"].to_pylist()
    in_tar = [k in refs for k in keys]
    status = [("ok" if t else s) for t, s in zip(in_tar, rows["status"].to_pylist())]
    rows = _set_column(rows, "status", pa.array(status, pa.string()))
    for col in ("score", "classifier_version", "subset", "shard"):
        vals = [None if t else v for t, v in zip(in_tar, rows[col].to_pylist())]
        rows = _set_column(rows, col, pa.array(vals, META_TYPES[col]))
    errors = [None if t else e for t, e in zip(in_tar, rows["error"].to_pylist())]
    rows = _set_column(rows, "error", pa.array(errors, pa.string()))
    rows = _set_column(rows, "_ref_path", pa.array([refs[k][0] if k in refs else None for k in keys], pa.string()))
    rows = _set_column(rows, "_ref_offset", pa.array([refs[k][1] if k in refs else -1 for k in keys], pa.int64()))
    rows = _set_column(rows, "_ref_length", pa.array([refs[k][2] if k in refs else -1 for k in keys], pa.int64()))
    rows = _set_column(rows, "ext", pa.array([refs[k][3] if k in refs else None for k in keys], pa.string()))
    summary = finalize(cfg, store, rows, t_start, startup, {"rescored_from": len(sources)})
    if not cfg.keep_staging:
        store.rm(STAGING, recursive=True)
    return summary


def _index_tars(store: Store, src_dir: str, names: list[str]) -> dict[str, tuple[str, int, int, str]]:
    """``{key: (path, data offset, size, ext)}`` of the image member of every sample in the given tars."""
    import tarfile

    refs: dict[str, tuple[str, int, int, str]] = {}
    for name in names:
        rel = f"{src_dir}/{name}"
        with store.fs.open(store.path(rel), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if not m.isfile() or "." not in m.name:
                    continue
                key, ext = m.name.split(".", 1)
                if ext != "json":
                    refs[key] = (rel, m.offset_data, m.size, ext)
    return refs


# --------------------------------------------------------------------------------------------------- CLI
EXAMPLES = (
    ("bbst build", "the built-in demo: generated images served on loopback -> ./bbst-demo (report.html inside)"),
    ("bbst build --urls urls.csv --out ./bbst-out --min-side 512",
     "your URL list (CSV/TSV, Parquet, JSONL or text; file, folder, glob or s3://...) -> shards in ./bbst-out"),
    ("bbst build --urls links.csv --out ./bbst-out --set reader.url_column=link",
     "a list whose URL column has another name; any option is one --set away"),
    ("bbst build --config my.yaml --set download.threads=32",
     "every option from a YAML file (python -m curate.build_config prints one with every default)"),
    ("bbst build --rescore ./bbst-out --classifier runs/clf/checkpoint",
     "re-score and re-split a finished output with a new classifier, without downloading again"),
)


def build_parser() -> argparse.ArgumentParser:
    from curate.cli import ConfigFlags, add_config_file_flags, make_parser

    p = make_parser("build", __doc__.split("\n")[0], EXAMPLES)
    add_config_file_flags(p, "BuildConfig (see pipelines/configs/build_bbst.example.yaml)", "download.timeout=5")
    flags = ConfigFlags(BuildConfig)
    flags.add(p, "urls", metavar="URLS")
    p.add_argument("--images", metavar="DIR_OR_GLOB",
                   help="build from image files instead of a URL list: a folder tree or glob, local or fsspec "
                        "(default: none)")
    flags.add(p, "out", metavar="DIR")
    flags.add(p, "check.min_side", "--min-side", metavar="N")
    flags.add(p, "download.allow_private_network", "--allow-private-network")
    flags.add(p, "score.classifier", "--classifier", metavar="CKPT")
    p.add_argument("--rescore", metavar="DIR",
                   help="re-score the shards of an existing output DIR with --classifier, no download (default: off)")
    flags.add(p, "demo_images", metavar="N")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   help="logging level (default: INFO)")
    p.set_defaults(config_flags=flags)
    return p


def load_cli_config(args: argparse.Namespace) -> BuildConfig:
    """Defaults <- ``--config`` YAML <- named flags <- ``--set`` pairs; unknown keys are errors."""
    from curate.cli import load_args

    extra, origins = None, None
    if args.images is not None:
        if args.urls is not None:
            raise ConfigError("--images and --urls: pass one of them")
        extra, origins = {"urls": args.images, "reader": {"format": "images"}}, {"urls": "--images"}
    return load_args(BuildConfig, args, args.config_flags, extra=extra, extra_origins=origins)


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        # attaches to the cluster when RAY_ADDRESS is set (ray job submit), else starts a local Ray
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)


@error_boundary("build")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    cfg = load_cli_config(args)
    if args.rescore:
        _init_ray()
        summary = run_rescore(cfg, args.rescore, startup=time.monotonic() - t0)
    elif cfg.urls is None:
        summary = run_demo(cfg, explicit_out=args.out is not None or "out" in _config_keys(args), t0=t0)
    else:
        _init_ray()
        summary = run_build(cfg, startup=time.monotonic() - t0)
    print_summary(summary)
    return summary


def _config_keys(args) -> set[str]:
    from curate.config import parse_overrides, read_yaml

    keys = set(read_yaml(args.config)) if args.config else set()
    return keys | set(parse_overrides(args.sets))


def run_demo(cfg: BuildConfig, explicit_out: bool, t0: float) -> dict:
    """Generate the demo corpus, serve it on loopback and build it into ./bbst-demo (or --out)."""
    from curate.demo import demo_corpus

    out = cfg.out if explicit_out else DEFAULT_DEMO_OUT
    store = Store(out, cfg.storage_options)
    if store.exists(schema.SUMMARY_FILE):
        previous = store.read_json(schema.SUMMARY_FILE)
        if not previous.get("demo"):
            raise FileExistsError(f"{out}: holds a non-demo output; pass another --out for the demo")
        log.info("replacing the previous demo output in %s", out)
        store.rm("", recursive=True)
    elif store.exists(STAGING):
        store.rm(STAGING, recursive=True)  # the demo's URLs change every run (new port), staging can't be reused
    with tempfile.TemporaryDirectory(prefix="bbst-demo-corpus-") as tmp:
        t_setup = time.monotonic()
        log.info("demo: generating %d images (min side %d) and serving them on loopback",
                 cfg.demo_images, cfg.check.min_side)
        with demo_corpus(tmp, n_images=cfg.demo_images, min_side=cfg.check.min_side) as urls:
            demo_cfg = dataclasses.replace(cfg, urls=str(urls), out=out, allow_private_network=True)
            if cfg.demo_classifier and not cfg.score.classifier:
                # kept beside the demo output when that is local, so `--rescore` and the label app can reuse it
                where = Path(out if "://" not in out else tmp) / DEMO_CLASSIFIER_DIR
                ckpt = bootstrap_demo_classifier(urls, where)
                demo_cfg = dataclasses.replace(demo_cfg, score=dataclasses.replace(cfg.score, classifier=ckpt))
            setup = time.monotonic() - t_setup  # corpus and demo classifier: the demo's inputs, not start-up
            _init_ray()
            return run_build(demo_cfg, startup=time.monotonic() - t0 - setup,
                             extra={"demo": True, "demo_setup_seconds": round(setup, 3)})


def bootstrap_demo_classifier(url_list: Path, out_dir: Path, extra_images: int = 200) -> str:
    """Train the demo's classifier: random-init tiny backbones, a head fitted on known labels (never a real model).

    The labels are the demo corpus's ground truth (artwork-like vs photo-like images that the pipeline keeps),
    topped up with ``extra_images`` small images from the same generator so the head sees enough of both kinds.
    """
    from classifier.demo import build_demo_classifier
    from curate import synthetic
    from curate.demo import known_labels

    labelled = known_labels(url_list)
    images = [path.read_bytes() for path, _ in labelled]
    labels = [label for _, label in labelled]
    extra, extra_labels = synthetic.labelled_batch(extra_images, size=96, seed=1)
    images += [synthetic.encode(im, "JPEG", quality=90) for im in extra]
    labels += extra_labels.tolist()
    t0 = time.monotonic()
    ckpt = build_demo_classifier(images, labels, str(out_dir))
    log.info("demo: trained the DEMO classifier on %d labelled images in %.1fs -> %s", len(images),
             time.monotonic() - t0, out_dir)
    return ckpt


def print_summary(summary: dict) -> None:
    counts = ", ".join(f"{k}={v}" for k, v in summary["counts_by_status"].items() if v)
    subsets = ", ".join(f"{k}={v}" for k, v in summary["counts_by_subset"].items())
    print(f"\nbbst build: {summary['rows_in']} rows in -> {counts}", flush=True)
    print(f"  subsets: {subsets}; {summary['shards']} shards, {summary['shard_bytes'] / 1e6:.1f} MB", flush=True)
    print(f"  {summary['duration_seconds']:.1f}s processing (+{summary['startup_seconds']:.1f}s start-up), "
          f"{summary['images_per_second']} images/s; {summary['scoring']}", flush=True)
    print(f"  output: {summary['out']} (report.html, manifest.json, summary.json, meta/, shards/)", flush=True)
    if (summary.get("classifier") or {}).get("demo"):
        print("  note: the scores come from a DEMO classifier (random-init tiny backbones, generated images); "
              "see the README for training a real one", flush=True)


if __name__ == "__main__":
    exit_with(main())
