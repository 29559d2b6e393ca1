"""Streaming content/style pair loader over WebDataset shards: every sample once per epoch, elastic exact resume.

Reads the shards the curation pipeline writes (``DIR/shards/{subset}-NNNNNN.tar``, members ``{key}.jpg|png``
and ``{key}.json``; ``DIR/manifest.json`` is a wids shard index with ``nsamples`` per shard) from local paths
or any fsspec URL, through :mod:`curate.shards`. ``data.root`` may list several such directories, mixed as they
are or with per-root weights. The loader pairs content with style samples and yields batches of random crops.

The stream is a pure function of (seed, epoch, position), so a checkpoint holds a few integers and resuming
reads only what comes next (nothing is replayed):

* **Epoch order.** Every epoch the shards (of every root) are permuted with a seed shared by all ranks and
  concatenated: a global order over (shard, sample) that keeps each shard's samples in file order.
* **Dealt by sample.** The order is cut into ``steps = N // (world_size * batch_size)`` global batches. Step ``s``
  of rank ``r`` is served by worker ``s % num_workers``, and each (rank, worker) reader owns one contiguous span
  of the order, as long as the batches it serves: a few runs inside consecutive shards, read sequentially. A
  shard may be shared by several readers and one shard serves any number of them. Every rank yields ``steps``
  batches, the workers of a rank differ by at most one, and at most one global batch (fewer than
  ``world_size * batch_size`` samples, the tail of the permuted order, so a different one each epoch) is dropped.
* **Mixing inside a span.** A reader interleaves ``open_shards`` of its runs at random and passes samples through
  a shuffle buffer; decoding happens after the buffer. That order depends only on run lengths and a seeded RNG,
  so it is computed, not read: resuming fast-forwards it without touching the shards.
* **Position.** The checkpoint records the epoch, the steps taken in it and the layout (ranks, workers, batch,
  mixing) that took them. Same layout: the stream continues bit-exactly. Another layout (say 2 -> 4 ranks): the
  samples the old readers consumed are recomputed, removed from the epoch's order, and the rest is dealt to the
  new readers, so nothing of that epoch is repeated or lost.
* **Style** is an independent stream: each epoch the style order is split evenly over the readers, and a reader
  cycles through its share (reshuffled every cycle) as long as its content lasts.
* **Damaged samples** (bytes that do not decode) are skipped: the slot is filled with another sample of the same
  batch (or the reader's next healthy one), so the order and resume stay exact. Each is logged once with its
  shard and key, counted (``damaged_samples``), and more than ``loader.max_damaged_fraction`` of a rank's
  samples in an epoch stops training with an error.

Crops are drawn from an RNG keyed by (seed, epoch, segment, reader, draw index). JPEGs decode at the smallest
DCT scale (1/2, 1/4, 1/8) that covers the crop (libjpeg-turbo through simplejpeg, PIL ``draft`` as fallback);
only the crop box is resampled; ``loader.decode="cuda"`` ships JPEG bytes to nvJPEG in the training process.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from curate.errors import BbstError
from curate.schema import MANIFEST_FILE, SHARDS_DIR
from curate.shards import IMAGE_EXTS, ShardFormatError, index_shard, iter_samples, read_sample
from train.config import DataConfig, LoaderConfig

log = logging.getLogger("bbst.train.data")
STATE_VERSION = 2
# EXIF orientation tag value -> PIL transpose that makes the image upright (as PIL.ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SUBSET_IDS = {"content": 1, "style": 2}


class LoaderError(BbstError, ValueError):
    """Shards, manifest or loader settings that cannot produce the stream, or a resume that cannot continue it."""


class DamagedSample(LoaderError):
    """One sample whose bytes do not decode (skipped by the loader, up to ``loader.max_damaged_fraction``)."""


# ----------------------------------------------------------------------------------------------------------------
# shard discovery


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


# ----------------------------------------------------------------------------------------------------------------
# the epoch order: runs of consecutive samples, (shard id, start, end), over the flat shard list of all sources


def flat_shards(sources: list[Source]) -> list[Shard]:
    return [s for src in sources for s in src.shards]


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


# ----------------------------------------------------------------------------------------------------------------
# one reader's draw order (pure) and the reads that follow it


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


# ----------------------------------------------------------------------------------------------------------------
# the loader's position and the plan of an epoch


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


# ----------------------------------------------------------------------------------------------------------------
# crop sampling and decoding


@dataclass(frozen=True)
class CropSpec:
    short_side: float  # target short side of the randomly resized image
    fx: float  # crop position as a fraction of the free space, in [0, 1]
    fy: float
    flip: bool


def sample_crop(rng: np.random.Generator, cfg: DataConfig) -> CropSpec:
    return CropSpec(float(rng.uniform(cfg.short_side_min, cfg.short_side_max)), float(rng.random()),
                    float(rng.random()), bool(cfg.hflip and rng.random() < 0.5))


def crop_box(width: int, height: int, spec: CropSpec, crop: int) -> tuple[float, float, float, float, float]:
    """Crop box in the (upright) original image's pixels and the resize ratio, for an image of this size."""
    short = min(width, height)
    # never ask for more than the image holds; a small image is upscaled to at least the crop size
    target = max(crop, min(spec.short_side, short)) if short >= crop else crop
    ratio = target / short
    free_x, free_y = max(0.0, width * ratio - crop), max(0.0, height * ratio - crop)
    x0, y0 = spec.fx * free_x / ratio, spec.fy * free_y / ratio
    side = crop / ratio
    return x0, y0, min(width, x0 + side), min(height, y0 + side), ratio


def _header(data: bytes, where: str) -> tuple[Image.Image, int]:
    try:
        im = Image.open(io.BytesIO(data))
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with the sample's name
        raise LoaderError(f"{where}: cannot read the image header: {exc}") from None
    return im, orientation


def _upright_size(im: Image.Image, orientation: int) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def decode_crops(data: bytes, specs: list[CropSpec], crop: int, where: str = "<image>") -> list[np.ndarray]:
    """Decode ``data`` once, at the smallest size that covers every crop, and return uint8 HxWx3 crops."""
    im, orientation = _header(data, where)
    width, height = _upright_size(im, orientation)
    boxes = [crop_box(width, height, s, crop) for s in specs]
    ratio = max(b[4] for b in boxes)  # the finest crop decides the decode scale
    raw_w, raw_h = im.size
    need_w, need_h = math.ceil(raw_w * min(1.0, ratio)), math.ceil(raw_h * min(1.0, ratio))
    try:
        arr = None
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            try:
                import simplejpeg

                arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=need_w, min_height=need_h)
            except ImportError:
                im.draft("RGB", (need_w, need_h))  # DCT-domain downscale inside PIL's libjpeg
        elif im.format == "JPEG":
            im.draft(im.mode, (need_w, need_h))  # CMYK: DCT-scaled as well, converted below
        img = Image.fromarray(arr) if arr is not None else to_rgb(im)
    except LoaderError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise LoaderError(f"{where}: cannot decode the image: {exc}") from None
    if orientation in _EXIF_TRANSPOSE:
        img = img.transpose(_EXIF_TRANSPOSE[orientation])
    # decoded pixels per original pixel (per axis: DCT scaling rounds each dimension up separately)
    dw, dh = img.size
    sx, sy = dw / width, dh / height
    out = []
    for (x0, y0, x1, y1, _), spec in zip(boxes, specs):
        box = (min(x0 * sx, dw), min(y0 * sy, dh), min(x1 * sx, dw), min(y1 * sy, dh))
        piece = img.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
        if spec.flip:
            piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(piece))
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any mode the curation policy keeps: CMYK through its ICC profile, 16-bit by its high byte."""
    from curate.imagecheck import _cmyk_to_rgb, _to_8bit

    if im.mode == "CMYK":
        return _cmyk_to_rgb(im, to_srgb=True)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _to_8bit(im).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _image_of(sample: dict) -> tuple[str, bytes]:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise LoaderError(f"{sample['__url__']}: sample {sample['__key__']} has no image member "
                      f"(found {sorted(k for k in sample if not k.startswith('__'))})")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _jpeg_is_complete(data: bytes) -> bool:
    """A JPEG ends with the end-of-image marker (some writers pad after it); a truncated file does not."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"




# ----------------------------------------------------------------------------------------------------------------
# the iterable dataset (runs inside each DataLoader worker)


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
        """The crops of one sample: CHW uint8 tensors, or (``decode="cuda"``) the JPEG bytes and crop boxes."""
        crop = self.data_cfg.crop_size
        ext, data = _image_of(sample)
        where = f"{sample['__url__']}: sample {sample['__key__']}.{ext}"
        if self.cfg.decode == "cuda" and _is_jpeg(data):
            im, orientation = _header(data, where)
            if im.mode in ("RGB", "L"):  # nvJPEG decodes these; CMYK and the like decode on the CPU below
                if not _jpeg_is_complete(data):
                    raise DamagedSample(f"{where}: truncated JPEG (no end-of-image marker)")
                w, h = _upright_size(im, orientation)
                return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "orientation": orientation,
                        "boxes": [crop_box(w, h, sp, crop)[:4] for sp in specs], "flips": [sp.flip for sp in specs],
                        "where": where, "specs": specs}
        return [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in decode_crops(data, specs, crop, where)]

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


# ----------------------------------------------------------------------------------------------------------------
# GPU decode (nvJPEG through torchvision) in the training process




def orient_tensor(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` to a CxHxW tensor, exactly as ``PIL.ImageOps.exif_transpose``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:
        return torch.rot90(img, 1, (-2, -1)).flip(-1)
    if orientation == 8:
        return torch.rot90(img, 1, (-2, -1))
    return img


def _decode_one_on_device(e: dict, crop: int, device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """One JPEG on ``device``; if nvJPEG refuses it, its crops decoded on the CPU instead."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(e["jpeg"], mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        arrays = decode_crops(bytes(e["jpeg"].numpy()), e["specs"], crop, e["where"])
        return [torch.from_numpy(a.copy()).permute(2, 0, 1).to(device) for a in arrays]


def decode_on_device(batch: dict, data_cfg: DataConfig, device: torch.device) -> dict:
    """Finish a ``decode="cuda"`` batch: batched nvJPEG decode, crop, resize and flip on ``device``."""
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    crop = data_cfg.crop_size
    for name, views in (("content", ["content"]), ("style", ["style", "style2"] if data_cfg.style2 else ["style"])):
        encoded = batch.pop(f"_{name}_encoded", None)
        if encoded is None:
            continue
        jpeg_idx = [i for i, e in enumerate(encoded) if isinstance(e, dict)]
        # nvJPEG ignores EXIF orientation (torchvision applies it on CPU only), so it is applied here
        try:
            decoded = decode_jpeg([encoded[i]["jpeg"] for i in jpeg_idx], mode=ImageReadMode.RGB,
                                  device=device) if jpeg_idx else []
        except RuntimeError:  # one image nvJPEG cannot handle fails the whole call: decode one by one
            decoded = [_decode_one_on_device(encoded[i], crop, device) for i in jpeg_idx]
        images = {i: orient_tensor(img, encoded[i]["orientation"]) if isinstance(img, torch.Tensor) else img
                  for i, img in zip(jpeg_idx, decoded)}
        out: list[list[torch.Tensor]] = [[] for _ in views]
        for i, e in enumerate(encoded):
            if not isinstance(e, dict):  # decoded on the CPU worker (PNG, WebP...)
                for v in range(len(views)):
                    out[v].append(e[v].to(device, non_blocking=True))
                continue
            img = images[i]
            if isinstance(img, list):  # decoded on the CPU after nvJPEG refused it: crops are ready
                for v in range(len(views)):
                    out[v].append(img[v])
                continue
            for v, ((x0, y0, x1, y1), flip) in enumerate(zip(e["boxes"], e["flips"])):
                xa, ya = math.floor(x0), math.floor(y0)
                xb, yb = max(xa + 1, math.ceil(x1)), max(ya + 1, math.ceil(y1))
                piece = img[:, ya:yb, xa:xb].unsqueeze(0).float()
                piece = F.interpolate(piece, size=(crop, crop), mode="bilinear", antialias=True,
                                      align_corners=False)
                piece = piece.clamp_(0, 255).round_().to(torch.uint8)[0]
                out[v].append(piece.flip(-1) if flip else piece)
        for v, view in enumerate(views):
            batch[view] = torch.stack(out[v])
    return batch




# ----------------------------------------------------------------------------------------------------------------
# the loader the trainer uses


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
