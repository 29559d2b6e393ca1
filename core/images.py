"""Images: which files are images, the one colour rule, and one open-upright / to_rgb / thumbnail.

Every reader of pixels (the curation checks, the trainer's loader, the classifier, stylisation, reports and the
labeling app) applies the same rule, so an image has the same colours wherever it is looked at:

* EXIF orientation (tag 0x0112, read from the header) is applied: pixels come out upright.
* CMYK is converted through its embedded ICC profile to sRGB when it has one (else PIL's plain conversion).
* 16-bit greyscale keeps the high byte of each sample (PIL's own ``I;16 -> L`` clips every value above 255).
* Transparency (RGBA, LA, PA, a palette with a transparent index) is composited onto white.
* Every other mode is converted to 8-bit RGB.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

# File name endings listed as images (lower case). A file named so that does not decode is reported by the reader
# that opens it; a name not listed here is never treated as an image.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic")
# The same endings as WebDataset member extensions (``{key}.jpg``), in the same order of preference.
MEMBER_EXTENSIONS = tuple(e[1:] for e in IMAGE_EXTENSIONS)

# Transparency is composited onto this colour: the background a viewer shows behind a transparent image, and the
# colour the classifier's ALADIN branch was trained with. Dropping alpha instead would expose whatever colour the
# encoder left in fully transparent pixels (often black or noise), which no viewer ever shows.
BACKGROUND = (255, 255, 255)

ORIENTATION_TAG = 0x0112
# Orientation values 5-8 rotate by 90 degrees: the upright image has width and height swapped.
SWAPS_AXES = (5, 6, 7, 8)
# EXIF orientation -> the transpose that makes the image upright (as PIL.ImageOps.exif_transpose).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_name(name: str | os.PathLike) -> bool:
    """True when a file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.fspath(name).lower().endswith(IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------------------------ orientation
def orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8) read from the header only (never triggers a pixel decode); 1 when absent or damaged."""
    try:
        if img.format == "TIFF":
            value = img.tag_v2.get(ORIENTATION_TAG, 1)
        else:
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:  # noqa: BLE001 - a damaged EXIF block means "no orientation", not a broken image
        return 1
    return value if 1 <= value <= 8 else 1


def upright(img: Image.Image, orient: int) -> Image.Image:
    """``img`` with EXIF orientation ``orient`` applied."""
    return img.transpose(TRANSPOSE[orient]) if orient in TRANSPOSE else img


def upright_size(img: Image.Image, orient: int) -> tuple[int, int]:
    """``(width, height)`` of ``img`` once orientation ``orient`` is applied (from the header, no decode)."""
    w, h = img.size
    return (h, w) if orient in SWAPS_AXES else (w, h)


# ------------------------------------------------------------------------------------------------ colour rule
def has_alpha(img: Image.Image) -> bool:
    return img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def cmyk_to_rgb(img: Image.Image, to_srgb: bool = True) -> Image.Image:
    """CMYK to RGB through the embedded ICC profile when ``to_srgb`` and there is one; else PIL's conversion."""
    icc = img.info.get("icc_profile")
    if to_srgb and icc:
        # a broken or unusable profile falls back to the plain conversion below
        with contextlib.suppress(Exception):
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    return img.convert("RGB")


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit pixels to 8 bits by keeping the high byte; other modes to RGB(A), keeping L, LA, RGB and RGBA."""
    if img.mode in SIXTEEN_BIT_MODES:
        # in bands of rows: a whole-image uint32 copy would need 2-4x the decoded raster on top of it
        w, h = img.size
        out = np.empty((h, w), dtype=np.uint8)
        step = max(1, (1 << 22) // max(w, 1))
        for top in range(0, h, step):
            band = np.asarray(img.crop((0, top, w, min(h, top + step))))
            out[top:top + step] = (band.astype(np.uint32) >> 8).clip(0, 255)
        return Image.fromarray(out)
    return img.convert("RGBA" if has_alpha(img) else "RGB") if img.mode not in ("RGB", "RGBA", "L", "LA") else img


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image by the colour rule (module docstring); orientation is not touched here."""
    if img.mode == "RGB":
        return img
    if img.mode == "CMYK":
        return cmyk_to_rgb(img)
    if img.mode in SIXTEEN_BIT_MODES:
        img = to_8bit(img)
    if has_alpha(img):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


# ------------------------------------------------------------------------------------------------ open, thumbnail
def open_image(source: bytes | bytearray | memoryview | str | os.PathLike | BinaryIO,
               min_side: int | None = None) -> Image.Image:
    """Decode an image (bytes, a local path or a binary file) to upright 8-bit RGB by the colour rule.

    ``min_side``: the caller needs no more than this many pixels on each side, so a JPEG decodes at a reduced DCT
    scale (1/2, 1/4, 1/8) that still covers it; the result may be larger, never smaller than the image or than
    ``min_side``. Errors are PIL's (``OSError``/``ValueError``/``DecompressionBombError``): the caller names the
    file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    img = Image.open(source)
    out = None
    try:
        orient = orientation(img)
        if min_side and img.format == "JPEG":
            img.draft("CMYK" if img.mode == "CMYK" else "RGB", (min_side, min_side))
        img.load()
        out = upright(to_rgb(img), orient)
        return out
    finally:
        if out is not img:  # a converted copy was returned (or nothing): release the file now
            img.close()


def thumbnail(data: bytes, side: int, quality: int = 85) -> bytes:
    """JPEG bytes of an upright RGB rendition whose long side is at most ``side`` (never enlarged).

    Raises what :func:`open_image` raises for bytes that do not decode.
    """
    img = open_image(data, min_side=side)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
