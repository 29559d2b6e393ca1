"""Staging: the URL list cut into input partitions, and the worker step that downloads, checks and stages a unit.

Layout under ``DIR/_staging`` (every file written atomically; a file's presence means it is complete):

- ``partitions.json``: ``{partition: rows}`` of the URL list, written once the list is fully staged;
- ``input/part-P.parquet``: the URL rows of partition ``P``;
- ``images/P/U.bin`` then ``units/P/U.parquet``: the ok bytes of unit ``U`` of partition ``P`` (a run of rows),
  concatenated, and its metadata rows, whose ``_ref_*`` columns say where each row's bytes are. A worker writes
  both; the rows file is written last, so it is the unit's commit marker;
- ``rows/part-P.parquet``: the rows of every unit of ``P`` in key order: the partition's commit marker.

The driver sees only counts and a few example errors per unit; image bytes go from the worker to the store.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from core import schema
from core.schema import STAGING

REF_COLUMNS = ("_ref_path", "_ref_offset", "_ref_length")  # where an ok row's bytes live (staging or a tar)
INTERNAL_COLUMNS = frozenset(REF_COLUMNS) | {"image", "http_status"}

# Arrow types of the schema columns in the metadata Parquet files; pass-through columns keep their own.
META_TYPES: dict[str, pa.DataType] = {c: pa.string() for c in schema.META_COLUMNS}
META_TYPES.update({c: pa.int64() for c in ("width", "height", "original_width", "original_height", "num_bytes")})
META_TYPES["score"] = pa.float64()
META_TYPES.update({"_ref_path": pa.string(), "_ref_offset": pa.int64(), "_ref_length": pa.int64(),
                   "ext": pa.string(), "http_status": pa.int64()})


# what the download and check stages add to every row (a unit where no image got far still has every column)
STAGED_COLUMNS = ("status", "error", "mime", "num_bytes", "original_width", "original_height", "width", "height",
                  "ext", "sha256", "phash")


def input_rel(p: int) -> str:
    return f"{STAGING}/input/part-{p:06d}.parquet"


def rows_rel(p: int) -> str:
    return f"{STAGING}/rows/part-{p:06d}.parquet"


def unit_rows_rel(p: int, u: int) -> str:
    return f"{STAGING}/units/{p:06d}/{u:06d}.parquet"


def unit_bin_rel(p: int, u: int) -> str:
    return f"{STAGING}/images/{p:06d}/{u:06d}.bin"


@dataclass(frozen=True)
class Unit:
    """Rows ``start:stop`` of input partition ``partition``: one worker call."""

    partition: int
    index: int
    start: int
    stop: int


def units_of(partition: int, rows: int, rows_per_unit: int) -> list[Unit]:
    """The units of one partition (the last one shorter)."""
    n = max(1, math.ceil(rows / rows_per_unit))
    return [Unit(partition, u, u * rows_per_unit, min(rows, (u + 1) * rows_per_unit)) for u in range(n)]


def stage_list(store, urls: str, reader_cfg, storage_options: dict | None = None) -> dict[int, int]:
    """Stream the URL list into ``input/part-P.parquet`` files; returns ``{partition: rows}``.

    Done once per run: ``partitions.json`` records the result, and a rerun reads it instead of the list.
    """
    from curate.reader import iter_partitions

    if store.exists(STAGING, "partitions.json"):
        return {int(k): int(v) for k, v in store.read_json(f"{STAGING}/partitions.json").items()}
    partitions: dict[int, int] = {}
    for p, table in iter_partitions(urls, reader_cfg, storage_options=storage_options):
        partitions[p] = table.num_rows
        if not store.exists(input_rel(p)):
            store.write_parquet(input_rel(p), table)
    if not partitions:
        from curate.outputs import InputError

        raise InputError(f"--urls {urls}: the URL list has no rows")
    store.write_json(f"{STAGING}/partitions.json", partitions)
    return partitions


def committed_partitions(store) -> set[int]:
    return {int(n[5:11]) for n in store.ls(STAGING, "rows") if n.startswith("part-") and n.endswith(".parquet")}


def done_units(store, p: int) -> set[int]:
    return {int(n[:6]) for n in store.ls(STAGING, "units", f"{p:06d}") if n.endswith(".parquet") and n[:6].isdigit()}


def plan_units(store, partitions: dict[int, int], rows_per_unit: int,
               ) -> tuple[list[int], dict[int, int], list[Unit]]:
    """What staging has left to do (a rerun after a kill redoes only that): ``(partitions not committed yet,
    units of each of them, their units without a rows file)``."""
    committed = committed_partitions(store)
    pending = [p for p in sorted(partitions) if p not in committed]
    units_per: dict[int, int] = {}
    todo: list[Unit] = []
    for p in pending:
        units = units_of(p, partitions[p], rows_per_unit)
        units_per[p] = len(units)
        done = done_units(store, p)
        todo.extend(u for u in units if u.index not in done)
    return pending, units_per, todo


def to_table(batch: dict[str, Any], drop: frozenset[str] = frozenset()) -> pa.Table:
    """A numpy/list batch as an Arrow table; NaN in object columns is missing, and all-missing columns get their
    schema type so that tables of different batches concatenate."""
    cols = {}
    for name, arr in batch.items():
        if name in drop:
            continue
        arr = np.asarray(arr)
        if arr.dtype == object:
            vals = [None if isinstance(v, float) and math.isnan(v) else (v.item() if isinstance(v, np.generic) else v)
                    for v in arr.tolist()]
            col = pa.array(vals, from_pandas=True)
        else:
            col = pa.array(arr, from_pandas=True)
        if name in META_TYPES and col.type != META_TYPES[name]:
            col = pa.nulls(len(arr), META_TYPES[name]) if col.null_count == len(arr) else col.cast(META_TYPES[name])
        elif len(arr) and col.null_count == len(arr):
            col = pa.nulls(len(arr), pa.string())
        cols[name] = col
    return pa.table(cols)


def concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


class UnitProcessor:
    """Worker side of staging: download a unit's URLs, check each image as it arrives, write the ok bytes and
    the rows to the store. Holds one Downloader (HTTP session, thread pool) and one ImageChecker, so a worker
    builds it once and reuses it for every unit it runs."""

    def __init__(self, store, download_cfg, check_cfg) -> None:
        from curate.downloader import Downloader
        from curate.imagecheck import ImageChecker

        self.store = store
        self.downloader = Downloader(download_cfg)
        self.checker = ImageChecker(check_cfg)

    def __call__(self, unit: Unit) -> dict[str, Any]:
        """Stage ``unit``; returns its account: rows, status counts, one example error per status, kept bytes."""
        import itertools
        import warnings
        from concurrent.futures import FIRST_COMPLETED, wait

        from PIL import Image

        table = self.store.read_parquet(input_rel(unit.partition)).slice(unit.start, unit.stop - unit.start)
        urls = table["url"].to_pylist()
        sources = table["source"].to_pylist() if "source" in table.column_names else [None] * len(urls)
        n = len(urls)
        results: list[dict[str, Any] | None] = [None] * n
        offsets = np.full(n, -1, dtype=np.int64)
        lengths = np.full(n, -1, dtype=np.int64)
        bin_rel = unit_bin_rel(unit.partition, unit.index)

        def write_bin(f) -> int:
            pos = 0
            # check each image as soon as its download ends: decode overlaps the remaining downloads. At most
            # twice the pool's threads are submitted and not yet checked, so the bodies that wait for the check
            # stay a bounded number, whatever the unit's size and however fast the server answers
            todo = iter(enumerate(urls))
            futures: dict = {}

            def submit_more() -> None:
                for i, url in itertools.islice(todo, max(0, 2 * self.downloader.cfg.threads - len(futures))):
                    futures[self.downloader.pool.submit(self.downloader.fetch, url)] = i

            def finished() -> Iterator:
                submit_more()
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield futures.pop(fut), fut
                    submit_more()

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                for i, fut in finished():
                    row = fut.result()
                    data = row.pop("image")
                    if row["status"] == "ok":
                        checked = self.checker.check(data, sources[i])  # the source picks the short-side floor
                        data = checked.pop("image", data)
                        row.update(checked)
                    if row["status"] == "ok" and data:
                        f.write(data)
                        offsets[i], lengths[i] = pos, len(data)
                        pos += len(data)
                    results[i] = row
            return pos

        kept_bytes = self.store.write_with(bin_rel, write_bin)
        cols: dict[str, Any] = {name: table[name] for name in table.column_names}
        names = sorted(({k for r in results for k in r} | set(STAGED_COLUMNS)) - INTERNAL_COLUMNS)
        out = pa.table(cols)
        for name in names:
            vals = [r.get(name) for r in results]
            out = out.append_column(name, to_table({name: np.array(vals + [None], dtype=object)[:-1]})[name])
        out = out.append_column("_ref_path", pa.array([bin_rel if o >= 0 else None for o in offsets], pa.string()))
        out = out.append_column("_ref_offset", pa.array(offsets)).append_column("_ref_length", pa.array(lengths))
        self.store.write_parquet(unit_rows_rel(unit.partition, unit.index), out)
        statuses = [r["status"] for r in results]
        return {"unit": (unit.partition, unit.index), "rows": n, "kept_bytes": kept_bytes,
                **account(statuses, [r.get("error") for r in results])}


_PROCESSORS: dict[tuple, UnitProcessor] = {}


def cached_processor(store, download_cfg, check_cfg) -> UnitProcessor:
    """One :class:`UnitProcessor` per worker process and configuration (Ray reuses worker processes across
    tasks, so the HTTP session, its connection pool and the imports are paid once per worker, not per unit)."""
    key = (store.url, repr(sorted(store.storage_options.items())), repr(download_cfg), repr(check_cfg))
    if key not in _PROCESSORS:
        _PROCESSORS.clear()
        _PROCESSORS[key] = UnitProcessor(store, download_cfg, check_cfg)
    return _PROCESSORS[key]


def account(statuses: list[str], errors: list[str | None]) -> dict[str, Any]:
    """Status counts and the first error message per status (what progress lines and summaries show)."""
    examples: dict[str, str] = {}
    for s, e in zip(statuses, errors):
        if s != "ok" and e and s not in examples:
            examples[s] = str(e)[:200]
    return {"statuses": dict(Counter(statuses)), "examples": examples}


def compact_partition(store, p: int, units: int) -> int:
    """Merge the ``units`` unit row files of partition ``p`` into its committed rows file; returns its rows."""
    tables = [store.read_parquet(unit_rows_rel(p, u)) for u in range(units)]
    rows = concat(tables).sort_by("key")
    store.write_parquet(rows_rel(p), rows)
    return rows.num_rows


def read_refs(store, paths, offsets, lengths) -> list[bytes]:
    """Bytes of each ``(path, offset, length)`` reference (paths relative to the store), one open per file."""
    return list(iter_refs(store, paths, offsets, lengths))


def iter_refs(store, paths, offsets, lengths) -> Iterator[bytes]:
    """:func:`read_refs` one reference at a time: only the bytes of the current one are held."""
    handles: dict[str, Any] = {}
    try:
        for p, o, n in zip(paths, offsets, lengths):
            if p not in handles:
                handles[p] = store.open(p)
            f = handles[p]
            f.seek(int(o))
            data = f.read(int(n))
            if len(data) != int(n):
                raise OSError(f"{store.path(p)}: short read at offset {o} ({len(data)} of {n} bytes)")
            yield data
    finally:
        for f in handles.values():
            f.close()


def iter_partition_rows(store, partitions: list[int], rel_of=rows_rel, columns: list[str] | None = None,
                        ) -> Iterator[tuple[int, pa.Table]]:
    for p in partitions:
        yield p, store.read_parquet(rel_of(p), columns=columns)
