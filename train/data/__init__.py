"""Streaming content/style pair loader over WebDataset shards: every sample once per epoch, elastic exact resume.

Reads the shards the curation pipeline writes (``DIR/shards/{subset}-NNNNNN.tar``, members ``{key}.jpg|png``
and ``{key}.json``; ``DIR/manifest.json`` is a wids shard index with ``nsamples`` per shard) from local paths
or any fsspec URL, through :mod:`core.shards`. ``data.root`` may list several such directories, mixed as they
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

The stages, one module each, composed in this order (as webdataset composes a pipeline)::

    sources  shard list: the non-empty shards of each data.root (manifest or glob)      -> Source, Shard
    order    partition: the epoch order as runs, dealt to (rank, worker) readers        -> Planner, Layout, Position
    read     the raw samples of a reader's runs in its draw order (interleave + buffer) -> SpanReader, CyclingReader
    decode   crop specs and one decode per sample at the smallest covering size       -> CropSpec, decode_crops
    mix      the per-rank stream: content and style readers -> crops -> one batch     -> PairStream
    loader   the DataLoader around it and the position a checkpoint records           -> ShardPairLoader

``decode_cuda`` finishes ``loader.decode="cuda"`` batches in the training process; ``errors`` holds the two errors.
"""

from train.data.decode import CropSpec, crop_box, decode_crops, sample_crop
from train.data.decode_cuda import decode_on_device, orient_tensor
from train.data.errors import DamagedSample, LoaderError
from train.data.loader import STATE_VERSION, ShardPairLoader
from train.data.mix import PairStream
from train.data.order import (
    DrawOrder,
    Layout,
    Planner,
    Position,
    compress_runs,
    cut_runs,
    epoch_order,
    expand_runs,
    run_lengths,
)
from train.data.read import CyclingReader, SpanReader
from train.data.sources import Shard, Source, flat_shards, list_shards, subset_sources

__all__ = [
    "STATE_VERSION", "CropSpec", "CyclingReader", "DamagedSample", "DrawOrder", "Layout", "LoaderError", "PairStream",
    "Planner", "Position", "Shard", "ShardPairLoader", "Source", "SpanReader", "compress_runs", "crop_box",
    "cut_runs", "decode_crops", "decode_on_device", "epoch_order", "expand_runs", "flat_shards", "list_shards",
    "orient_tensor", "run_lengths", "sample_crop", "subset_sources",
]
