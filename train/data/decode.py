"""Decode: random crop specs, their boxes, and one JPEG/PNG decoded once at the smallest size that covers its crops."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from core.images import MEMBER_EXTENSIONS, orientation, to_rgb, upright, upright_size
from train.config import DataConfig
from train.data.errors import DamagedSample, LoaderError


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
        orient = orientation(im)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with the sample's name
        raise LoaderError(f"{where}: cannot read the image header: {exc}") from None
    return im, orient


def decode_crops(data: bytes, specs: list[CropSpec], crop: int, where: str = "<image>") -> list[np.ndarray]:
    """Decode ``data`` once, at the smallest size that covers every crop, and return uint8 HxWx3 crops."""
    im, orient = _header(data, where)
    width, height = upright_size(im, orient)
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
    img = upright(img, orient)
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
    for ext in MEMBER_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    raise LoaderError(f"{sample['__url__']}: sample {sample['__key__']} has no image member "
                      f"(found {sorted(k for k in sample if not k.startswith('__'))})")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _jpeg_is_complete(data: bytes) -> bool:
    """A JPEG ends with the end-of-image marker (some writers pad after it); a truncated file does not."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def sample_crops(sample: dict, specs: list[CropSpec], crop: int, decode: str = "cpu") -> list[torch.Tensor] | dict:
    """The crops of one raw sample: CHW uint8 tensors, or (``decode="cuda"``) its JPEG bytes and crop boxes for
    :func:`train.data.decode_cuda.decode_on_device`. Raises :class:`LoaderError` for bytes that do not decode."""
    ext, data = _image_of(sample)
    where = f"{sample['__url__']}: sample {sample['__key__']}.{ext}"
    if decode == "cuda" and _is_jpeg(data):
        im, orient = _header(data, where)
        if im.mode in ("RGB", "L"):  # nvJPEG decodes these; CMYK and the like decode on the CPU below
            if not _jpeg_is_complete(data):
                raise DamagedSample(f"{where}: truncated JPEG (no end-of-image marker)")
            w, h = upright_size(im, orient)
            return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "orientation": orient,
                    "boxes": [crop_box(w, h, sp, crop)[:4] for sp in specs], "flips": [sp.flip for sp in specs],
                    "where": where, "specs": specs}
    return [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in decode_crops(data, specs, crop, where)]
