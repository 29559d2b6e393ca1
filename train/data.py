"""Streaming content/style pair loader over WebDataset shards with rank balance and exact mid-epoch resume.

Reads the shards the curation pipeline writes (``DIR/shards/{subset}-NNNNNN.tar``, members ``{key}.jpg|png``
and ``{key}.json``; ``DIR/manifest.json`` is a wids shard index with ``nsamples`` per shard) from a local path
or any fsspec URL, pairs content with style samples and yields batches of random crops.

Why not ``webdataset.WebDataset``: it has no position to save (its maintainers recommend resampling instead of
exact resume) and it splits shards across ranks before shuffling. The stream here is a pure function of
(seed, epoch, slot) and of counters, so a checkpoint holds a few integers per worker and resuming reopens the
current shards at saved byte offsets instead of replaying the epoch:

* every epoch, each subset's shard list is permuted with a seed shared by all ranks and only then dealt to the
  ``world_size * num_workers`` worker slots (``perm[slot::slots]``);
* a worker reads ``open_shards`` of its shards at once and interleaves them at random, then passes raw bytes
  through a shuffle buffer; decoding happens after the buffer, for the one sample that leaves it;
* the content stream defines the epoch. Every slot emits the same number of samples, the smallest slot's
  total (known from the manifest) rounded down to whole batches; the remainder is dropped and, because the
  permutation changes every epoch, a different remainder each epoch. Every rank therefore yields the same
  number of batches and DDP never waits on a rank that ran out. The style stream cycles through its own epochs;
* crops are drawn from an RNG keyed by (seed, epoch, slot, sample index), so they need no saved state;
* the saved state per worker is: epoch, shard cursor, the open shards' byte offsets, the shuffle buffer as
  (shard, byte offset) references, and the interleaving RNG's state.

JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop after the random downscale
(libjpeg-turbo through simplejpeg, PIL ``draft`` as fallback), and only the crop box is resampled.
"""

from __future__ import annotations

import copy
import io
import json
import math
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from curate.errors import BbstError
from curate.schema import MANIFEST_FILE, SHARDS_DIR
from train.config import DataConfig, LoaderConfig

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
STATE_VERSION = 1
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
    """Shards, manifest or loader settings that cannot produce a balanced, resumable stream."""


# ----------------------------------------------------------------------------------------------------------------
# shard discovery


@dataclass(frozen=True)
class Shard:
    url: str  # full URL or path of the tar
    nsamples: int  # samples (keys) in the tar


def _join(root: str, rel: str) -> str:
    return rel if "://" in rel or rel.startswith("/") else root.rstrip("/") + "/" + rel


def _count_samples(url: str) -> int:
    import fsspec

    keys = set()
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for ti in tf:
            if ti.isfile():
                keys.add(ti.name.split("/")[-1].split(".", 1)[0])
    return len(keys)


def list_shards(root: str, subset: str) -> list[Shard]:
    """Shards of ``subset`` under run directory ``root``: from ``manifest.json`` if present, else a glob + count."""
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
        shards = [Shard(u, n) for u in urls if (n := _count_samples(u)) > 0]
    shards.sort(key=lambda s: s.url)  # the permutation below must start from the same order on every rank
    if not shards:
        raise LoaderError(f"{root}: no non-empty '{subset}' shards (looked for {MANIFEST_FILE} and "
                          f"{SHARDS_DIR}/{subset}-*.tar)")
    return shards


def epoch_shards(shards: list[Shard], seed: int, subset: str, epoch: int, slot: int, num_slots: int) -> list[Shard]:
    """The shards worker ``slot`` reads in ``epoch``: a permutation shared by all slots, then dealt round-robin."""
    rng = np.random.default_rng([seed, _SUBSET_IDS.get(subset, 3), epoch, 0])
    order = rng.permutation(len(shards))
    return [shards[i] for i in order[slot::num_slots]]


def samples_per_slot(shards: list[Shard], seed: int, subset: str, epoch: int, num_slots: int, batch_size: int) -> int:
    """Samples every slot emits in ``epoch``: the smallest slot's total rounded down to whole batches."""
    smallest = min(sum(s.nsamples for s in epoch_shards(shards, seed, subset, epoch, g, num_slots))
                   for g in range(num_slots))
    return smallest // batch_size * batch_size


# ----------------------------------------------------------------------------------------------------------------
# tar reading with byte offsets


def _open(url: str):
    import fsspec

    return fsspec.open(url, "rb").open()


class ShardReader:
    """Sequential sample reader over one tar that knows the byte offset of the next sample (to resume there)."""

    def __init__(self, url: str, offset: int = 0):
        self.url = url
        self._file = _open(url)
        self._file.seek(offset)
        self._base = offset
        self._tar = tarfile.open(fileobj=self._file, mode="r|")  # noqa: SIM115 - closed in close()
        self._members = iter(self._tar)
        self._pending: tuple[str, str, bytes, int] | None = None  # (key, ext, data, header offset)
        self.next_offset = offset  # header offset of the first member of the next sample
        self._advance()

    def _advance(self) -> None:
        for ti in self._members:
            if not ti.isfile():
                continue
            name = ti.name.split("/")[-1]
            key, _, ext = name.partition(".")
            data = self._tar.extractfile(ti).read()  # stream mode: the data must be read before moving on
            self._pending = (key, ext.lower(), data, self._base + ti.offset)
            return
        self._pending = None

    def read(self) -> dict | None:
        """Next sample as ``{"__key__", "__url__", "__offset__", ext: bytes...}``, or None at the end."""
        if self._pending is None:
            return None
        key, ext, data, offset = self._pending
        sample = {"__key__": key, "__url__": self.url, "__offset__": offset, ext: data}
        self._advance()
        while self._pending is not None and self._pending[0] == key:
            sample[self._pending[1]] = self._pending[2]
            self._advance()
        self.next_offset = self._pending[3] if self._pending is not None else -1
        return sample

    def close(self) -> None:
        self._tar.close()
        self._file.close()


def read_sample_at(url: str, offset: int) -> dict:
    """The one sample whose first member header starts at ``offset`` (restores shuffle-buffer entries)."""
    reader = ShardReader(url, offset)
    try:
        sample = reader.read()
    finally:
        reader.close()
    if sample is None:
        raise LoaderError(f"{url}: no sample at byte offset {offset} (shard changed since the checkpoint?)")
    return sample


# ----------------------------------------------------------------------------------------------------------------
# one subset's stream inside one worker


class SubsetStream:
    """Raw samples of one subset for one worker slot: shard interleaving + shuffle buffer, resumable by state."""

    def __init__(self, shards: list[Shard], subset: str, seed: int, slot: int, num_slots: int, open_shards: int,
                 buffer_size: int, quota: Any = None, state: dict | None = None):
        self.shards, self.subset, self.seed = shards, subset, seed
        self.slot, self.num_slots = slot, num_slots
        self.open_shards, self.buffer_size = open_shards, buffer_size
        self.quota = quota  # callable epoch -> samples per epoch, or None to run through every shard
        self._readers: list[ShardReader] = []
        self._reader_meta: list[list[int]] = []  # [index in epoch list, samples read] per open reader
        self._buffer: list[dict] = []
        if state is None:
            self._start_epoch(0)
        else:
            self._restore(state)

    # -- epoch bookkeeping
    def _start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.emitted = 0
        self.cursor = 0  # next index in self._list to open
        self._list = epoch_shards(self.shards, self.seed, self.subset, epoch, self.slot, self.num_slots)
        self._limit = self.quota(epoch) if self.quota else None
        self._rng = np.random.default_rng([self.seed, _SUBSET_IDS.get(self.subset, 3), epoch, 1 + self.slot])
        self._close_readers()
        self._buffer = []

    def _close_readers(self) -> None:
        for r in self._readers:
            r.close()
        self._readers, self._reader_meta = [], []

    def _fill_readers(self) -> None:
        while len(self._readers) < self.open_shards and self.cursor < len(self._list):
            self._readers.append(ShardReader(self._list[self.cursor].url))
            self._reader_meta.append([self.cursor, 0])
            self.cursor += 1

    def _read_interleaved(self) -> dict | None:
        """Next raw sample from a randomly chosen open shard; None once every shard of the epoch is read."""
        while True:
            self._fill_readers()
            if not self._readers:
                return None
            j = int(self._rng.integers(len(self._readers)))
            sample = self._readers[j].read()
            if sample is not None:
                self._reader_meta[j][1] += 1
                return sample
            shard = self._list[self._reader_meta[j][0]]
            if self._reader_meta[j][1] != shard.nsamples:
                raise LoaderError(f"{shard.url}: holds {self._reader_meta[j][1]} samples but the manifest says "
                                  f"{shard.nsamples}; rebuild {MANIFEST_FILE}")
            self._readers.pop(j).close()
            self._reader_meta.pop(j)

    def next(self) -> dict:
        """Next raw (undecoded) sample; rolls over to the next epoch when this one is done."""
        while True:
            if self._limit is not None and self.emitted >= self._limit:
                self._start_epoch(self.epoch + 1)
                continue
            while len(self._buffer) < self.buffer_size + 1:
                sample = self._read_interleaved()
                if sample is None:
                    break
                self._buffer.append(sample)
            if not self._buffer:
                if self.emitted == 0:
                    raise LoaderError(f"{self.subset} slot {self.slot}: no samples in epoch {self.epoch}")
                self._start_epoch(self.epoch + 1)
                continue
            j = int(self._rng.integers(len(self._buffer)))
            sample = self._buffer[j]
            self._buffer[j] = self._buffer[-1]
            self._buffer.pop()
            self.emitted += 1
            return sample

    # -- state
    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "emitted": self.emitted,
            "cursor": self.cursor,
            "open": [[m[0], m[1], r.next_offset] for m, r in zip(self._reader_meta, self._readers)],
            "buffer": [[s["__url__"], s["__offset__"]] for s in self._buffer],
            "rng": copy.deepcopy(self._rng.bit_generator.state),
        }

    def _restore(self, state: dict) -> None:
        self._start_epoch(int(state["epoch"]))
        self.emitted, self.cursor = int(state["emitted"]), int(state["cursor"])
        for index, count, offset in state["open"]:
            url = self._list[index].url
            # an exhausted reader (offset -1) is reopened at its end so that its end-of-shard check still runs
            reader = ShardReader(url, offset) if offset >= 0 else _ExhaustedReader(url)
            self._readers.append(reader)
            self._reader_meta.append([int(index), int(count)])
        self._buffer = [read_sample_at(url, int(offset)) for url, offset in state["buffer"]]
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])

    def close(self) -> None:
        self._close_readers()


class _ExhaustedReader:
    def __init__(self, url: str):
        self.url, self.next_offset = url, -1

    def read(self) -> None:
        return None

    def close(self) -> None:
        pass


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
        if arr is not None:
            img = Image.fromarray(arr)
        else:
            img = im.convert("RGB")
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


def _image_of(sample: dict) -> tuple[str, bytes]:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise LoaderError(f"{sample['__url__']}: sample {sample['__key__']} has no image member "
                      f"(found {sorted(k for k in sample if not k.startswith('__'))})")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


# ----------------------------------------------------------------------------------------------------------------
# the iterable dataset (runs inside each DataLoader worker)


class PairStream(torch.utils.data.IterableDataset):
    """Infinite stream of collated batches for one rank; each batch carries its worker's state after it."""

    def __init__(self, data_cfg: DataConfig, loader_cfg: LoaderConfig, content: list[Shard], style: list[Shard],
                 rank: int, world_size: int, worker_states: list[dict | None], rotation: int):
        self.data_cfg, self.cfg = data_cfg, loader_cfg
        self.content, self.style = content, style
        self.rank, self.world_size = rank, world_size
        self.worker_states, self.rotation = worker_states, rotation

    def _num_workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        nw = self._num_workers()
        worker = ((info.id if info else 0) + self.rotation) % nw  # logical worker, see ShardPairLoader
        slot, slots = self.rank * nw + worker, self.world_size * nw
        state = self.worker_states[worker]
        bs, seed = self.cfg.batch_size, self.cfg.seed

        def content_quota(epoch: int) -> int:
            return samples_per_slot(self.content, seed, "content", epoch, slots, bs)

        common = {"seed": seed, "slot": slot, "num_slots": slots, "open_shards": self.cfg.open_shards,
                  "buffer_size": self.cfg.shuffle_buffer}
        content = SubsetStream(self.content, "content", quota=content_quota,
                               state=state["content"] if state else None, **common)
        style = SubsetStream(self.style, "style", state=state["style"] if state else None, **common)
        batches = state["batches"] if state else 0
        try:
            while True:
                items = []
                for _ in range(bs):
                    epoch, index = content.epoch, content.emitted
                    c, s = content.next(), style.next()
                    if content.epoch != epoch:  # the previous epoch ended exactly at this batch boundary
                        epoch, index = content.epoch, 0
                    items.append(self._make_item(c, s, np.random.default_rng([seed, 9, epoch, slot, index])))
                batches += 1
                batch = self._collate(items)
                batch["epoch"] = content.epoch
                batch["_state"] = {"worker": worker, "batches": batches, "content": content.state_dict(),
                                   "style": style.state_dict()}
                yield batch
        finally:
            content.close()
            style.close()

    def _make_item(self, c: dict, s: dict, rng: np.random.Generator) -> dict:
        crop, cfg = self.data_cfg.crop_size, self.data_cfg
        item = {"content_key": c["__key__"], "style_key": s["__key__"]}
        c_spec = sample_crop(rng, cfg)
        s_specs = [sample_crop(rng, cfg) for _ in range(2 if cfg.style2 else 1)]
        for name, sample, specs in (("content", c, [c_spec]), ("style", s, s_specs)):
            ext, data = _image_of(sample)
            where = f"{sample['__url__']}: sample {sample['__key__']}.{ext}"
            if self.cfg.decode == "cuda" and _is_jpeg(data):
                im, orientation = _header(data, where)
                w, h = _upright_size(im, orientation)
                item[name] = {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                              "orientation": orientation, "boxes": [crop_box(w, h, sp, crop)[:4] for sp in specs],
                              "flips": [sp.flip for sp in specs], "where": where}
            else:
                item[name] = [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in decode_crops(data, specs, crop,
                                                                                             where)]
        return item

    def _collate(self, items: list[dict]) -> dict:
        batch: dict[str, Any] = {"content_key": [i["content_key"] for i in items],
                                 "style_key": [i["style_key"] for i in items]}
        for name, views in (("content", ["content"]), ("style", ["style", "style2"] if self.data_cfg.style2
                                                                 else ["style"])):
            first = items[0][name]
            if isinstance(first, list) and all(isinstance(i[name], list) for i in items):
                for v, view in enumerate(views):
                    batch[view] = torch.stack([i[name][v] for i in items])  # uint8 Bx3xHxW
            else:  # GPU decode: ship bytes (or CPU crops of non-JPEG images) to the training process
                batch[f"_{name}_encoded"] = [i[name] for i in items]
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
        decoded = decode_jpeg([encoded[i]["jpeg"] for i in jpeg_idx], mode=ImageReadMode.RGB,
                              device=device) if jpeg_idx else []
        images = {i: orient_tensor(img, encoded[i]["orientation"]) for i, img in zip(jpeg_idx, decoded)}
        out: list[list[torch.Tensor]] = [[] for _ in views]
        for i, e in enumerate(encoded):
            if not isinstance(e, dict):  # decoded on the CPU worker (PNG, WebP...)
                for v in range(len(views)):
                    out[v].append(e[v].to(device, non_blocking=True))
                continue
            img = images[i]
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


class ShardPairLoader:
    """Iterable of pair batches for one rank with ``state_dict()`` / ``load_state_dict()`` for exact resume.

    Batches: ``content``, ``style`` and (if ``data.style2``) ``style2`` float tensors Bx3xHxW in [0, 1] on
    ``device`` (CPU unless given), ``content_key`` / ``style_key`` lists and ``epoch``.

    PyTorch's DataLoader takes batches from its workers round-robin, so batch ``b`` of a rank comes from logical
    worker ``b % num_workers``. The state records, per logical worker, its state after the last batch the
    training loop consumed (prefetched batches are not counted), and which worker is next. On resume the
    DataLoader's worker ``i`` plays logical worker ``(i + next) % num_workers`` so the order continues.
    """

    def __init__(self, data_cfg: DataConfig, loader_cfg: LoaderConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None):
        if not data_cfg.root:
            raise LoaderError("data.root is empty: set it to the curation run directory (local path or URL)")
        self.data_cfg, self.cfg = data_cfg, loader_cfg
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if loader_cfg.decode == "cuda" and self.device.type != "cuda":
            raise LoaderError("loader.decode='cuda' needs a CUDA device for the trainer; use decode='cpu'")
        self.content = list_shards(data_cfg.root, data_cfg.content_subset)
        self.style = list_shards(data_cfg.root, data_cfg.style_subset)
        slots = world_size * self.num_workers
        for name, shards in (("content", self.content), ("style", self.style)):
            if len(shards) < slots:
                raise LoaderError(
                    f"{data_cfg.root}: {len(shards)} '{name}' shard(s) for {world_size} rank(s) x "
                    f"{self.num_workers} worker(s) = {slots} readers; every reader needs at least one shard. "
                    f"Write more, smaller shards or lower loader.num_workers")
        if self.batches_per_epoch(0) == 0:
            raise LoaderError(f"{data_cfg.root}: the smallest worker's content share is below one batch of "
                              f"{loader_cfg.batch_size}; lower batch_size/num_workers or add data")
        self._worker_states: list[dict | None] = [None] * self.num_workers
        self._next_worker = 0
        self._consumed = 0

    @property
    def num_workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches this rank (and every other rank) yields in ``epoch``."""
        per_slot = samples_per_slot(self.content, self.cfg.seed, "content", epoch,
                                    self.world_size * self.num_workers, self.cfg.batch_size)
        return per_slot // self.cfg.batch_size * self.num_workers

    def __iter__(self) -> Iterator[dict]:
        dataset = PairStream(self.data_cfg, self.cfg, self.content, self.style, self.rank, self.world_size,
                             list(self._worker_states), self._next_worker)
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
            self._worker_states[state["worker"]] = state
            self._next_worker = (state["worker"] + 1) % self.num_workers
            self._consumed += 1
            if self.cfg.decode == "cuda":
                batch = decode_on_device(batch, self.data_cfg, self.device)
            views = ["content", "style"] + (["style2"] if self.data_cfg.style2 else [])
            for view in views:
                batch[view] = batch[view].to(self.device, non_blocking=True).float().div_(255.0)
            yield batch

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.num_workers, "batch_size": self.cfg.batch_size, "seed": self.cfg.seed,
                "open_shards": self.cfg.open_shards, "shuffle_buffer": self.cfg.shuffle_buffer,
                "crop_size": self.data_cfg.crop_size, "consumed": self._consumed,
                "next_worker": self._next_worker, "workers": copy.deepcopy(self._worker_states)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the stream is only identical with the same world size, workers and settings."""
        if state.get("version") != STATE_VERSION:
            raise LoaderError(f"loader state version {state.get('version')} is not {STATE_VERSION}")
        mine = {"world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.cfg.batch_size,
                "seed": self.cfg.seed, "open_shards": self.cfg.open_shards,
                "shuffle_buffer": self.cfg.shuffle_buffer}
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise LoaderError("cannot resume the data stream exactly: settings differ from the checkpoint "
                              + ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items()))
        self._worker_states = copy.deepcopy(state["workers"])
        self._next_worker = int(state["next_worker"])
        self._consumed = int(state["consumed"])
