"""State: the loader the trainer iterates, and its ``state_dict`` / ``load_state_dict`` for exact (elastic) resume."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch

from train.config import DataConfig, LoaderConfig
from train.data.decode_cuda import decode_on_device
from train.data.errors import LoaderError
from train.data.mix import PairStream
from train.data.order import Layout, Planner, Position, run_lengths
from train.data.sources import Source, subset_sources

log = logging.getLogger("bbst.train.data")
STATE_VERSION = 2


def _fingerprint(sources: list[Source]) -> list:
    """What the epoch order depends on, independent of where the directories are mounted."""
    return [[src.weight, [[s.url.rsplit("/", 1)[-1], s.nsamples] for s in src.shards]] for src in sources]


class ShardPairLoader:
    """Iterable of pair batches for one rank with ``state_dict()`` / ``load_state_dict()`` for exact resume.

    Batches: ``content``, ``style`` and (if ``data.style2``) ``style2`` float tensors Bx3xHxW in [0, 1] on
    ``device`` (CPU unless given), ``content_key`` / ``style_key`` lists and ``epoch``. The state records the
    position after the last batch the training loop consumed (prefetched batches are not counted).
    """

    def __init__(self, data_cfg: DataConfig, loader_cfg: LoaderConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None):
        self.data_cfg, self.cfg = data_cfg, loader_cfg
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if loader_cfg.decode == "cuda" and self.device.type != "cuda":
            raise LoaderError("loader.decode='cuda' needs a CUDA device for the trainer; use decode='cpu'")
        content = subset_sources(data_cfg, data_cfg.content_subset, data_cfg.content_weights)
        style = subset_sources(data_cfg, data_cfg.style_subset, data_cfg.style_weights)
        self.planner = Planner(content, style, loader_cfg.seed)
        self.content, self.style = self.planner.content_shards, self.planner.style_shards
        self.layout = Layout(world_size, self.num_workers, loader_cfg.batch_size, loader_cfg.open_shards,
                             loader_cfg.shuffle_buffer)
        self._pos = Position()
        if self.batches_per_epoch(0) == 0:
            n = self.samples_per_epoch(0)
            raise LoaderError(f"{', '.join(data_cfg.roots())}: {n} '{data_cfg.content_subset}' sample(s) make no "
                              f"global batch of {world_size} rank(s) x loader.batch_size={loader_cfg.batch_size}",
                              hint="lower loader.batch_size or add data")
        self.damaged_total = 0  # damaged samples this rank skipped (this run and the runs it resumes)
        self._damaged_epoch: dict[int, int] = {}
        self._reported: set[tuple[str, str]] = set()
        self._consumed = 0

    @property
    def num_workers(self) -> int:
        return max(1, self.cfg.num_workers)

    @property
    def position(self) -> Position:
        return copy.deepcopy(self._pos)

    def samples_per_epoch(self, epoch: int = 0) -> int:
        """Content samples in ``epoch``'s order (all ranks together)."""
        return int(run_lengths(self.planner.content_order(epoch, [])).sum())

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank (and every other rank) yields in ``epoch`` (the current one: in all its segments)."""
        if epoch == self._pos.epoch and self._pos.history:
            done = sum(int(seg["steps"]) for seg in self._pos.history)
            return done + self.layout.steps(int(run_lengths(self.planner.content_order(epoch,
                                                                                        self._pos.history)).sum()))
        return self.layout.steps(self.samples_per_epoch(epoch))

    def __iter__(self) -> Iterator[dict]:
        dataset = PairStream(self.data_cfg, self.cfg, self.planner, self.layout, self.rank, self.position)
        kwargs: dict[str, Any] = {}
        if self.cfg.num_workers > 0:
            kwargs = {"num_workers": self.cfg.num_workers, "prefetch_factor": self.cfg.prefetch_factor,
                      "persistent_workers": False}
        # an own generator: DataLoader draws its worker base seed from the global torch RNG otherwise, which
        # would shift the training step's random stream differently in a resumed run
        loader = torch.utils.data.DataLoader(dataset, batch_size=None,
                                             generator=torch.Generator().manual_seed(self.cfg.seed),
                                             pin_memory=self.cfg.pin_memory and self.device.type == "cuda",
                                             **kwargs)
        for batch in loader:
            state = batch.pop("_state")
            self._account_damaged(batch.pop("_damaged"), int(batch["epoch"]))
            self._pos = Position(int(state["epoch"]), int(state["step"]), state["history"] or None)
            self._consumed += 1
            if self.cfg.decode == "cuda":
                batch = decode_on_device(batch, self.data_cfg, self.device)
            views = ["content", "style"] + (["style2"] if self.data_cfg.style2 else [])
            for view in views:
                batch[view] = batch[view].to(self.device, non_blocking=True).float().div_(255.0)
            yield batch

    def _account_damaged(self, damaged: list, epoch: int) -> None:
        if not damaged:
            return
        for name, url, key, message in damaged:
            if (url, key) not in self._reported:
                self._reported.add((url, key))
                log.warning("skipped a damaged %s sample: %s key %s: %s", name, url, key, message)
        self.damaged_total += len(damaged)
        count = self._damaged_epoch[epoch] = self._damaged_epoch.get(epoch, 0) + len(damaged)
        # content and style samples this rank draws in the epoch; the limit allows at least one when it is > 0
        drawn = 2 * self.batches_per_epoch(epoch) * self.cfg.batch_size
        allowed = math.ceil(self.cfg.max_damaged_fraction * drawn)
        if count > allowed:
            name, url, key, message = damaged[-1]
            raise LoaderError(
                f"{count} damaged samples of {drawn} in epoch {epoch} on rank {self.rank} exceed "
                f"loader.max_damaged_fraction={self.cfg.max_damaged_fraction}; the latest: {url} key {key}: {message}",
                hint="repair or remove the damaged shards, or raise loader.max_damaged_fraction")

    def stats(self) -> dict[str, float]:
        """Counters for the training metrics."""
        return {"data/damaged_samples": float(self.damaged_total),
                "data/damaged_this_epoch": float(self._damaged_epoch.get(self._pos.epoch, 0))}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                "seed": self.cfg.seed, "layout": asdict(self.layout), **self._pos.to_dict(),
                "content": _fingerprint(self.planner.content), "consumed": self._consumed,
                "damaged_total": self.damaged_total, "damaged_epoch": self._damaged_epoch.get(self._pos.epoch, 0)}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Continue from ``state`` (one rank's, or the list of every rank's from a checkpoint).

        Same layout: the identical stream. Another layout (ranks, workers, batch size, mixing): the rest of the
        epoch is dealt to this layout's readers.
        """
        states = state if isinstance(state, list) else [state]
        saved = states[0]
        if saved.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {saved.get('version')} is not {STATE_VERSION}; this checkpoint "
                              "was written by an older loader and cannot continue its data stream")
        if saved["seed"] != self.cfg.seed:
            raise LoaderError(f"cannot resume the data stream: loader.seed: checkpoint {saved['seed']} vs now "
                              f"{self.cfg.seed}")
        if saved["content"] != _fingerprint(self.planner.content):
            raise LoaderError(f"cannot resume the data stream: the content shards under {self.data_cfg.root} "
                              "differ from the checkpoint's (other shards, counts or weights)")
        old = Layout(**saved["layout"])
        pos = Position(int(saved["epoch"]), int(saved["step"]), copy.deepcopy(saved["history"]) or None)
        if old != self.layout and (pos.step > 0 or pos.history):
            if pos.step > 0:
                pos = Position(pos.epoch, 0, (pos.history or []) + [{**asdict(old), "steps": pos.step}])
            log.info("data stream: %s -> %s rank(s) x %s worker(s) x batch %s; the rest of epoch %d is dealt anew",
                     old.world_size, self.world_size, self.num_workers, self.cfg.batch_size, pos.epoch)
        self._pos = pos
        # this rank's counters carry over when the ranks are the same ones
        mine = next((s for s in states if s.get("rank") == self.rank), None) \
            if old.world_size == self.world_size else None
        if mine is not None:
            self.damaged_total = int(mine.get("damaged_total", 0))
            self._damaged_epoch = {pos.epoch: int(mine.get("damaged_epoch", 0))}
            self._consumed = int(mine.get("consumed", 0))
