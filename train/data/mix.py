"""Mix: the per-rank stream of collated content/style batches (runs inside each DataLoader worker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from train.config import DataConfig, LoaderConfig
from train.data.decode import CropSpec, sample_crop, sample_crops
from train.data.errors import LoaderError
from train.data.order import Layout, Planner, Position, cut_runs, run_lengths
from train.data.read import CyclingReader, SpanReader


class PairStream(torch.utils.data.IterableDataset):
    """Infinite stream of collated batches for one rank, starting at ``start``.

    PyTorch's DataLoader takes batches from its workers round-robin, so DataLoader worker ``i`` serves the steps
    ``start + i``, ``start + i + num_workers``, ...; step ``s`` of a segment is read by logical worker
    ``s % num_workers``, whose span the worker computes, so the order does not depend on which process serves it.
    Each batch carries the position after it.
    """

    def __init__(self, data_cfg: DataConfig, loader_cfg: LoaderConfig, planner: Planner, layout: Layout,
                 rank: int, start: Position):
        self.data_cfg, self.cfg, self.planner, self.layout = data_cfg, loader_cfg, planner, layout
        self.rank, self.start = rank, start

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        me, nw = (info.id if info else 0), self.layout.num_workers
        epoch, step, history = self.start.epoch, self.start.step, list(self.start.history or [])
        offset = 0
        current: tuple | None = None
        readers: list = []
        try:
            while True:
                order = self.planner.content_order(epoch, history)
                n = int(run_lengths(order).sum())
                steps = self.layout.steps(n)
                while step < steps:
                    if offset % nw == me:
                        worker = step % nw
                        if current != (epoch, len(history), worker):
                            for r in readers:
                                r.close()
                            readers = self._readers(order, n, epoch, len(history), worker, step)
                            current = (epoch, len(history), worker)
                        batch = self._batch(readers, epoch, len(history), worker)
                        after = Position(epoch, step + 1, history) if step + 1 < steps else Position(epoch + 1, 0)
                        batch["epoch"] = epoch
                        batch["_state"] = after.to_dict()
                        yield batch
                    step += 1
                    offset += 1
                epoch, step, history = epoch + 1, 0, []
        finally:
            for r in readers:
                r.close()

    def _readers(self, order: np.ndarray, n: int, epoch: int, segment: int, worker: int, step: int) -> list:
        layout, planner, cfg = self.layout, self.planner, self.cfg
        a, b = layout.span(n, self.rank, worker)
        skip = layout.reader_batches(worker, step) * layout.batch_size
        content = SpanReader(planner.content_shards, cut_runs(order, a, b), cfg.open_shards, cfg.shuffle_buffer,
                             planner.reader_rng("content", epoch, segment, layout, self.rank, worker), skip)
        style_runs = planner.style_span(epoch, layout, self.rank, worker)

        def make_style(cycle: int, skip_in_cycle: int) -> SpanReader:
            rng = planner.reader_rng("style", epoch, segment, layout, self.rank, worker, cycle)
            return SpanReader(planner.style_shards, style_runs, cfg.open_shards, cfg.shuffle_buffer, rng,
                              skip_in_cycle)

        return [content, CyclingReader(make_style, int(run_lengths(style_runs).sum()), skip)]

    def _batch(self, readers: list, epoch: int, segment: int, worker: int) -> dict:
        content, style = readers
        bs, seed = self.layout.batch_size, self.cfg.seed
        reader = self.rank * self.layout.num_workers + worker
        first = content.order.drawn
        rngs = [np.random.default_rng([seed, 9, epoch, segment, reader, first + i]) for i in range(bs)]
        specs_c = [[sample_crop(rng, self.data_cfg)] for rng in rngs]
        specs_s = [[sample_crop(rng, self.data_cfg) for _ in range(2 if self.data_cfg.style2 else 1)]
                   for rng in rngs]
        damaged: list[tuple[str, str, str, str]] = []
        c_keys, c_parts = self._parts("content", [content.next() for _ in range(bs)], specs_c, content, damaged)
        s_keys, s_parts = self._parts("style", [style.next() for _ in range(bs)], specs_s, style, damaged)
        batch = self._collate(c_keys, c_parts, s_keys, s_parts)
        batch["_damaged"] = damaged
        return batch

    def _parts(self, name: str, samples: list[dict], specs: list[list[CropSpec]], reader: Any,
               damaged: list) -> tuple[list[str], list]:
        """Crops of ``samples``; a damaged one is recorded and replaced by the nearest healthy sample of the batch
        (cropped with its own specs), or by the reader's next healthy sample when the whole batch is damaged."""
        keys = [s["__key__"] for s in samples]
        parts: list[Any] = [None] * len(samples)
        for i, sample in enumerate(samples):
            try:
                parts[i] = self._part(sample, specs[i])
            except LoaderError as exc:
                damaged.append((name, sample["__url__"], sample["__key__"], str(exc)))
        good = [i for i, p in enumerate(parts) if p is not None]
        for i in [i for i, p in enumerate(parts) if p is None]:
            if good:
                k = min(good, key=lambda g: (abs(g - i), g))
                parts[i], keys[i] = self._part(samples[k], specs[i]), keys[k]
                continue
            for sample in reader.lookahead():
                try:
                    parts[i], keys[i] = self._part(sample, specs[i]), sample["__key__"]
                    break
                except LoaderError:
                    continue
            else:
                raise LoaderError(f"no decodable '{name}' sample left in this reader's share of the epoch "
                                  f"(last damaged: {damaged[-1][1]} key {damaged[-1][2]})")
        return keys, parts

    def _part(self, sample: dict, specs: list[CropSpec]) -> Any:
        return sample_crops(sample, specs, self.data_cfg.crop_size, self.cfg.decode)

    def _collate(self, c_keys: list[str], c_parts: list, s_keys: list[str], s_parts: list) -> dict:
        batch: dict[str, Any] = {"content_key": c_keys, "style_key": s_keys}
        for name, parts, views in (("content", c_parts, ["content"]),
                                   ("style", s_parts, ["style", "style2"] if self.data_cfg.style2 else ["style"])):
            if all(isinstance(p, list) for p in parts):
                for v, view in enumerate(views):
                    batch[view] = torch.stack([p[v] for p in parts])  # uint8 Bx3xHxW
            else:  # GPU decode: ship bytes (or CPU crops of non-JPEG images) to the training process
                batch[f"_{name}_encoded"] = parts
        return batch
