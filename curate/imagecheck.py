"""Inspect-and-filter stage: header-only size checks, bomb guard, full validation, mode policy, sha256 and phash."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import warnings
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile

from curate.downloader import sniff_mime
from curate.schema import Status

# Orientation values 5-8 rotate by 90 degrees, so the upright image has width and height swapped.
_SWAPS_AXES = (5, 6, 7, 8)
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_EXT = {"image/jpeg": "jpg", "image/png": "png"}
# PIL's own hard limit (it raises DecompressionBombError above twice MAX_IMAGE_PIXELS while opening).
PIL_PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970


@dataclasses.dataclass
class ImageCheckConfig:
    min_side: int = 1024  # short side (after EXIF orientation) below this -> too_small, decided from the header
    max_pixels: int = 178_956_970  # width*height ceiling (decompression-bomb guard; PIL's own hard limit)
    max_decode_mb: int = 1024  # decoded-size budget per image in MiB; also the memory each check declares to Ray
    max_aspect_ratio: float = 4.0  # long side / short side above this -> bad_aspect
    animated: Literal["reject", "first_frame"] = "reject"  # animated GIF/WebP/APNG: status unsupported, or keep frame 0
    reencode_quality: int = 95  # JPEG quality when an image must be re-encoded (CMYK, WebP, TIFF, BMP, ...)
    cmyk_to_srgb: bool = True  # convert CMYK JPEGs to sRGB through their ICC profile (else: naive conversion)
    phash_reducing_gap: float = 4.0  # phash input: box-reduce to within this factor of 32 px, then Lanczos

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_pixels < 1 or self.max_aspect_ratio < 1:
            raise ValueError("min_side and max_pixels must be >= 1 and max_aspect_ratio >= 1")


class _Reject(Exception):
    def __init__(self, status: Status, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8) read from the header only (never triggers a pixel decode)."""
    try:
        if img.format == "TIFF":
            value = img.tag_v2.get(0x0112, 1)
        else:
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            value = exif.get(0x0112, 1)
        value = int(value)
    except Exception:  # noqa: BLE001 - a damaged EXIF block means "no orientation", not a broken image
        return 1
    return value if 1 <= value <= 8 else 1


def png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR (PIL does not expose it; 16-bit RGB opens as 8-bit RGB)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


def phash_hex(img: Image.Image, orient: int = 1, reducing_gap: float = 4.0) -> str:
    """64-bit perceptual hash (imagehash.phash) as 16 hex digits, of the upright image.

    The image is first shrunk to 32x32 with a cheap integer box reduction followed by Lanczos (``reducing_gap``),
    which costs a few milliseconds instead of a full-resolution Lanczos pass; phash only looks at 32x32 anyway.
    """
    import imagehash

    if img.mode not in ("L", "RGB", "RGBA", "LA"):
        img = img.convert("RGBA" if _has_alpha(img) else "L")  # resize needs a plain mode; phash uses luminance
    small = img.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    if orient in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orient])
    return str(imagehash.phash(small))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def _encode(img: Image.Image, fmt: str, quality: int, exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        kwargs: dict[str, Any] = {"quality": quality}
        if exif:
            kwargs["exif"] = exif  # keeps the orientation tag, so stored width/height stay consistent
        img.save(buf, "JPEG", **kwargs)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _cmyk_to_rgb(img: Image.Image, to_srgb: bool) -> Image.Image:
    icc = img.info.get("icc_profile")
    if to_srgb and icc:
        # a broken or unusable profile falls back to the plain conversion below
        with contextlib.suppress(Exception):
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    return img.convert("RGB")


class ImageChecker:
    """Callable batch stage over downloaded bytes (``image``). See docs/curate-stages.md for the mode policy.

    Adds ``original_width``, ``original_height``, ``width``, ``height``, ``mime``, ``ext``, ``sha256``, ``phash``
    and may replace ``image`` with re-encoded bytes. Rows not ``ok`` on arrival pass through untouched.
    """

    OUTPUT_COLUMNS = ("image", "status", "error", "original_width", "original_height", "width", "height", "mime",
                      "ext", "sha256", "phash")

    def __init__(self, cfg: ImageCheckConfig | None = None):
        self.cfg = cfg or ImageCheckConfig()
        if self.cfg.max_pixels > PIL_PIXEL_LIMIT:
            # PIL refuses these while opening; raising its limit is process-wide, so the caller must choose to.
            raise ValueError(f"max_pixels {self.cfg.max_pixels} exceeds PIL's limit {PIL_PIXEL_LIMIT}; "
                             f"raise PIL.Image.MAX_IMAGE_PIXELS first if you really want that")
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated images would pass validation")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["image"])
        status_in = batch.get("status")
        out = dict(batch)
        cols = {c: (np.array(batch[c], dtype=object, copy=True) if c in batch else np.full(n, None, dtype=object))
                for c in self.OUTPUT_COLUMNS}
        if status_in is None:
            cols["status"][:] = Status.OK.value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own ceiling decides
            for i in range(n):
                if cols["status"][i] != Status.OK.value:
                    continue
                row = self.check(batch["image"][i])
                for c, v in row.items():
                    cols[c][i] = v
        out.update(cols)
        return out

    def check(self, data: bytes | None) -> dict[str, Any]:
        """Check one image; returns the output columns for the row (``status`` ok or the reason it failed)."""
        row: dict[str, Any] = {"status": Status.OK.value, "error": None}
        if not data:
            return {**row, "status": Status.NOT_IMAGE.value, "error": "no image bytes", "image": None}
        data = bytes(data)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            row.update(self._inspect(data))
        except _Reject as rej:
            sizes = getattr(rej, "sizes", {})
            row.update(original_width=sizes.get("original_width"), original_height=sizes.get("original_height"))
            row.update(status=rej.status.value, error=rej.error, image=None)
        return row

    def _inspect(self, data: bytes) -> dict[str, Any]:
        mime = sniff_mime(data)
        try:
            img = Image.open(io.BytesIO(data))  # lazy: parses the header only
        except Image.DecompressionBombError as exc:
            raise _Reject(Status.TOO_LARGE, f"decompression bomb guard: {exc}") from None
        except Image.UnidentifiedImageError:
            if mime in ("image/avif", "image/heic"):
                raise _Reject(Status.UNSUPPORTED, f"{mime} is not supported by this Pillow build") from None
            raise _Reject(Status.NOT_IMAGE, "not a decodable image" + (f" ({mime})" if mime else "")) from None
        except Exception as exc:  # noqa: BLE001 - damaged headers raise all sorts (SyntaxError, struct.error...)
            raise _Reject(Status.CORRUPT, f"unreadable header: {type(exc).__name__}: {exc}"[:200]) from None
        with img:
            return self._inspect_open(img, data, mime)

    def _inspect_open(self, img: Image.Image, data: bytes, mime: str | None) -> dict[str, Any]:
        cfg = self.cfg
        orient = orientation(img)
        w, h = img.size
        ow, oh = (h, w) if orient in _SWAPS_AXES else (w, h)
        sizes = {"original_width": ow, "original_height": oh, "width": ow, "height": oh}
        short, long_ = min(ow, oh), max(ow, oh)
        if short < cfg.min_side:
            raise _RejectSized(Status.TOO_SMALL, f"short side {short} < min_side {cfg.min_side}", sizes)
        if ow * oh > cfg.max_pixels:
            raise _RejectSized(Status.TOO_LARGE, f"{ow}x{oh} = {ow * oh} pixels > max_pixels {cfg.max_pixels}",
                               sizes)
        if long_ / short > cfg.max_aspect_ratio:
            raise _RejectSized(Status.BAD_ASPECT, f"aspect ratio {long_ / short:.2f} > {cfg.max_aspect_ratio:g}",
                               sizes)
        fmt = img.format
        try:  # GIF/APNG find out by seeking to frame 1, which damaged files fail in many ways
            animated = bool(getattr(img, "is_animated", False)) and getattr(img, "n_frames", 1) > 1
        except Exception as exc:  # noqa: BLE001
            raise _RejectSized(Status.CORRUPT, f"frame scan failed: {type(exc).__name__}: {exc}"[:200], sizes) from None
        if animated and cfg.animated == "reject":
            raise _RejectSized(Status.UNSUPPORTED, f"animated {fmt} ({img.n_frames} frames)", sizes)
        try:
            img.load()  # full decode: truncated or damaged data fails here
        except Image.DecompressionBombError as exc:
            raise _RejectSized(Status.TOO_LARGE, f"decompression bomb guard: {exc}", sizes) from None
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError/SyntaxError/ValueError for damaged data
            raise _RejectSized(Status.CORRUPT, f"decode failed: {type(exc).__name__}: {exc}"[:200], sizes) from None

        try:
            return self._store(img, data, fmt, orient, animated, sizes)
        except (OSError, ValueError, SyntaxError, IndexError, EOFError) as exc:  # pixel data PIL cannot convert
            raise _RejectSized(Status.CORRUPT, f"conversion failed: {type(exc).__name__}: {exc}"[:200], sizes) from None

    def _store(self, img: Image.Image, data: bytes, fmt: str, orient: int, animated: bool,
               sizes: dict[str, int]) -> dict[str, Any]:
        """Apply the mode policy to a decoded image; returns the stored bytes, type, sizes and phash."""
        cfg = self.cfg
        out_bytes, out_img, stored_orient = data, img, orient
        if fmt == "JPEG" and img.mode == "CMYK":
            out_img = _cmyk_to_rgb(img, cfg.cmyk_to_srgb)
            out_bytes = _encode(out_img, "JPEG", cfg.reencode_quality, img.info.get("exif"))
        elif fmt == "PNG" and png_bit_depth(data) == 16 and not animated:
            out_img = _to_8bit(img)
            if orient in _TRANSPOSE:
                out_img, stored_orient = out_img.transpose(_TRANSPOSE[orient]), 1
            out_bytes = _encode(out_img, "PNG", cfg.reencode_quality)
        elif fmt in ("JPEG", "PNG") and not animated:
            if img.mode not in ("RGB", "L", "RGBA", "LA", "P", "1", "I", "I;16"):
                out_img = img.convert("RGBA" if _has_alpha(img) else "RGB")
                out_bytes = _encode(out_img, "PNG" if fmt == "PNG" else "JPEG", cfg.reencode_quality)
        else:
            # WebP, TIFF, BMP, GIF and first frames of animations: upright pixels in a format every reader has.
            frame = img
            if fmt == "GIF" or (img.mode == "P" and not animated):
                target = "PNG"  # palette graphics stay lossless
                if frame.mode not in ("P", "L", "RGB", "RGBA"):
                    frame = frame.convert("RGBA")
            elif _has_alpha(frame):
                target, frame = "PNG", frame.convert("RGBA")
            else:
                target, frame = "JPEG", frame.convert("RGB") if frame.mode not in ("RGB", "L") else frame
            if orient in _TRANSPOSE:
                frame = frame.transpose(_TRANSPOSE[orient])  # re-encoded files carry no EXIF, so apply it
            out_img, stored_orient = frame, 1
            out_bytes = _encode(frame, target, cfg.reencode_quality)
        out_mime = sniff_mime(out_bytes)
        sizes["width"], sizes["height"] = (out_img.height, out_img.width) if stored_orient in _SWAPS_AXES \
            else out_img.size
        return {**sizes, "image": out_bytes, "mime": out_mime, "ext": _EXT[out_mime],
                "phash": phash_hex(out_img, stored_orient, cfg.phash_reducing_gap)}


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit PNG pixels to 8 bits by keeping the high byte (PIL's own I;16 -> L conversion clips instead)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img)
        return Image.fromarray((arr.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return img.convert("RGBA" if _has_alpha(img) else "RGB") if img.mode not in ("RGB", "RGBA", "L", "LA") else img


class _RejectSized(_Reject):
    """A rejection that still records the header sizes (useful in the metadata: why was it too small?)."""

    def __init__(self, status: Status, error: str, sizes: dict[str, int]):
        super().__init__(status, error)
        self.sizes = sizes
