"""Read: the raw samples of a reader's runs in its draw order, streamed sequentially; the cycling style reader."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from core.schema import MANIFEST_FILE
from core.shards import ShardFormatError, index_shard, iter_samples, read_sample
from train.data.errors import LoaderError
from train.data.order import DrawOrder, run_lengths
from train.data.sources import Shard


@functools.lru_cache(maxsize=64)
def _shard_index(url: str) -> tuple:
    try:
        return tuple(index_shard(url))
    except ShardFormatError as exc:
        raise LoaderError(str(exc)) from None


class SpanReader:
    """Raw samples of one reader's runs in :class:`DrawOrder`; runs are streamed sequentially from their start.

    Started after ``skip`` draws (resume): the open runs are reopened at their next sample's byte offset and only
    the samples in the shuffle buffer are read again, by reference.
    """

    def __init__(self, shards: list[Shard], runs: np.ndarray, open_shards: int, buffer_size: int,
                 rng: np.random.Generator, skip: int = 0):
        self.shards, self.runs = shards, runs
        self.order = DrawOrder(run_lengths(runs).tolist(), open_shards, buffer_size, rng)
        self.order.skip(skip)
        self._streams: dict[int, Iterator] = {}
        self._held: dict[tuple[int, int], dict] = {}
        for run, index in self.order.open:
            self._streams[run] = self._stream(run, index)
        for ref in self.order.buffer:
            self._held[ref] = self._fetch(*ref)
        self.order.on_read = self._on_read

    def _where(self, run: int, index: int) -> tuple[Shard, int]:
        shard_id, start, _ = self.runs[run]
        return self.shards[int(shard_id)], int(start) + index

    def _stream(self, run: int, index: int) -> Iterator:
        shard, i = self._where(run, index)
        offset = 0 if i == 0 else _shard_index(shard.url)[i].offset
        return iter_samples(shard.url, offset)

    def _fetch(self, run: int, index: int) -> dict:
        shard, i = self._where(run, index)
        entries = _shard_index(shard.url)
        if i >= len(entries):
            raise LoaderError(f"{shard.url}: holds {len(entries)} samples but the manifest says {shard.nsamples}; "
                              f"rebuild {MANIFEST_FILE}")
        entry = entries[i]
        return {"__key__": entry.key, "__url__": shard.url, **read_sample(entry)}

    def _on_read(self, run: int, index: int) -> None:
        shard, i = self._where(run, index)
        if run not in self._streams:  # a run the order just opened
            self._streams[run] = self._stream(run, index)
        try:
            item = next(self._streams[run], None)
        except ShardFormatError as exc:
            raise LoaderError(str(exc)) from None
        if item is None:
            raise LoaderError(f"{shard.url}: holds {i} samples but the manifest says {shard.nsamples}; "
                              f"rebuild {MANIFEST_FILE}")
        sample = {"__url__": shard.url, **item[1]}
        self._held[(run, index)] = sample
        if index + 1 == self.order.lengths[run]:  # the run is done: release its file
            self._streams.pop(run).close()

    def next(self) -> dict | None:
        """Next raw (undecoded) sample ``{"__key__", "__url__", ext: bytes...}``, or None at the span's end."""
        ref = self.order.next()
        return None if ref is None else self._held.pop(ref)

    def lookahead(self) -> Iterator[dict]:
        """The samples after the current one, read by reference (substitutes for a batch with no healthy sample)."""
        order = copy.deepcopy(self.order)
        order.on_read = None
        while (ref := order.next()) is not None:
            yield self._held.get(ref) or self._fetch(*ref)

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams, self._held = {}, {}


class CyclingReader:
    """A reader that goes through its span again (reshuffled) whenever it runs out: the style stream."""

    def __init__(self, make: Any, span_len: int, skip: int):
        self.make, self.span_len = make, max(1, span_len)
        self.cycle = skip // self.span_len
        self.reader = make(self.cycle, skip % self.span_len)

    def next(self) -> dict:
        sample = self.reader.next()
        while sample is None:
            self.reader.close()
            self.cycle += 1
            self.reader = self.make(self.cycle, 0)
            sample = self.reader.next()
        return sample

    def lookahead(self) -> Iterator[dict]:
        return self.reader.lookahead()

    def close(self) -> None:
        self.reader.close()
