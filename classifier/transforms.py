"""The one image preprocessing used by scoring, labeling and training: decode, resize, center crop, normalize."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from core.images import open_image, to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERPOLATION = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


@dataclass
class PreprocessConfig:
    """How an image becomes the model's input tensor; saved inside every checkpoint."""

    size: int = 224  # square input side in pixels
    mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))  # per-channel mean (0..1 scale)
    std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))  # per-channel std (0..1 scale)
    interpolation: str = "bicubic"  # resize filter: bicubic, bilinear, nearest, lanczos
    resize_mode: str = "shortest"  # "shortest": short side to size then center crop; "squash": both sides to size
    crop_pct: float = 1.0  # short side is resized to size / crop_pct before the center crop (timm convention)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(_INTERPOLATION)}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {self.resize_mode!r} is not 'shortest' or 'squash'")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (RGB)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image."""


class ImageTransform:
    """Bytes or PIL image -> normalized float CHW tensor, following a :class:`PreprocessConfig`.

    Resize and crop happen on uint8 PIL images (cheap); normalization happens once per batch in
    :meth:`normalize`, so a batch of uint8 tensors can travel to the device before the float conversion.
    """

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        self._resample = _INTERPOLATION[cfg.interpolation]
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    @property
    def resize_side(self) -> int:
        return round(self.cfg.size / self.cfg.crop_pct)

    def decode(self, data: bytes) -> Image.Image:
        """Decode bytes to an upright RGB image (core.images colour rule) no smaller than needed."""
        try:
            # a JPEG decodes at the largest DCT scale whose output still covers resize_side: quality is unchanged
            # while 1024+ px JPEGs decode 4-8x faster
            return open_image(data, min_side=self.resize_side)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
            raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {exc}") from exc

    def resize_crop(self, img: Image.Image) -> Image.Image:
        size = self.cfg.size
        if self.cfg.resize_mode == "squash":
            return img.resize((size, size), self._resample)
        w, h = img.size
        side = self.resize_side
        scale = side / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), self._resample, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))

    def to_uint8(self, image: bytes | Image.Image) -> torch.Tensor:
        """uint8 CHW tensor of the resized, cropped image."""
        img = self.decode(image) if isinstance(image, (bytes, bytearray, memoryview)) else to_rgb(image)
        arr = np.asarray(self.resize_crop(img), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) uint8 -> normalized float32 on the batch's device."""
        mean, std = self._mean.to(batch_uint8.device), self._std.to(batch_uint8.device)
        return (batch_uint8.float() - mean) / std

    def __call__(self, image: bytes | Image.Image) -> torch.Tensor:
        """Normalized float CHW tensor of one image."""
        return self.normalize(self.to_uint8(image)[None])[0]

    def batch(self, images: list, num_threads: int = 1) -> tuple[torch.Tensor, list[str | None]]:
        """Decode and resize many images (in threads; PIL releases the GIL) into one uint8 batch.

        Returns ``(uint8 tensor of the decodable images, errors)`` where ``errors[i]`` is None for a decoded
        image and the message for a failed one; failed images are left out of the tensor.
        """

        def one(item):
            try:
                if item is None:
                    raise ImageDecodeError("no image bytes")
                return self.to_uint8(item), None
            except ImageDecodeError as exc:
                return None, str(exc)

        if num_threads > 1 and len(images) > 1:
            with ThreadPoolExecutor(num_threads) as pool:
                results = list(pool.map(one, images))
        else:
            results = [one(item) for item in images]
        tensors = [t for t, _ in results if t is not None]
        size = self.cfg.size
        stacked = torch.stack(tensors) if tensors else torch.empty((0, 3, size, size), dtype=torch.uint8)
        return stacked, [err for _, err in results]
