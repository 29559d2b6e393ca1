"""Generated photo-like and artwork-like images for the demo corpus, tests and benchmarks.

Photo-like images are smooth: low-frequency colour fields with soft blobs, a little sensor noise and
natural-looking gradients. Artwork-like images are stylised: a few flat, posterized colour regions with hard
edges and brush strokes. The two are separable by a small model, which is what the classifier tests and the
demo classifier rely on; they are not meant to look like real photographs or paintings.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTO = 0
ARTWORK = 1


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def photo_like(width: int, height: int, seed: int | np.random.Generator = 0, noise: float = 6.0) -> Image.Image:
    """A smooth, photo-like RGB image: upsampled low-frequency field, soft highlights, sensor noise."""
    rng = _rng(seed)
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    base = rng.uniform(30, 225, size=(gh, gw, 3)).astype(np.float32)
    # a shared luminance trend makes the colours correlate like real scenes (sky above ground, etc.)
    trend = np.linspace(rng.uniform(-40, 40), rng.uniform(-40, 40), gh, dtype=np.float32)[:, None, None]
    base = np.clip(base * 0.6 + base.mean(axis=(0, 1), keepdims=True) * 0.4 + trend, 0, 255)
    img = Image.fromarray(base.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(2, min(width, height) // 40)))
    arr = np.asarray(img, dtype=np.float32)
    if noise > 0:
        # low-resolution noise upsampled keeps generation fast at 1024+ px while staying incompressible enough
        small = rng.normal(0, noise, size=(-(-height // 2), -(-width // 2), 3)).astype(np.float32)
        arr = arr + np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)[:height, :width]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def artwork_like(width: int, height: int, seed: int | np.random.Generator = 0) -> Image.Image:
    """A stylised, artwork-like RGB image: flat posterized regions, hard-edged shapes and thick strokes."""
    rng = _rng(seed)
    palette = [tuple(int(c) for c in rng.integers(0, 256, size=3)) for _ in range(int(rng.integers(3, 7)))]
    img = Image.new("RGB", (width, height), palette[0])
    draw = ImageDraw.Draw(img)
    scale = min(width, height)
    for _ in range(int(rng.integers(6, 14))):
        colour = palette[int(rng.integers(len(palette)))]
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(scale // 10, scale // 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
        else:
            pts = [(int(x0 + rng.integers(-r, r)), int(y0 + rng.integers(-r, r))) for _ in range(int(rng.integers(3, 6)))]
            draw.polygon(pts, fill=colour)
    for _ in range(int(rng.integers(8, 20))):
        colour = palette[int(rng.integers(len(palette)))]
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(pts, fill=colour, width=max(2, int(scale * rng.uniform(0.005, 0.03))))
    arr = np.asarray(img, dtype=np.int16)
    # a faint paper/canvas texture, so the bytes are not trivially compressible
    texture = rng.integers(-3, 4, size=(-(-height // 4), -(-width // 4), 1), dtype=np.int16)
    arr = arr + np.repeat(np.repeat(texture, 4, axis=0), 4, axis=1)[:height, :width]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_image(kind: int, width: int, height: int, seed: int | np.random.Generator = 0) -> Image.Image:
    """``kind`` is :data:`PHOTO` or :data:`ARTWORK`."""
    return artwork_like(width, height, seed) if kind == ARTWORK else photo_like(width, height, seed)


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    """Encode a PIL image to bytes (``quality=90`` by default for JPEG)."""
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        kwargs.setdefault("quality", 90)
        fmt = "JPEG"
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def labelled_batch(n: int, size: int = 64, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """``n`` small images alternating photo/artwork, with labels (1 = artwork/stylistic)."""
    rng = np.random.default_rng(seed)
    labels = np.array([i % 2 for i in range(n)], dtype=np.int64)
    rng.shuffle(labels)
    images = [make_image(int(k), size, size, rng) for k in labels]
    return images, labels
