"""Assemble a build's outputs from staged rows: decisions per partition, the shard plan, shards, metadata, summary.

Each function reads one partition or one shard's worth of rows, so a cluster runs them as parallel tasks; the
shard plan, the manifest and the summary are small (one entry per shard, counts per status).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import schema
from core.errors import InputError
from core.schema import DEDUP_DIR, RESCORE_DIR, STAGING
from curate.staging import INTERNAL_COLUMNS, META_TYPES, REF_COLUMNS, iter_refs

SAMPLE_INTERNAL = INTERNAL_COLUMNS | {"shard"}


def final_rel(p: int) -> str:
    return f"{STAGING}/final/part-{p:06d}.parquet"


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), META_TYPES.get(name))
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


def column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


def merge_scores(rows: pa.Table, scores: pa.Table | None) -> pa.Table:
    """Rows with ``score``, ``classifier_version`` and (for unscorable images) ``score_error`` from ``scores``."""
    if scores is None or not scores.num_rows:
        for col in ("score", "classifier_version"):
            if col not in rows.column_names:
                rows = set_column(rows, col, [None] * rows.num_rows)
        return rows
    by_key = {k: i for i, k in enumerate(scores["key"].to_pylist())}
    score_col, version_col = scores["score"].to_pylist(), column(scores, "classifier_version")
    status_col, error_col = column(scores, "status"), column(scores, "error")
    score, version = column(rows, "score"), column(rows, "classifier_version")
    status, error = column(rows, "status"), column(rows, "error")
    for i, k in enumerate(rows["key"].to_pylist()):
        j = by_key.get(k)
        if j is None:
            continue
        s = score_col[j]
        score[i] = None if s is None or math.isnan(s) else float(s)
        version[i] = version_col[j]
        # the scorer only changes ok rows (to score_error); a row a later step decided keeps its decision
        if status[i] == "ok" and status_col[j] and status_col[j] != status[i]:
            status[i], error[i] = status_col[j], error_col[j]
    for name, vals in (("score", score), ("classifier_version", version), ("status", status), ("error", error)):
        rows = set_column(rows, name, vals)
    return rows


def apply_split(rows: pa.Table, split) -> pa.Table:
    """Assign ok rows to ``style``/``content``; ok rows that fit neither become ``score_filtered``."""
    from curate.split import assign_subsets

    batch = {c: np.array(column(rows, c) + [None], dtype=object)[:-1] for c in ("status", "error", "source", "score")}
    out = assign_subsets(batch, split)
    for col in ("status", "error", "subset"):
        rows = set_column(rows, col, [None if v is None else str(v) for v in out[col]])
    return rows


# ----------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class ShardSpec:
    """One planned shard: the ok rows of ``subset`` with keys in ``[first, last]``, in ``partitions``."""

    name: str
    subset: str
    first: str
    last: str
    nsamples: int
    partitions: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subset": self.subset, "first": self.first, "last": self.last,
                "nsamples": self.nsamples, "partitions": list(self.partitions)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardSpec:
        return cls(d["name"], d["subset"], d["first"], d["last"], int(d["nsamples"]), tuple(d["partitions"]))


class ShardPlanner:
    """Packs ok rows into shards in key order per subset, one partition at a time (partitions in key order).

    The same greedy rule as :func:`core.tarwrite.plan_shards` (close a shard before it passes either target), so
    a plan never needs every row at once: only one open shard per subset.
    """

    def __init__(self, max_samples: int, max_bytes: int, state: dict[str, Any] | None = None) -> None:
        from core.tarwrite import JSON_ESTIMATE

        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be >= 1")
        self.max_samples, self.max_bytes, self.json_estimate = max_samples, max_bytes, JSON_ESTIMATE
        state = state or {}
        self.open: dict[str, dict[str, Any]] = {k: dict(v) for k, v in state.get("open", {}).items()}
        self.count: Counter[str] = Counter(state.get("count", {}))
        self.specs: list[ShardSpec] = []

    def state(self) -> dict[str, Any]:
        """What a later planner needs to go on where this one stopped (the open shard of each subset and the
        shard count per subset; small whatever the run's size). The closed :attr:`specs` are not part of it."""
        return {"open": {k: {**v, "parts": list(v["parts"])} for k, v in self.open.items()},
                "count": dict(self.count)}

    def add_partition(self, p: int, keys: Iterable[str], subsets: Iterable[str | None], sizes: Iterable[int]) -> None:
        from core.tarwrite import padded_size

        for key, subset, size in sorted(zip(keys, subsets, sizes)):
            if subset is None:
                continue
            est = padded_size(int(size or 0)) + self.json_estimate
            cur = self.open.get(subset)
            if cur and (cur["n"] >= self.max_samples or cur["bytes"] + est > self.max_bytes):
                self._close(subset)
                cur = None
            if cur is None:
                cur = self.open[subset] = {"first": key, "n": 0, "bytes": 1024, "parts": []}
            cur["last"] = key
            cur["n"] += 1
            cur["bytes"] += est
            if not cur["parts"] or cur["parts"][-1] != p:
                cur["parts"].append(p)

    def _close(self, subset: str) -> None:
        cur = self.open.pop(subset)
        name = schema.shard_name(subset, self.count[subset])
        self.count[subset] += 1
        self.specs.append(ShardSpec(name, subset, cur["first"], cur["last"], cur["n"], tuple(cur["parts"])))

    def finish(self) -> list[ShardSpec]:
        for subset in list(self.open):
            self._close(subset)
        return sorted(self.specs, key=lambda s: s.name)


def shard_of_keys(keys: list[str], subsets: list[str | None], statuses: list[str], specs: list[ShardSpec],
                  ) -> list[str | None]:
    """The shard name of every ok row (None for the others), from the plan's key ranges."""
    by_subset: dict[str, list[ShardSpec]] = {}
    for s in specs:
        by_subset.setdefault(s.subset, []).append(s)
    firsts = {sub: [s.first for s in ss] for sub, ss in by_subset.items()}
    out: list[str | None] = []
    import bisect

    for k, sub, st in zip(keys, subsets, statuses):
        if st != "ok" or sub not in by_subset:
            out.append(None)
            continue
        i = bisect.bisect_right(firsts[sub], k) - 1
        spec = by_subset[sub][i] if i >= 0 else None
        out.append(spec.name if spec is not None and spec.first <= k <= spec.last else None)
    return out


def members_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------------- shards
def shard_rows(store, spec: ShardSpec) -> pa.Table:
    """The ok rows of one planned shard, in key order, read from the final rows of its partitions."""
    from curate.staging import concat

    parts = []
    for p in spec.partitions:
        t = store.read_parquet(final_rel(p))
        mask = pc.and_(pc.and_(pc.equal(t["status"], "ok"), pc.equal(t["subset"], spec.subset)),
                       pc.and_(pc.greater_equal(t["key"], spec.first), pc.less_equal(t["key"], spec.last)))
        parts.append(t.filter(mask))
    rows = concat(parts).sort_by("key")
    if rows.num_rows != spec.nsamples:
        raise RuntimeError(f"shard {spec.name}: planned {spec.nsamples} samples, found {rows.num_rows}")
    return rows


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SAMPLE_INTERNAL}


def verify_shard(store, name: str, entry: dict[str, Any]) -> bool:
    """Whether ``shards/name`` still has the size and md5 its manifest entry records."""
    rel = f"{schema.SHARDS_DIR}/{name}"
    if not store.exists(rel) or store.fs.size(store.path(rel)) != entry.get("filesize"):
        return False
    h = hashlib.md5()
    with store.open(rel) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == entry.get("md5sum")


def write_planned_shard(store, spec: ShardSpec | dict[str, Any]) -> dict[str, Any]:
    """Write one planned shard (or keep it when a finished copy with the same members verifies); its entry."""
    from core.tarwrite import write_shard

    if isinstance(spec, dict):
        spec = ShardSpec.from_json(spec)
    rows = shard_rows(store, spec)
    keys = rows["key"].to_pylist()
    digest = members_digest(keys)
    marker = f"{STAGING}/shards/{spec.name}.json"
    if store.exists(marker):
        entry = store.read_json(marker)
        if entry.get("keys_digest") == digest and verify_shard(store, spec.name, entry):
            return {**entry, "reused": True}
    records = rows.to_pylist()
    # in key order, each image read from staging as it is written: one image in memory, whatever the shard size
    datas = iter_refs(store, [r["_ref_path"] for r in records], [r["_ref_offset"] for r in records],
                      [r["_ref_length"] for r in records])
    samples = ((r["key"], r["ext"], data, sample_meta(r)) for r, data in zip(records, datas))
    entry = write_shard(store.path(schema.SHARDS_DIR, spec.name), samples, fs=store.fs, ordered=True)
    # wids resolves relative urls against the manifest's own location, so the output folder stays movable
    entry = {**entry, "url": f"{schema.SHARDS_DIR}/{spec.name}", "subset": spec.subset, "keys_digest": digest}
    store.write_json(marker, entry)
    return {**entry, "reused": False}


# ----------------------------------------------------------------------------------------------------- meta
def meta_table(rows: pa.Table) -> pa.Table:
    """The published metadata of one partition: schema columns first, typed, then pass-through columns."""
    names = [c for c in rows.column_names if c not in INTERNAL_COLUMNS and c != "ext"]
    cols = list(schema.META_COLUMNS) + sorted(c for c in names if c not in schema.META_COLUMNS)
    arrays = []
    for c in cols:
        if c in rows.column_names:
            arr = rows[c]
            if c in META_TYPES and arr.type != META_TYPES[c]:
                arr = arr.cast(META_TYPES[c])
        else:
            arr = pa.nulls(rows.num_rows, META_TYPES.get(c, pa.string()))
        arrays.append(arr)
    return pa.table(arrays, names=cols)


def partition_account(rows: pa.Table) -> dict[str, Any]:
    """Counts by status and subset, error examples, and kept bytes of one partition's final rows."""
    from curate.staging import account

    statuses = column(rows, "status")
    subsets = Counter(s for s, st in zip(column(rows, "subset"), statuses) if st == "ok")
    acc = account(statuses, column(rows, "error"))
    sizes = [n for n, st in zip(column(rows, "_ref_length"), statuses) if st == "ok" and n is not None]
    return {**acc, "rows": rows.num_rows, "subsets": dict(subsets), "kept_bytes": int(sum(sizes))}


def add_accounts(accounts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-partition accounts (examples: the first one seen per status)."""
    total: dict[str, Any] = {"rows": 0, "statuses": Counter(), "subsets": Counter(), "examples": {}, "kept_bytes": 0}
    for a in accounts:
        total["rows"] += a.get("rows", 0)
        total["statuses"].update(a.get("statuses", {}))
        total["subsets"].update(a.get("subsets", {}))
        total["kept_bytes"] += a.get("kept_bytes", 0)
        for s, e in a.get("examples", {}).items():
            total["examples"].setdefault(s, e)
    return total


def make_summary(total: dict[str, Any], entries: list[dict[str, Any]], duration: float, startup: float,
                 scoring: str, out: str, extra: dict | None = None) -> dict[str, Any]:
    statuses, subsets = total["statuses"], total["subsets"]
    unknown = set(statuses) - set(schema.STATUSES)
    if unknown:
        raise RuntimeError(f"stages produced statuses outside the schema vocabulary: {sorted(unknown)}")
    ok = statuses.get("ok", 0)
    summary = {
        "out": out,
        "rows_in": total["rows"],
        "counts_by_status": {s: statuses.get(s, 0) for s in schema.STATUSES},
        "counts_by_subset": {s: subsets.get(s, 0) for s in schema.SUBSETS},
        "error_examples": {s: total["examples"][s] for s in schema.STATUSES if s in total["examples"]},
        "shards": len(entries),
        "shard_bytes": int(sum(e["filesize"] for e in entries)),
        "duration_seconds": round(duration, 3),
        "startup_seconds": round(startup, 3),
        "images_per_second": round(ok / duration, 2) if duration > 0 else None,
        "rows_per_second": round(total["rows"] / duration, 2) if duration > 0 else None,
        "scoring": scoring,
    }
    summary.update(extra or {})
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """What a build prints when it ends: counts, subsets, shards, speed, the top errors and where the output is."""
    counts = ", ".join(f"{k}={v}" for k, v in summary["counts_by_status"].items() if v)
    subsets = ", ".join(f"{k}={v}" for k, v in summary["counts_by_subset"].items())
    lines = [f"\nbbst build: {summary['rows_in']} rows in -> {counts}",
             f"  subsets: {subsets}; {summary['shards']} shards, {summary['shard_bytes'] / 1e6:.1f} MB",
             (f"  {summary['duration_seconds']:.1f}s processing (+{summary['startup_seconds']:.1f}s start-up), "
              f"{summary['images_per_second']} images/s; {summary['scoring']}")]
    failures = sorted(((c, s) for s, c in summary["counts_by_status"].items() if s != "ok" and c), reverse=True)
    if failures:
        lines.append("  top errors:")
        for count, status in failures[:5]:
            example = (summary.get("error_examples") or {}).get(status)
            lines.append(f"    {status} x{count}" + (f": e.g. {example}" if example else ""))
    lines.append(f"  output: {summary['out']} (report.html, manifest.json, summary.json, meta/, shards/)")
    if (summary.get("classifier") or {}).get("demo"):
        lines.append("  note: the scores come from a DEMO classifier (random-init tiny backbones, generated images); "
                     "see the README for training a real one")
    return "\n".join(lines)


def publish(store, entries: list[dict[str, Any]], accounts: list[dict[str, Any]], partitions: Iterable[int],
            t_start: float, startup: float, scoring: str, extra: dict | None = None, embeddings: bool = False,
            ) -> tuple[dict[str, Any], list[str]]:
    """Write the manifest and ``summary.json`` of a build whose shards and metadata are written; returns the
    summary and the files the build published (for the run record; with ``embeddings``, the score stage's
    ``embeddings/part-P.parquet`` too)."""
    import time
    from pathlib import PurePosixPath

    from core.tarwrite import write_manifest

    write_manifest(store.path(schema.MANIFEST_FILE), entries, name=PurePosixPath(store.root).name, fs=store.fs)
    summary = make_summary(add_accounts(accounts), entries, time.monotonic() - t_start, startup, scoring, store.url,
                           extra)
    store.write_json(schema.SUMMARY_FILE, summary)
    files = [f"{schema.SHARDS_DIR}/{e['url'].rsplit('/', 1)[-1]}" for e in entries]
    partitions = list(partitions)
    files += [f"{schema.META_DIR}/{schema.meta_name(p)}" for p in partitions]
    if embeddings:
        from curate.semantic import embeddings_rel

        files += [embeddings_rel(p) for p in partitions]
    return summary, files + [schema.MANIFEST_FILE, schema.SUMMARY_FILE]


# ----------------------------------------------------------------------------------------------------- rescore
def index_old_shard(store, rel: str) -> pa.Table:
    """``key, _ref_path, _ref_offset, _ref_length, ext`` of the image member of every sample of a shard."""
    from core.shards import index_shard

    keys, offsets, lengths, exts = [], [], [], []
    for sample in index_shard(store.path(rel), fs=store.fs):
        image = sample.image()
        if image is None:
            continue
        ext, ref = image
        keys.append(sample.key)
        offsets.append(ref.offset)
        lengths.append(ref.length)
        exts.append(ext)
    return pa.table({"key": pa.array(keys, pa.string()), "_ref_path": pa.array([rel] * len(keys), pa.string()),
                     "_ref_offset": pa.array(offsets, pa.int64()), "_ref_length": pa.array(lengths, pa.int64()),
                     "ext": pa.array(exts, pa.string())})


def rescore_rows(meta: pa.Table, index: pa.Table) -> pa.Table:
    """A finished partition's metadata turned back into staged rows: samples found in the old shards are ok
    again (score, subset and shard cleared, bytes referenced in the old tar); every other row keeps its status."""
    refs = {k: i for i, k in enumerate(index["key"].to_pylist())}
    keys = meta["key"].to_pylist()
    found = [k in refs for k in keys]
    rows = meta
    rows = set_column(rows, "status", [("ok" if f else s) for f, s in zip(found, column(meta, "status"))])
    rows = set_column(rows, "error", [(None if f else e) for f, e in zip(found, column(meta, "error"))])
    for col in ("score", "classifier_version", "subset", "shard"):
        rows = set_column(rows, col, [(None if f else v) for f, v in zip(found, column(meta, col))])
    for col in (*REF_COLUMNS, "ext"):
        vals = index[col].to_pylist()
        rows = set_column(rows, col, [vals[refs[k]] if k in refs else None for k in keys])
    return rows


# ----------------------------------------------------------------------------------------------------- per partition
def dedup_done(store) -> bool:
    return store.exists(DEDUP_DIR, "done.json")


def decisions_rel(store) -> str | None:
    """Where the decisions of a finished dedup are (the folder of its last wave; None for a re-score, whose
    statuses come from the build)."""
    return store.read_json(f"{DEDUP_DIR}/done.json").get("decisions")


def load_decisions(store, p: int, rel: str | None) -> tuple[dict[int, int], dict[int, int]]:
    """``(exact duplicates, near duplicates)`` that concern partition ``p``, from the dedup files in ``rel`` (the
    folder of a wave that covered ``p``; None: no decisions)."""
    lo, hi = schema.partition_range(p)
    dups: dict[int, int] = {}
    near_file = None
    for name in store.ls(rel) if rel else ():
        if name.startswith("exact-") and name.endswith(".parquet"):
            t = store.read_parquet(f"{rel}/{name}", filters=[("key", ">=", lo), ("key", "<", hi)])
            dups.update(zip(t["key"].to_pylist(), t["dup_of"].to_pylist()))
        elif name == "near.parquet":
            near_file = f"{rel}/{name}"
    near: dict[int, int] = {}
    if near_file:
        wanted = set(dups.values())
        t = store.read_parquet(near_file)
        for k, d in zip(t["key"].to_pylist(), t["dup_of"].to_pylist()):
            if lo <= k < hi or k in wanted:
                near[k] = d
    return dups, near


def decided_rows(store, p: int, decisions: str | None) -> pa.Table:
    """Partition ``p``'s staged rows with the run-wide dedup decisions (in the folder ``decisions``) applied."""
    from curate import semantic
    from curate.dedup import apply_decisions
    from curate.staging import rows_rel

    rows = store.read_parquet(rows_rel(p))
    dups, near = load_decisions(store, p, decisions)
    keys = rows["key"].to_pylist()
    status, dup_of, error = apply_decisions(keys, column(rows, "status"), column(rows, "error"), dups, near)
    dup_of = [d if d is not None else o for d, o in zip(dup_of, column(rows, "duplicate_of"))]
    # the semantic pass (when it ran) judged the rows the exact and near steps kept
    status, dup_of, error = semantic.apply_decisions(keys, status, dup_of, error, semantic.load_decisions(store, p))
    rows = set_column(rows, "status", status)
    rows = set_column(rows, "duplicate_of", dup_of)
    return set_column(rows, "error", error)


def scores_rel(p: int) -> str:
    return f"{STAGING}/scores/part-{p:06d}.parquet"


def scores_fingerprint(store, p: int) -> str | None:
    import pyarrow.parquet as pq

    if not store.exists(scores_rel(p)):
        return None
    with store.open(scores_rel(p)) as f:
        meta = pq.read_schema(f).metadata or {}
    return meta.get(b"fingerprint", b"").decode() or None


def score_partition(store, p: int, scorer, fingerprint: str, batch_size: int, decisions: str | None,
                    ) -> dict[str, int]:
    """Score the ok rows of partition ``p`` with ``scorer`` (a StyleScorer); writes ``scores/part-P.parquet``.

    A scorer with an ``embedding`` part set also gives each scored row's embedding: they are published as
    ``embeddings/part-P.parquet`` before the scores file, which marks the partition done.
    """
    from curate.staging import concat, read_refs, to_table

    rows = decided_rows(store, p, decisions)
    ok = rows.filter(pc.equal(rows["status"], "ok"))
    parts = []
    emb_keys, embs = [], []
    for start in range(0, ok.num_rows, batch_size):
        chunk = ok.slice(start, batch_size)
        images = read_refs(store, *(chunk[c].to_pylist() for c in REF_COLUMNS))
        batch = {"key": np.array(chunk["key"].to_pylist(), dtype=object),
                 "status": np.array(["ok"] * chunk.num_rows, dtype=object),
                 "error": np.array([None] * chunk.num_rows, dtype=object),
                 "image": np.array(images + [None], dtype=object)[:-1]}
        out = scorer(batch)
        parts.append(to_table({k: out[k] for k in ("key", "score", "classifier_version", "status", "error")}))
        for k, e in zip(out["key"], out.get("embedding", ())):
            if e is not None:
                emb_keys.append(k)
                embs.append(e)
    if getattr(scorer, "embedding", None):
        from curate.semantic import embeddings_rel, embeddings_table

        store.write_parquet(embeddings_rel(p), embeddings_table(emb_keys, np.stack(embs) if embs else
                                                                np.zeros((0, scorer.embedding_dim), np.float16)))
    table = concat(parts) if parts else pa.table({"key": pa.array([], pa.string()), "score": pa.array([], pa.float64())})
    store.write_parquet(scores_rel(p), table.replace_schema_metadata({"fingerprint": fingerprint}))
    return {"partition": p, "scored": ok.num_rows}


def finalize_partition(store, p: int, split, decisions: str | None) -> dict[str, Any]:
    """Dedup decisions (in the folder ``decisions``), scores and the split applied to partition ``p``:
    ``final/part-P.parquet``."""
    rows = decided_rows(store, p, decisions)
    scores = store.read_parquet(scores_rel(p)) if store.exists(scores_rel(p)) else None
    rows = apply_split(merge_scores(rows, scores), split)
    store.write_parquet(final_rel(p), rows)
    return {"partition": p, "rows": rows.num_rows}


def plan_step(store, state: dict[str, Any] | None, partitions: list[int], max_samples: int, max_bytes: int,
              last: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Go on with the shard plan over the next ``partitions`` (in key order, after those ``state`` has seen),
    reading four columns of their final rows; returns ``(state, shards closed by this step)``. ``last``: the run
    ends with these partitions, so the open shards close too.

    Steps over consecutive runs of partitions give the plan of one pass over all of them (the planner is greedy
    in key order), which is what lets shards be written while later partitions still download.
    """
    planner = ShardPlanner(max_samples, max_bytes, state)
    for p in sorted(partitions):
        t = store.read_parquet(final_rel(p), columns=["key", "status", "subset", "_ref_length"])
        t = t.filter(pc.equal(t["status"], "ok"))
        planner.add_partition(p, t["key"].to_pylist(), t["subset"].to_pylist(), t["_ref_length"].to_pylist())
    specs = planner.finish() if last else sorted(planner.specs, key=lambda s: s.name)
    return planner.state(), [s.to_json() for s in specs]


def plan_from_final(store, partitions: list[int], max_samples: int, max_bytes: int) -> list[dict[str, Any]]:
    """The shard plan of the run in one step (see :func:`plan_step`)."""
    return plan_step(store, None, partitions, max_samples, max_bytes, last=True)[1]


def write_partition_meta(store, p: int, specs: list[dict[str, Any]]) -> dict[str, Any]:
    """``meta/part-P.parquet`` (every input row, every schema column, the shard of each ok row); its account."""
    from core.tarwrite import write_meta_parquet

    rows = store.read_parquet(final_rel(p))
    shard = shard_of_keys(rows["key"].to_pylist(), column(rows, "subset"), column(rows, "status"),
                          [ShardSpec.from_json(s) for s in specs])
    rows = set_column(rows, "shard", shard)
    write_meta_parquet(store.path(schema.META_DIR, schema.meta_name(p)), meta_table(rows), fs=store.fs)
    return partition_account(rows)


def rescore_partition(store, p: int, index_rels: list[str]) -> int:
    """Staged rows of finished partition ``p`` for a re-score: :func:`rescore_rows` over its metadata and the
    old shards' indexes."""
    from curate.staging import concat, rows_rel

    meta = store.read_parquet(f"{schema.META_DIR}/{schema.meta_name(p)}")
    lo, hi = pc.min(meta["key"]).as_py(), pc.max(meta["key"]).as_py()
    index = concat([store.read_parquet(r, filters=[("key", ">=", lo), ("key", "<=", hi)]) for r in index_rels])
    store.write_parquet(rows_rel(p), rescore_rows(meta, index))
    return p


def rescore_index_rel(name: str) -> str:
    return f"{RESCORE_DIR}/index-{name}.parquet"


def index_old_shard_to_store(store, name: str) -> str:
    """Index old shard ``_staging/rescore/NAME`` into ``_staging/rescore/index-NAME.parquet``."""
    store.write_parquet(rescore_index_rel(name), index_old_shard(store, f"{RESCORE_DIR}/{name}"))
    return name


def begin_rescore(store, directory: str, classifier: str | None, options: dict) -> tuple[Any, list[str],
                                                                                        dict[int, int]]:
    """Take a finished output back for re-scoring; returns ``(run record, old shard names, partitions)``.

    The first time, the shards the run recorded are moved to ``_staging/rescore`` (the new plan may reuse their
    names) and the record says "running" with the new classifier; a rerun after a kill finds them there.
    """
    from curate import outputs

    record = outputs.read_record(store)
    if record is None or (record.state != "complete" and not store.exists(RESCORE_DIR, "sources.json")):
        raise InputError(f"--rescore {directory}: not a finished bbst output (no complete "
                         f"{outputs.RUN_FILE})")
    if not store.exists(RESCORE_DIR, "sources.json"):
        names = sorted(f.rsplit("/", 1)[-1] for f in record.files if f.startswith(schema.SHARDS_DIR + "/"))
        store.fs.makedirs(store.path(RESCORE_DIR), exist_ok=True)
        for name in names:
            if store.exists(schema.SHARDS_DIR, name):
                store.fs.mv(store.path(schema.SHARDS_DIR, name), store.path(RESCORE_DIR, name))
        store.write_json(f"{RESCORE_DIR}/sources.json", names)
        record.fingerprint = {**record.fingerprint, "classifier": {"path": classifier, "options": options}}
        record.state = "running"
        store.write_json(outputs.RUN_FILE, record.to_json())
    partitions = {int(n[5:11]): 0 for n in store.ls(schema.META_DIR) if n.startswith("part-")}
    return record, store.read_json(f"{RESCORE_DIR}/sources.json"), partitions


def mark_rescore_staged(store, partitions: dict[int, int]) -> None:
    """Every partition's rows are staged from the old shards; their statuses were decided by the first run."""
    store.write_json(f"{DEDUP_DIR}/done.json", {"rescore": True, "decisions": None})
    store.write_json(f"{STAGING}/partitions.json", partitions)


def write_report(store, summary: dict, thumbnails: int, limits: dict | None = None) -> None:
    """The HTML report from the published metadata and shards (it reads every row: run it on a worker).

    Kept samples spread over each subset's score range are embedded from the shards; rejected rows are shown by
    reason with their messages, and with their images where the build still holds their bytes in staging
    (duplicates, near duplicates, score-filtered: the rows that were downloaded and decoded). ``limits`` are the
    check limits drawn on the histograms (``min_side``, ``max_aspect_ratio``).
    """
    from core.shards import index_shard_by_key, read_member
    from curate.report import PER_REASON, render_report, select_examples
    from curate.staging import concat

    metas = [n for n in store.ls(schema.META_DIR) if n.endswith(".parquet")]
    rows = concat([store.read_parquet(f"{schema.META_DIR}/{n}") for n in metas]).sort_by("key")
    refs = rejected_refs(store, PER_REASON)
    keys = rows["key"].to_pylist()
    rows = set_column(rows, "_ref_path", [refs[k][0] if k in refs else None for k in keys])
    thumbs: dict[str, list[tuple[str, bytes]]] = {}
    indexes: dict[str, dict] = {}
    shard = column(rows, "shard")
    for group, picked in select_examples(rows, per_subset=thumbnails, per_reason=PER_REASON).items():
        if group not in schema.SUBSETS:  # a rejection: its bytes from staging
            picked_refs = [refs[keys[i]] for i in picked]
            datas = iter_refs(store, *zip(*picked_refs))
            thumbs[group] = [(keys[i], data) for i, data in zip(picked, datas)]
            continue
        for i in picked:
            url = store.path(schema.SHARDS_DIR, shard[i])
            if url not in indexes:
                indexes[url] = index_shard_by_key(url, fs=store.fs)
            image = indexes[url][keys[i]].image()
            if image is not None:
                thumbs.setdefault(group, []).append((keys[i], read_member(image[1], fs=store.fs)))
    pairs = (summary.get("semantic_dedup") or {}).get("examples") or []
    pair_images = staged_images(store, [k for ex in pairs for k in (ex["key"], ex["duplicate_of"])])
    page = render_report(summary, rows, thumbs, limits=limits, per_reason=PER_REASON, pair_images=pair_images)
    store.write_bytes(schema.REPORT_FILE, page.encode())


def rejected_refs(store, per_status: int) -> dict[str, tuple[str, int, int]]:
    """``{key: (path, offset, length)}`` of the first ``per_status`` rejected rows of each status (smallest keys)
    whose bytes are still in staging; empty when staging is gone."""
    final = f"{STAGING}/final"
    if not store.exists(final):
        return {}
    found: dict[str, list[tuple[str, tuple[str, int, int]]]] = {}
    for name in sorted(n for n in store.ls(final) if n.endswith(".parquet")):
        t = store.read_parquet(f"{final}/{name}", columns=["key", "status", *REF_COLUMNS])
        t = t.filter(pc.and_(pc.not_equal(t["status"], "ok"), pc.is_valid(t["_ref_path"])))
        for key, status, path, offset, length in zip(*(t[c].to_pylist() for c in t.column_names)):
            picked = found.setdefault(status, [])
            if len(picked) < per_status:
                picked.append((key, (path, int(offset), int(length))))
    return {key: ref for picked in found.values() for key, ref in picked}


def staged_images(store, keys: list[str]) -> dict[str, bytes]:
    """``{key: bytes}`` of rows whose bytes are still staged (duplicates included), from the final rows."""
    from curate.staging import read_refs

    wanted: dict[int, set[str]] = {}
    for k in keys:
        wanted.setdefault(schema.split_key(k)[0], set()).add(k)
    out: dict[str, bytes] = {}
    for p, ks in sorted(wanted.items()):
        if not store.exists(final_rel(p)):
            continue
        t = store.read_parquet(final_rel(p), columns=["key", *REF_COLUMNS])
        t = t.filter(pc.and_(pc.is_in(t["key"], pa.array(sorted(ks), pa.string())), pc.is_valid(t["_ref_path"])))
        if t.num_rows:
            datas = read_refs(store, *(t[c].to_pylist() for c in REF_COLUMNS))
            out.update(zip(t["key"].to_pylist(), datas))
    return out
