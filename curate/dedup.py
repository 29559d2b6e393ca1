"""Run-wide deduplication: exact (sha256) and near (64-bit phash within a Hamming distance), deterministic by key."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

from curate.schema import Status

DEFAULT_CHUNKS = 4  # 16-bit chunks: a good layout up to ~100k kept hashes (see choose_chunks)
MAX_PROBES_PER_CHUNK = 100_000  # refuse layouts whose neighbour enumeration would explode (e.g. 1 chunk, d=6)


@dataclasses.dataclass
class DedupConfig:
    exact: bool = True  # drop rows whose sha256 equals a kept row's (status duplicate)
    near: bool = True  # drop rows whose phash is within phash_distance of a kept row's (status near_duplicate)
    phash_distance: int = 4  # largest Hamming distance (of 64 bits) that counts as a near duplicate

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


def chunk_layout(chunks: int) -> list[tuple[int, int]]:
    """``(shift, bits)`` of each chunk when 64 bits are cut into ``chunks`` near-equal parts."""
    base, extra = divmod(64, chunks)
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
