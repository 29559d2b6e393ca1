"""Partition: the epoch order as runs (shard, first, end), their arithmetic, and how a layout deals them to readers.

Everything here is a pure function of (seed, epoch, layout, position): nothing reads a shard, so a resume
recomputes where the stream stands instead of replaying it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from train.data.sources import Source, flat_shards

_SUBSET_IDS = {"content": 1, "style": 2}


def epoch_order(sources: list[Source], seed: int, subset: str, epoch: int) -> np.ndarray:
    """The epoch's global order as an ``(n, 3)`` int array of runs ``[shard id, first sample, end]``.

    Unweighted: every shard once, in a permutation shared by all ranks. Weighted: each source contributes
    ``weight / sum(weights)`` of all sources' samples, taken in its own per-epoch shard permutations (repeating
    whole permutations when it is smaller than its share), and the runs of all sources are then permuted together.
    """
    sid = _SUBSET_IDS.get(subset, 3)
    rng = np.random.default_rng([seed, sid, epoch, 0])
    sizes = [s.nsamples for s in flat_shards(sources)]
    if all(src.weight is None for src in sources):
        order = rng.permutation(len(sizes))
        return np.array([[i, 0, sizes[i]] for i in order], dtype=np.int64).reshape(-1, 3)
    total = sum(src.nsamples for src in sources)
    wsum = sum(src.weight or 0.0 for src in sources)
    runs: list[list[int]] = []
    first = 0
    for k, src in enumerate(sources):
        want = round(total * (src.weight or 0.0) / wsum)
        cycle = 0
        while want > 0:
            perm = np.random.default_rng([seed, sid, epoch, 1, k, cycle]).permutation(len(src.shards))
            for i in perm:
                n = min(sizes[first + i], want)
                runs.append([first + int(i), 0, n])
                want -= n
                if want == 0:
                    break
            cycle += 1
        first += len(src.shards)
    runs_arr = np.array(runs, dtype=np.int64).reshape(-1, 3)
    return runs_arr[rng.permutation(len(runs_arr))]


def run_lengths(runs: np.ndarray) -> np.ndarray:
    return runs[:, 2] - runs[:, 1]


def cut_runs(runs: np.ndarray, a: int, b: int) -> np.ndarray:
    """The runs covering positions ``[a, b)`` of the order ``runs``."""
    ends = np.cumsum(run_lengths(runs))
    starts = ends - run_lengths(runs)
    out = []
    for i in range(int(np.searchsorted(ends, a, side="right")), len(runs)):
        if starts[i] >= b:
            break
        lo, hi = max(a, int(starts[i])), min(b, int(ends[i]))
        if hi > lo:
            out.append([runs[i, 0], runs[i, 1] + lo - starts[i], runs[i, 1] + hi - starts[i]])
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def expand_runs(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-position ``(shard id, sample index)`` arrays of the order ``runs``."""
    lengths = run_lengths(runs)
    shard = np.repeat(runs[:, 0], lengths)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    index = np.repeat(runs[:, 1], lengths) + np.arange(int(lengths.sum())) - offsets
    return shard, index


def compress_runs(shard: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Inverse of :func:`expand_runs`: consecutive samples of one shard become one run."""
    if len(shard) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    breaks = np.flatnonzero((np.diff(shard) != 0) | (np.diff(index) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(shard)]])
    return np.stack([shard[starts], index[starts], index[ends - 1] + 1], axis=1).astype(np.int64)


@dataclass(frozen=True)
class Layout:
    """How one segment of an epoch is dealt: readers = ranks x workers, and their mixing settings."""

    world_size: int
    num_workers: int
    batch_size: int
    open_shards: int
    shuffle_buffer: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def steps(self, n: int) -> int:
        """Global batches (steps of every rank) the layout takes from an order of ``n`` samples."""
        return n // self.global_batch

    def reader_batches(self, worker: int, steps: int) -> int:
        """Batches worker ``worker`` of a rank serves among the first ``steps`` steps (step s -> worker s % nw)."""
        return len(range(worker, steps, self.num_workers))

    def span(self, n: int, rank: int, worker: int) -> tuple[int, int]:
        """Positions ``[a, b)`` of an order of ``n`` samples that reader (rank, worker) owns."""
        steps = self.steps(n)
        a = rank * steps * self.batch_size
        a += self.batch_size * sum(self.reader_batches(w, steps) for w in range(worker))
        return a, a + self.reader_batches(worker, steps) * self.batch_size


class DrawOrder:
    """The order in which one reader draws the samples of its runs: ``open_shards`` runs interleaved at random,
    then a shuffle buffer of ``buffer_size``. Depends only on run lengths and the RNG, so it can be fast-forwarded
    without reading; ``on_read(run, index)`` is called when a sample enters the buffer (the live reader reads it).
    """

    def __init__(self, lengths: list[int], open_shards: int, buffer_size: int, rng: np.random.Generator):
        self.lengths, self.open_shards, self.buffer_size, self.rng = lengths, open_shards, buffer_size, rng
        self.cursor = 0  # next run to open
        self.open: list[list[int]] = []  # [run, next index in run]
        self.buffer: list[tuple[int, int]] = []
        self.drawn = 0
        self.on_read: Any = None

    def _read(self) -> tuple[int, int] | None:
        while len(self.open) < self.open_shards and self.cursor < len(self.lengths):
            if self.lengths[self.cursor] > 0:
                self.open.append([self.cursor, 0])
            self.cursor += 1
        if not self.open:
            return None
        j = int(self.rng.integers(len(self.open)))
        run, index = self.open[j]
        self.open[j][1] += 1
        if self.open[j][1] == self.lengths[run]:
            self.open.pop(j)
        if self.on_read is not None:
            self.on_read(run, index)
        return run, index

    def next(self) -> tuple[int, int] | None:
        """``(run, index in run)`` of the next draw, or None when every run is drawn."""
        while len(self.buffer) < self.buffer_size + 1:
            ref = self._read()
            if ref is None:
                break
            self.buffer.append(ref)
        if not self.buffer:
            return None
        j = int(self.rng.integers(len(self.buffer)))
        ref = self.buffer[j]
        self.buffer[j] = self.buffer[-1]
        self.buffer.pop()
        self.drawn += 1
        return ref

    def skip(self, n: int) -> None:
        for _ in range(n):
            if self.next() is None:
                return


@dataclass
class Position:
    """Where the loader stands: ``step`` steps into the current segment of ``epoch``.

    ``history`` lists the earlier segments of the epoch (a layout and the steps it took) when the run was resumed
    with another layout; the current segment deals what they left.
    """

    epoch: int = 0
    step: int = 0
    history: list[dict] | None = None

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": copy.deepcopy(self.history or [])}


class Planner:
    """Epoch orders and reader spans for one subset pair; shared by the loader and its workers."""

    def __init__(self, content: list[Source], style: list[Source], seed: int):
        self.content, self.style, self.seed = content, style, seed
        self.content_shards, self.style_shards = flat_shards(content), flat_shards(style)
        self._cache: dict[str, np.ndarray] = {}

    def content_order(self, epoch: int, history: list[dict]) -> np.ndarray:
        """The order the current segment deals: the epoch's order less what earlier segments consumed."""
        key = json.dumps([epoch, history], sort_keys=True)
        if key not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self._content_order(epoch, history)
        return self._cache[key]

    def _content_order(self, epoch: int, history: list[dict]) -> np.ndarray:
        runs = epoch_order(self.content, self.seed, "content", epoch)
        for h, seg in enumerate(history):
            layout = Layout(**{k: seg[k] for k in Layout.__dataclass_fields__})
            n = int(run_lengths(runs).sum())
            shard, index = expand_runs(runs)
            keep = np.ones(len(shard), dtype=bool)
            for rank in range(layout.world_size):
                for worker in range(layout.num_workers):
                    a, b = layout.span(n, rank, worker)
                    span = cut_runs(runs, a, b)
                    draws = layout.reader_batches(worker, int(seg["steps"])) * layout.batch_size
                    rng = self.reader_rng("content", epoch, h, layout, rank, worker)
                    order = DrawOrder(run_lengths(span).tolist(), layout.open_shards, layout.shuffle_buffer, rng)
                    local = _local_positions(span)
                    for _ in range(draws):
                        ref = order.next()
                        if ref is None:
                            break
                        keep[a + local[ref[0]] + ref[1]] = False
            runs = compress_runs(shard[keep], index[keep])
        return runs

    def reader_rng(self, subset: str, epoch: int, segment: int, layout: Layout, rank: int, worker: int,
                   cycle: int = 0) -> np.random.Generator:
        reader = rank * layout.num_workers + worker
        return np.random.default_rng([self.seed, _SUBSET_IDS.get(subset, 3), epoch, 1 + segment, reader, cycle])

    def steps(self, epoch: int, history: list[dict], layout: Layout) -> int:
        return layout.steps(int(run_lengths(self.content_order(epoch, history)).sum()))

    def style_span(self, epoch: int, layout: Layout, rank: int, worker: int) -> np.ndarray:
        runs = epoch_order(self.style, self.seed, "style", epoch)
        n = int(run_lengths(runs).sum())
        readers = layout.world_size * layout.num_workers
        j = rank * layout.num_workers + worker
        a, b = j * n // readers, (j + 1) * n // readers
        if b == a:  # fewer style samples than readers: readers share them
            a, b = j % n, j % n + 1
        return cut_runs(runs, a, b)


def _local_positions(runs: np.ndarray) -> np.ndarray:
    lengths = run_lengths(runs)
    return np.cumsum(lengths) - lengths
