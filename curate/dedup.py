"""Run-wide deduplication: exact (sha256) and near (64-bit phash within a Hamming distance), deterministic by key."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from core.config import check_range
from core.schema import EMBEDDING_PARTS, Status

DEFAULT_CHUNKS = 4  # 16-bit chunks: a good layout up to ~100k kept hashes (see choose_chunks)
MAX_PROBES_PER_CHUNK = 100_000  # refuse layouts whose neighbour enumeration would explode (e.g. 1 chunk, d=6)


@dataclasses.dataclass
class SemanticConfig:
    """The optional semantic pass over the classifier's embeddings (needs ``score.classifier``)."""

    enabled: bool = False  # mark kept images whose embeddings are within threshold of a smaller key's
    threshold: float = 0.95  # cosine similarity at or above which two images count as the same
    embedding: str = "content"  # content (pooled trunk embedding), style (style statistics) or features (both)
    clusters: int = 0  # k-means clusters; 0 picks one per ~1000 embeddings (at most 10,000)
    probes: int = 2  # nearest clusters each embedding is compared in
    iterations: int = 10  # k-means iterations
    sample: int = 200_000  # most embeddings k-means trains on (and 256 per cluster; a key-ordered stride)
    seed: int = 0  # k-means initialisation
    examples: int = 12  # duplicate pairs shown in the summary and the report

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if self.embedding not in EMBEDDING_PARTS:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDING_PARTS)}, got {self.embedding!r}")
        check_range(self, "clusters", low=0)
        check_range(self, "probes", low=1)
        check_range(self, "iterations", low=0)
        check_range(self, "sample", low=1)
        check_range(self, "examples", low=0)


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # drop rows whose sha256 equals a kept row's (status duplicate)
    near: bool = True  # drop rows whose phash is within phash_distance of a kept row's (status near_duplicate)
    phash_distance: int = 4  # largest Hamming distance (of 64 bits) that counts as a near duplicate
    semantic: SemanticConfig = dataclasses.field(default_factory=SemanticConfig)  # embeddings (needs a classifier)

    def __post_init__(self) -> None:
        if not 0 <= self.phash_distance < 64:
            raise ValueError(f"phash_distance must be in 0..63, got {self.phash_distance}")


def phash_int(value: str | int | None) -> int | None:
    """A phash as a 64-bit int from its 16-hex-digit form (None stays None)."""
    if value is None or isinstance(value, int):
        return value
    return int(value, 16)


def _flip_masks(bits: int, radius: int) -> tuple[int, ...]:
    """XOR masks of every ``bits``-bit pattern with at most ``radius`` bits set (probe offsets for one chunk)."""
    return tuple(sum(1 << p for p in positions) for r in range(radius + 1)
                 for positions in itertools.combinations(range(bits), r))


def chunk_layout(chunks: int, total: int = 64) -> list[tuple[int, int]]:
    """``(shift, bits)`` of each chunk when a ``total``-bit value is cut into ``chunks`` near-equal parts."""
    base, extra = divmod(total, chunks)
    layout, shift = [], 0
    for i in range(chunks):
        bits = base + (1 if i < extra else 0)
        layout.append((shift, bits))
        shift += bits
    return layout


def choose_chunks(expected_size: int, distance: int) -> int:
    """Chunk count minimising probes + expected candidates per query (Norouzi et al., multi-index hashing).

    Few rows: many short chunks searched exactly (radius 0). Millions of rows: fewer, longer chunks so that
    buckets stay nearly empty, at the price of probing a few neighbours per chunk.
    """
    best, best_cost = DEFAULT_CHUNKS, float("inf")
    for m in range(1, 17):
        radius = distance // m
        layout = chunk_layout(m)
        if sum(math.comb(layout[0][1], r) for r in range(radius + 1)) > MAX_PROBES_PER_CHUNK:
            continue
        probes = sum(sum(math.comb(bits, r) for r in range(radius + 1)) for _, bits in layout)
        candidates = sum(sum(math.comb(bits, r) for r in range(radius + 1)) * expected_size / 2**bits
                         for _, bits in layout)
        cost = probes + 3 * candidates  # a candidate costs a popcount and a dict check
        if cost < best_cost:
            best, best_cost = m, cost
    return best


class DedupIndex:
    """Kept hashes of a run: a sha256 map and a multi-index hash table over 64-bit phashes.

    Near-duplicate search uses the pigeonhole principle: if two 64-bit hashes differ in at most ``d`` bits and
    are cut into ``m`` chunks, at least one chunk differs in at most ``d // m`` bits. Each chunk has its own
    table; a query probes the chunk values within that radius and verifies candidates with a full popcount, so
    the cost grows with the number of candidates, not with the index size. ``chunks`` defaults to four 16-bit
    chunks; :func:`choose_chunks` picks the best count for an expected number of rows.
    """

    def __init__(self, cfg: DedupConfig | None = None, chunks: int = DEFAULT_CHUNKS):
        if not 1 <= chunks <= 64:
            raise ValueError(f"chunks must be in 1..64, got {chunks}")
        self.cfg = cfg or DedupConfig()
        self.by_sha: dict[str, str] = {}
        self.layout = chunk_layout(chunks)
        self.tables: list[dict[int, list[tuple[int, str]]]] = [{} for _ in self.layout]
        self.size = 0
        self._masks = self._probe_masks(self.cfg.phash_distance)

    def _probe_masks(self, distance: int) -> list[tuple[int, int, int, tuple[int, ...]]]:
        radius = distance // len(self.layout)
        widest = max(bits for _, bits in self.layout)
        probes = sum(math.comb(widest, r) for r in range(radius + 1))
        if probes > MAX_PROBES_PER_CHUNK:
            raise ValueError(f"{len(self.layout)} chunks at distance {distance} would probe {probes} values per "
                             f"chunk; use more chunks (choose_chunks picks a good count)")
        return [(i, shift, (1 << bits) - 1, _flip_masks(bits, radius)) for i, (shift, bits) in enumerate(self.layout)]

    def add(self, key: str, sha256: str | None, phash: str | int | None) -> None:
        """Record a kept row."""
        if sha256 is not None:
            current = self.by_sha.get(sha256)
            if current is None or key < current:
                self.by_sha[sha256] = key
        h = phash_int(phash)
        if h is not None:
            for table, (shift, bits) in zip(self.tables, self.layout, strict=True):
                table.setdefault((h >> shift) & ((1 << bits) - 1), []).append((h, key))
        self.size += 1

    def near(self, phash: str | int | None, distance: int | None = None) -> list[tuple[int, str]]:
        """Kept ``(distance, key)`` pairs within ``distance`` of ``phash``, sorted by (distance, key)."""
        h = phash_int(phash)
        if h is None:
            return []
        d = self.cfg.phash_distance if distance is None else distance
        probes = self._masks if distance is None else self._probe_masks(d)
        found: dict[str, int] = {}
        for i, shift, mask_bits, masks in probes:
            table = self.tables[i]
            chunk = (h >> shift) & mask_bits
            for mask in masks:
                for other, key in table.get(chunk ^ mask, ()):
                    if key not in found:
                        dist = (h ^ other).bit_count()
                        if dist <= d:
                            found[key] = dist
        return sorted((dist, key) for key, dist in found.items())

    def query(self, sha256: str | None, phash: str | int | None) -> tuple[str, str | None]:
        """``(status, duplicate_of)`` of a new row against the kept rows: exact first, then the smallest near key."""
        if self.cfg.exact and sha256 is not None and sha256 in self.by_sha:
            return Status.DUPLICATE.value, self.by_sha[sha256]
        if self.cfg.near:
            matches = self.near(phash)
            if matches:
                return Status.NEAR_DUPLICATE.value, min(matches, key=lambda m: m[1])[1]
        return Status.OK.value, None

    def check_and_add(self, key: str, sha256: str | None, phash: str | int | None) -> tuple[str, str | None]:
        """Streaming use: query, and keep the row when it is new. Order-dependent (first come, first kept)."""
        status, dup_of = self.query(sha256, phash)
        if status == Status.OK.value:
            self.add(key, sha256, phash)
        return status, dup_of


def dedup_rows(keys: Sequence[str], sha256s: Sequence[str | None], phashes: Sequence[str | int | None],
               cfg: DedupConfig | None = None,
               index: DedupIndex | None = None) -> tuple[list[str], list[str | None]]:
    """Decide every candidate of a run at once: ``(status per row, duplicate_of per row)``, aligned with ``keys``.

    Rows are visited in key order, so the result does not depend on arrival order: of every group of identical
    bytes the smallest key is the candidate, the rest are ``duplicate``; candidates are then kept unless their
    phash is within ``phash_distance`` of an already kept (smaller-key) row, which makes them ``near_duplicate``.
    ``duplicate_of`` always names a kept key. ``index`` (optional) starts from earlier kept rows and receives
    the rows kept here.
    """
    cfg = cfg or DedupConfig()
    if not len(keys) == len(sha256s) == len(phashes):
        raise ValueError("keys, sha256s and phashes must have the same length")
    n = len(keys)
    index = index or DedupIndex(cfg, chunks=choose_chunks(n, cfg.phash_distance))
    status: list[str] = [Status.OK.value] * n
    dup_of: list[str | None] = [None] * n
    order = sorted(range(n), key=lambda i: keys[i])
    if len(set(keys)) != n:
        raise ValueError("keys must be unique")

    representative: dict[str, int] = {}  # sha256 -> row index of its smallest key in this call
    for i in order:
        sha = sha256s[i]
        if cfg.exact and sha is not None:
            if sha in index.by_sha:  # identical to a row kept before this call
                status[i], dup_of[i] = Status.DUPLICATE.value, index.by_sha[sha]
                continue
            if sha in representative:
                status[i], dup_of[i] = Status.DUPLICATE.value, keys[representative[sha]]
                continue
            representative[sha] = i
        if cfg.near:
            matches = index.near(phashes[i])
            if matches:
                status[i] = Status.NEAR_DUPLICATE.value
                dup_of[i] = min(matches, key=lambda m: m[1])[1]  # the smallest kept key within the distance
                continue
        index.add(keys[i], sha, phashes[i])

    # An exact duplicate of a row that turned out to be a near duplicate points at the row actually kept.
    for i in range(n):
        if status[i] == Status.DUPLICATE.value:
            j = representative.get(sha256s[i])
            if j is not None and j != i and status[j] == Status.NEAR_DUPLICATE.value:
                dup_of[i] = dup_of[j]
    return status, dup_of


# ------------------------------------------------------------------------------------------------ distributed
# The same decisions as :func:`dedup_rows`, cut into steps that each read only a slice of the run's metadata, so
# that a cluster runs them as parallel tasks and no process holds every row:
#
# 1. ``scatter_exact``: each partition's ok rows go to buckets by sha256;
# 2. ``reduce_exact``: in each bucket the smallest key of every sha256 is the candidate, the others are exact
#    duplicates of it; the candidates go on to buckets by (band, band value) (``scatter_bands``): the 64-bit
#    phash is cut into ``distance + 1`` bands, so two hashes within ``distance`` agree exactly on at least one;
# 3. ``near_edges``: in each band bucket, hashes that share a band value are verified by popcount;
# 4. ``resolve_near``: the verified pairs, visited in key order, decide which candidates are kept.
#
# Keys travel as int64 (``{partition:06d}{row:07d}`` is 13 digits, and integer order is key order).

_MASK64 = (1 << 64) - 1


def keys_to_int(keys) -> np.ndarray:
    return np.asarray([int(k) for k in keys], dtype=np.int64)


def int_to_key(value: int) -> str:
    from core.schema import KEY_PARTITION_DIGITS, KEY_ROW_DIGITS

    return f"{int(value):0{KEY_PARTITION_DIGITS + KEY_ROW_DIGITS}d}"


def phash_u64(phashes) -> tuple[np.ndarray, np.ndarray]:
    """``(values as uint64, present mask)`` of 16-hex-digit phashes (None -> absent)."""
    vals = np.zeros(len(phashes), dtype=np.uint64)
    present = np.zeros(len(phashes), dtype=bool)
    for i, h in enumerate(phashes):
        if h is not None:
            vals[i] = np.uint64(phash_int(h) & _MASK64)
            present[i] = True
    return vals, present


def _bucket_of_strings(values, buckets: int) -> np.ndarray:
    import zlib

    return np.asarray([zlib.crc32(v.encode()) % buckets for v in values], dtype=np.int64)


def scatter_exact(keys, sha256s, phashes, buckets: int) -> list[dict[str, np.ndarray]]:
    """One partition's ok rows cut into ``buckets`` column dicts by sha256 (rows without a sha256 get their own
    bucket by key, since they can only be near duplicates)."""
    keys_i = keys_to_int(keys)
    sha = np.asarray([s if s is not None else f"key:{k}" for s, k in zip(sha256s, keys)], dtype=object)
    ph, present = phash_u64(phashes)
    which = _bucket_of_strings(sha, buckets) if len(sha) else np.zeros(0, dtype=np.int64)
    out = []
    for b in range(buckets):
        idx = np.nonzero(which == b)[0]
        out.append({"key": keys_i[idx], "sha256": sha[idx], "phash": ph[idx], "has_phash": present[idx]})
    return out


def _concat_cols(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["key"])]
    if not parts:
        return {"key": np.zeros(0, np.int64), "sha256": np.zeros(0, object), "phash": np.zeros(0, np.uint64),
                "has_phash": np.zeros(0, bool)}
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


def reduce_exact(parts: list[dict[str, np.ndarray]], exact: bool = True,
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(duplicates {key, dup_of}, candidates {key, phash, has_phash})`` of one sha256 bucket."""
    cols = _concat_cols(parts)
    if not exact or not len(cols["key"]):
        empty = {"key": np.zeros(0, np.int64), "dup_of": np.zeros(0, np.int64)}
        return empty, {c: cols[c] for c in ("key", "phash", "has_phash")}
    order = np.lexsort((cols["key"], cols["sha256"]))
    sha = cols["sha256"][order]
    first = np.ones(len(sha), dtype=bool)
    first[1:] = sha[1:] != sha[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(sha)), 0))
    keys = cols["key"][order]
    dups = {"key": keys[~first], "dup_of": keys[group_start][~first]}
    cand = {"key": keys[first], "phash": cols["phash"][order][first], "has_phash": cols["has_phash"][order][first]}
    return dups, cand


def band_layout(distance: int) -> list[tuple[int, int]]:
    """``(shift, bits)`` of the ``distance + 1`` bands: two hashes within ``distance`` agree on one band."""
    return chunk_layout(min(64, distance + 1))


def scatter_bands(cand: dict[str, np.ndarray], distance: int, buckets: int) -> list[dict[str, np.ndarray]]:
    """Candidates with a phash, once per band, cut into ``buckets`` by (band, band value)."""
    keep = cand["has_phash"]
    keys, ph = cand["key"][keep], cand["phash"][keep]
    rows = []
    for band, (shift, bits) in enumerate(band_layout(distance)):
        value = (ph >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        rows.append({"band": np.full(len(keys), band, np.int64), "value": value, "key": keys, "phash": ph})
    cols = ({c: np.concatenate([r[c] for r in rows]) for c in rows[0]} if rows else
            {"band": np.zeros(0, np.int64), "value": np.zeros(0, np.uint64), "key": np.zeros(0, np.int64),
             "phash": np.zeros(0, np.uint64)})
    mix = (cols["value"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
           + cols["band"].astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(33)
    which = (mix % np.uint64(max(1, buckets))).astype(np.int64)
    return [{c: v[which == b] for c, v in cols.items()} for b in range(max(1, buckets))]


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(_MASK64)


def near_edges(parts: list[dict[str, np.ndarray]], distance: int) -> dict[str, np.ndarray]:
    """Verified pairs of one band bucket: ``{a, b, same}`` with ``a < b``.

    Candidates with the same full hash are one class: every member gets a ``same`` edge to the class's smallest
    key (``a``), and only the smallest keys are compared further (an identical hash has the same neighbours).
    Hashes that share a band value are not compared pairwise: the pigeonhole argument is applied once more to
    the bits outside the band (cut into ``distance + 1`` sub-bands), so only hashes that also share a sub-band
    value become candidate pairs. A million-row bucket of random hashes then yields about as many candidate
    pairs as rows, instead of rows squared over the band's value range.
    """
    empty = {"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64), "same": np.zeros(0, bool)}
    parts = [p for p in parts if p is not None and len(p["key"])]
    if not parts:
        return empty
    cols = {c: np.concatenate([p[c] for p in parts]) for c in ("band", "value", "key", "phash")}
    order = np.lexsort((cols["key"], cols["phash"], cols["value"], cols["band"]))
    band, value, key, ph = (cols[c][order] for c in ("band", "value", "key", "phash"))
    class_edge = np.ones(len(key), dtype=bool)
    class_edge[1:] = (band[1:] != band[:-1]) | (value[1:] != value[:-1]) | (ph[1:] != ph[:-1])
    class_rep = key[np.maximum.accumulate(np.where(class_edge, np.arange(len(key)), 0))]
    a_out, b_out, same_out = [class_rep[~class_edge]], [key[~class_edge]], [np.ones(int((~class_edge).sum()), bool)]
    band, value, key, ph = band[class_edge], value[class_edge], key[class_edge], ph[class_edge]
    # second pigeonhole level: rows that share (band, band value, sub-band, sub-band value) hold every pair within
    # the distance; one (band, sub-band) at a time, so memory stays a few arrays of one band's rows
    layout = band_layout(distance)
    for b, (shift, bits) in enumerate(layout):
        rows = np.nonzero(band == b)[0]
        if len(rows) < 2:
            continue
        h, v = ph[rows], value[rows].astype(np.uint64)
        low = h & _mask(shift) if shift else np.zeros(len(h), np.uint64)
        high = h >> np.uint64(shift + bits) if shift + bits < 64 else np.zeros(len(h), np.uint64)
        rest = (high << np.uint64(shift)) | low
        for sub_shift, sub_bits in chunk_layout(len(layout), 64 - bits):
            sub = (rest >> np.uint64(sub_shift)) & _mask(sub_bits) if sub_bits else np.zeros(len(h), np.uint64)
            run_key = (v << np.uint64(sub_bits)) | sub  # band value and sub-band value: at most 64 bits together
            order = np.argsort(run_key, kind="stable")
            sorted_key, idx = run_key[order], rows[order]
            step = 1
            while step < len(idx):  # pair each row with the row ``step`` places later in the same run
                same_run = sorted_key[step:] == sorted_key[:-step]
                if not same_run.any():
                    break
                i, j = idx[:-step][same_run], idx[step:][same_run]
                close = np.bitwise_count(ph[i] ^ ph[j]) <= distance
                ki, kj = key[i][close], key[j][close]
                a_out.append(np.minimum(ki, kj))
                b_out.append(np.maximum(ki, kj))
                same_out.append(np.zeros(len(ki), dtype=bool))
                step += 1
    a, b, same = np.concatenate(a_out), np.concatenate(b_out), np.concatenate(same_out)
    if not len(a):
        return empty
    # a pair found through several sub-bands is reported once
    pairs = np.unique(np.stack([a, b, same.astype(np.int64)], axis=1), axis=0)
    return {"a": pairs[:, 0], "b": pairs[:, 1], "same": pairs[:, 2].astype(bool)}


def resolve_near(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Near duplicates ``{key, dup_of}`` from the verified pairs of every band bucket.

    Candidates are visited in key order: one is a near duplicate when a kept candidate with a smaller key is
    within the distance, and ``dup_of`` is the smallest such key; the members of a same-hash class follow their
    class's smallest key.
    """
    if not parts:
        return {"key": np.zeros(0, np.int64), "dup_of": np.zeros(0, np.int64)}
    a = np.concatenate([p["a"] for p in parts])
    b = np.concatenate([p["b"] for p in parts])
    same = np.concatenate([p["same"] for p in parts])
    member_of: dict[int, int] = {}
    for x, y in zip(a[same].tolist(), b[same].tolist()):
        member_of[y] = x
    na, nb = a[~same], b[~same]
    pairs = np.unique(np.stack([nb, na], axis=1), axis=0) if len(na) else np.zeros((0, 2), np.int64)
    rejected: dict[int, int] = {}
    i = 0
    n = len(pairs)
    while i < n:  # pairs sorted by (b, a): every a < b is decided before b
        bkey = int(pairs[i, 0])
        j = i
        choice = None
        while j < n and pairs[j, 0] == bkey:
            akey = int(pairs[j, 1])
            if choice is None and akey not in rejected:
                choice = akey
            j += 1
        if choice is not None:
            rejected[bkey] = choice
        i = j
    for member, rep in member_of.items():
        rejected[member] = rejected.get(rep, rep)
    keys = np.array(sorted(rejected), dtype=np.int64)
    return {"key": keys, "dup_of": np.array([rejected[k] for k in keys.tolist()], dtype=np.int64)}


def apply_decisions(keys, statuses, errors, duplicates: dict[int, int], near: dict[int, int],
                    ) -> tuple[list[str], list[str | None], list[str | None]]:
    """``(status, duplicate_of, error)`` of one partition's rows from the run-wide decisions.

    ``duplicates`` maps exact duplicates to their candidate, ``near`` maps near duplicates to the kept key; an
    exact duplicate of a candidate that is itself a near duplicate points at the row actually kept.
    """
    out_status, out_dup, out_err = list(statuses), [None] * len(keys), list(errors)
    for i, (k, s) in enumerate(zip(keys, statuses)):
        if s != Status.OK.value:
            continue
        ki = int(k)
        if ki in duplicates:
            target = duplicates[ki]
            out_status[i], out_dup[i] = Status.DUPLICATE.value, int_to_key(near.get(target, target))
        elif ki in near:
            out_status[i], out_dup[i] = Status.NEAR_DUPLICATE.value, int_to_key(near[ki])
        else:
            continue
        out_err[i] = f"{out_status[i].replace('_', ' ')} of {out_dup[i]}"
    return out_status, out_dup, out_err


def dedup_in_process(keys, sha256s, phashes, cfg: DedupConfig | None = None, buckets: int = 3,
                     ) -> tuple[dict[int, int], dict[int, int]]:
    """Every step above in one process: ``(exact duplicates, near duplicates)`` as ``{key: kept key}`` dicts.

    The reference the distributed run is tested against, and a way to see the steps in order.
    """
    cfg = cfg or DedupConfig()
    scattered = scatter_exact(keys, sha256s, phashes, buckets)
    dups: dict[int, int] = {}
    band_parts: list[list[dict[str, np.ndarray]]] = [[] for _ in range(buckets)]
    for b in range(buckets):
        d, cand = reduce_exact([scattered[b]], exact=cfg.exact)
        dups.update(zip(d["key"].tolist(), d["dup_of"].tolist()))
        if cfg.near:
            for j, part in enumerate(scatter_bands(cand, cfg.phash_distance, buckets)):
                band_parts[j].append(part)
    near: dict[int, int] = {}
    if cfg.near:
        edges = [near_edges(parts, cfg.phash_distance) for parts in band_parts]
        res = resolve_near(edges)
        near = dict(zip(res["key"].tolist(), res["dup_of"].tolist()))
    return dups, near


# --------------------------------------------------------------------------------------------------- on a store
# Sizing of the distributed passes (exact/near here, semantic in curate/semantic.py).
ROWS_PER_SCATTER_OUTPUT = 12_000  # rows per scatter result per bucket (~1 MB: kept in Ray's object store)
ROWS_PER_BUCKET = 250_000  # rows per bucket (up to ray.dedup_buckets): bounds each reduce task's memory


def bucket_count(rows: int, max_buckets: int, cap: int | None = None) -> int:
    """Buckets a duplicate search over ``rows`` rows uses: about :data:`ROWS_PER_BUCKET` rows each, at most
    ``max_buckets`` (and ``cap``), at least one."""
    return max(1, min(max_buckets, -(-rows // ROWS_PER_BUCKET), cap if cap is not None else max_buckets))


def partitions_per_scatter(rows: int, partitions: int, buckets: int) -> int:
    """Partitions one scatter task reads, so that each of its ``buckets`` results holds about
    :data:`ROWS_PER_SCATTER_OUTPUT` rows: Ray keeps small task results in the memory of their owner, the driver,
    and large ones in the object store."""
    return max(1, -(-ROWS_PER_SCATTER_OUTPUT * buckets // max(1, rows // max(1, partitions))))


def scatter_partitions(store, partitions: list[int], buckets: int) -> list[dict[str, np.ndarray]]:
    """:func:`scatter_exact` over the ok rows of staged partitions (read from ``store``)."""
    import pyarrow.compute as pc

    from curate.staging import concat, rows_rel

    t = concat([store.read_parquet(rows_rel(p), columns=["key", "status", "sha256", "phash"]) for p in partitions])
    t = t.filter(pc.equal(t["status"], "ok"))
    return scatter_exact(t["key"].to_pylist(), t["sha256"].to_pylist(), t["phash"].to_pylist(), buckets)


def wave_rel(count: int) -> str:
    """The folder of the decisions of the dedup wave over the first ``count`` partitions (``curate/flow.py``).

    Each wave writes its own folder: a later wave never replaces a file that a step of the build may be reading
    (object stores refuse a ranged read of an object replaced in between)."""
    from core.schema import DEDUP_DIR

    return f"{DEDUP_DIR}/wave-{count:06d}"


def reduce_bucket(store, rel: str, j: int, cfg: DedupConfig, buckets: int, parts: list[dict[str, np.ndarray]],
                  ) -> list[dict[str, np.ndarray] | None]:
    """Exact step of sha256 bucket ``j``: writes its duplicates to ``rel`` in the store, returns the candidates by
    band bucket."""
    import pyarrow as pa

    dups, cand = reduce_exact(parts, exact=cfg.exact)
    store.write_parquet(f"{rel}/exact-{j:04d}.parquet",
                        pa.table({"key": dups["key"], "dup_of": dups["dup_of"]}).sort_by("key"))
    return scatter_bands(cand, cfg.phash_distance, buckets) if cfg.near else [None] * buckets


def near_edges_of(distance: int, *parts: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return near_edges([p for p in parts if p is not None], distance)


def resolve_to_store(store, rel: str, *edges: dict[str, np.ndarray]) -> int:
    """:func:`resolve_near` over every band bucket's pairs; writes the near duplicates to ``rel``, returns their
    count."""
    import pyarrow as pa

    res = resolve_near(list(edges))
    store.write_parquet(f"{rel}/near.parquet", pa.table(res))
    return len(res["key"])
