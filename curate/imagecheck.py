"""Inspect-and-filter stage: header-only size checks, decode budget, strict validation, mode policy, sha256, phash."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile

from core.config import check_range
from core.images import SWAPS_AXES, TRANSPOSE, cmyk_to_rgb, has_alpha, orientation, to_8bit
from core.schema import Status
from curate.downloader import sniff_mime

_EXT = {"image/jpeg": "jpg", "image/png": "png"}
# PIL's own hard limit (it raises DecompressionBombError above twice MAX_IMAGE_PIXELS while opening).
PIL_PIXEL_LIMIT = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 178_956_970


@dataclasses.dataclass
class ImageCheckConfig:
    min_side: int = 1024  # short side (after EXIF orientation) below this -> too_small, decided from the header
    min_side_by_source: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"coco": 256})  # source (case-insensitive) -> its own short-side floor
    max_pixels: int = 178_956_970  # width*height ceiling (decompression-bomb guard; PIL's own hard limit)
    max_decode_mb: float = 400.0  # MiB the decode may take (decoded_bytes, from the header) -> too_large above
    max_aspect_ratio: float = 4.0  # long side / short side above this -> bad_aspect
    animated: Literal["reject", "first_frame"] = "reject"  # animated GIF/WebP/APNG: status unsupported, or keep frame 0
    reencode_quality: int = 95  # JPEG quality when an image must be re-encoded (CMYK, WebP, TIFF, BMP, ...)
    cmyk_to_srgb: bool = True  # convert CMYK JPEGs to sRGB through their ICC profile (else: naive conversion)
    phash_reducing_gap: float = 4.0  # phash input: box-reduce to within this factor of 32 px, then Lanczos

    def __post_init__(self) -> None:
        for name in ("min_side", "max_pixels", "max_aspect_ratio"):
            check_range(self, name, low=1)
        if not self.max_decode_mb > 0:
            raise ValueError(f"max_decode_mb must be > 0, got {self.max_decode_mb}")
        bad = {k: v for k, v in self.min_side_by_source.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"min_side_by_source values must be integers >= 1, got {bad}")
        self.min_side_by_source = {str(k).lower(): v for k, v in self.min_side_by_source.items()}

    def peak_memory_bytes(self) -> int:
        """Memory one image check may take at its peak, beside the bytes of its batch: 4 x ``max_decode_mb``.

        Pillow's WebP decoder holds four buffers of the raster's size at once (two frame canvases, the frame's
        bytes and the image); every other path stays within two (the estimate and one converted copy). This is
        what a worker running the check should reserve per concurrent check.
        """
        return int(4 * self.max_decode_mb * 2**20)

    def min_side_for(self, source: str | None) -> int:
        """Short-side floor for a row from ``source`` (its own entry in ``min_side_by_source``, else ``min_side``)."""
        if source is None:
            return self.min_side
        return self.min_side_by_source.get(str(source).lower(), self.min_side)


class _Reject(Exception):
    def __init__(self, status: Status, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR (PIL does not expose it; 16-bit RGB opens as 8-bit RGB)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


# Bytes per pixel of Pillow's own raster for each mode it decodes to (3-band modes are stored in 4 bytes).
_RASTER_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decoded_bytes(img: Image.Image, data: bytes) -> int:
    """Memory the decode of ``img`` takes in this check, from its header alone (no pixel is decoded).

    - Pillow's raster for the mode it decodes to, width x height x bytes per pixel: 1 for bilevel, gray and
      palette, 2 for 16-bit gray, 4 for everything else (RGB is stored as RGBX); WebP counts 4 (its decoder
      always produces four channels); a 16-bit RGB(A) PNG decodes straight to 8 bits. 16-bit gray adds the 8-bit
      copy the mode policy makes (1 byte per pixel).
    - JPEG: plain RGB/gray files are validated and hashed from a DCT-scaled decode, whose output is small; a
      progressive file holds every DCT coefficient of the image meanwhile (2 bytes per sample, so 6 bytes per
      pixel at 4:4:4, 3 at 4:2:0); a CMYK file is decoded at full size as well (4 bytes per pixel).
    """
    w, h = img.size
    if img.format == "JPEG":
        frame = _jpeg_frame(data)
        coefficients = frame.coefficient_bytes() if frame and frame.progressive else 0
        scaled = _ceil_div(w, 8) * _ceil_div(h, 8) * 4
        return coefficients + (w * h * 4 if img.mode not in ("RGB", "L") else scaled)
    per_pixel = 4 if img.format == "WEBP" else _RASTER_BYTES.get(img.mode, 4)
    if img.mode.startswith("I;16"):
        per_pixel += 1
    return w * h * per_pixel


# Huffman-coded JPEG frames (baseline, extended sequential, progressive): every 8x8 block of every component
# costs at least one bit of scan data (its DC code), which bounds the size a file can honestly declare.
_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)
_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


@dataclasses.dataclass
class _JpegFrame:
    marker: int  # the SOFn marker byte
    width: int
    height: int
    sampling: list[tuple[int, int]]  # (horizontal, vertical) sampling factor per component
    scan_bytes: int | None = None  # bytes from the first scan's data to the end of the file

    @property
    def progressive(self) -> bool:
        return self.marker in (0xC2, 0xC6, 0xCA, 0xCE)

    def blocks(self) -> list[int]:
        """8x8 blocks of each component: its size, scaled by its sampling factors, in blocks rounded up."""
        hmax = max(hs for hs, _ in self.sampling) or 1
        vmax = max(vs for _, vs in self.sampling) or 1
        return [_ceil_div(_ceil_div(self.width * hs, hmax), 8) * _ceil_div(_ceil_div(self.height * vs, vmax), 8)
                for hs, vs in self.sampling]

    def coefficient_bytes(self) -> int:
        return sum(self.blocks()) * 64 * 2  # libjpeg's whole-image coefficient buffer (JCOEF is 16 bits)


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The frame header of a JPEG and where its first scan starts, by walking the markers; None if unreadable."""
    i, n, frame = 2, len(data), None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # not a marker where one must be: the decoder will say what is wrong
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1  # fill byte
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker == 0xD9:
            return frame
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if (marker in _SOF_HUFFMAN or marker in _SOF_OTHER) and i + 10 <= n:
            ncomp = data[i + 9]
            sampling = [(data[i + 11 + 3 * c] >> 4, data[i + 11 + 3 * c] & 15) for c in range(ncomp)
                        if i + 12 + 3 * c <= n]
            frame = _JpegFrame(marker, int.from_bytes(data[i + 7:i + 9], "big"),
                               int.from_bytes(data[i + 5:i + 7], "big"), sampling)
        if marker == 0xDA:
            if frame is not None:
                frame.scan_bytes = n - (i + 2 + length)
            return frame
        i += 2 + length
    return frame


def jpeg_scan_shortfall(data: bytes) -> str | None:
    """Why a JPEG's declared size cannot be backed by its scan data (a message), or None when it can.

    A Huffman-coded frame of W x H needs at least one bit of scan data per 8x8 block of its largest component,
    so a 17 KB file claiming 13376 x 13376 (2.8 million blocks) is refused before any decode. Arithmetic-coded,
    lossless and hierarchical frames have no such bound and pass.
    """
    frame = _jpeg_frame(data)
    if frame is None or frame.marker not in _SOF_HUFFMAN or frame.scan_bytes is None or not frame.sampling \
            or frame.height == 0:  # height 0: defined later by a DNL marker
        return None
    blocks = max(frame.blocks())
    if blocks > 8 * frame.scan_bytes:
        return (f"declares {frame.width}x{frame.height} ({blocks} blocks of 8x8) but holds "
                f"{max(frame.scan_bytes, 0)} bytes of scan data (at least {_ceil_div(blocks, 8)} needed)")
    return None


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_pixels(data: bytes, mode: str, min_side: int) -> np.ndarray:
    """Strict libjpeg-turbo decode (any corrupt-data warning raises), scaled down by the DCT to >= ``min_side``.

    Scaling in the DCT still entropy-decodes every block, so truncation and damage anywhere are found, at a
    fraction of the cost of a full-size decode.
    """
    import simplejpeg

    colorspace = {"L": "GRAY", "CMYK": "CMYK"}.get(mode, "RGB")
    arr = simplejpeg.decode_jpeg(data, colorspace=colorspace, min_height=min_side, min_width=min_side, strict=True)
    return arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


# The 8 lowest-frequency rows of the unnormalised DCT-II on 32 samples (``scipy.fftpack.dct``'s default), so a
# phash is two small matrix products: no FFT library to import in every worker.
_PHASH_DCT = 2 * np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(32) + 1) / 64)


def phash_hex(img: Image.Image, orient: int = 1, reducing_gap: float = 4.0) -> str:
    """64-bit perceptual hash of the upright image as 16 hex digits: ``imagehash.phash`` (hash_size 8).

    The image is first shrunk to 32x32 with a cheap integer box reduction followed by Lanczos (``reducing_gap``),
    which costs a few milliseconds instead of a full-resolution Lanczos pass; phash only looks at 32x32 anyway.
    The 8x8 low frequencies are compared with their median after rounding to 1e-6, so coefficients that are
    zero by symmetry (flat or mirrored images) are exactly zero, as imagehash's FFT gives them.
    """
    if img.mode not in ("L", "RGB", "RGBA", "LA"):
        img = img.convert("RGBA" if has_alpha(img) else "L")  # resize needs a plain mode; phash uses luminance
    small = img.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=reducing_gap)
    if orient in TRANSPOSE:
        small = small.transpose(TRANSPOSE[orient])
    pixels = np.asarray(small.convert("L"), dtype=np.float64)
    low = np.round(_PHASH_DCT @ pixels @ _PHASH_DCT.T, 6)
    ranked = np.sort(low, axis=None)  # the median of 64 values, without np.median's per-call overhead
    return np.packbits(low > (ranked[31] + ranked[32]) / 2).tobytes().hex()


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
            sources = batch.get("source")
            for i in range(n):
                if cols["status"][i] != Status.OK.value:
                    continue
                row = self.check(batch["image"][i], None if sources is None else sources[i])
                for c, v in row.items():
                    cols[c][i] = v
        out.update(cols)
        return out

    def check(self, data: bytes | None, source: str | None = None) -> dict[str, Any]:
        """Check one image; returns the output columns for the row (``status`` ok or the reason it failed).

        ``source`` picks the short-side floor (``min_side_by_source``).
        """
        row: dict[str, Any] = {"status": Status.OK.value, "error": None}
        if not data:
            return {**row, "status": Status.NOT_IMAGE.value, "error": "no image bytes", "image": None}
        data = bytes(data)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            row.update(self._inspect(data, self.cfg.min_side_for(source)))
        except _Reject as rej:
            sizes = getattr(rej, "sizes", {})
            row.update(original_width=sizes.get("original_width"), original_height=sizes.get("original_height"))
            row.update(status=rej.status.value, error=rej.error, image=None)
        return row

    def _inspect(self, data: bytes, min_side: int) -> dict[str, Any]:
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
            return self._inspect_open(img, data, min_side)

    def _inspect_open(self, img: Image.Image, data: bytes, min_side: int) -> dict[str, Any]:
        cfg = self.cfg
        orient = orientation(img)
        w, h = img.size
        ow, oh = (h, w) if orient in SWAPS_AXES else (w, h)
        sizes = {"original_width": ow, "original_height": oh, "width": ow, "height": oh}
        short, long_ = min(ow, oh), max(ow, oh)
        if short < min_side:
            raise _RejectSized(Status.TOO_SMALL, f"short side {short} < min_side {min_side}", sizes)
        if ow * oh > cfg.max_pixels:
            raise _RejectSized(Status.TOO_LARGE, f"{ow}x{oh} = {ow * oh} pixels > max_pixels {cfg.max_pixels}",
                               sizes)
        fmt = img.format
        if fmt == "JPEG":
            shortfall = jpeg_scan_shortfall(data)
            if shortfall:
                raise _RejectSized(Status.CORRUPT, f"JPEG size field disagrees with the scan data: {shortfall}", sizes)
        need = decoded_bytes(img, data)
        if need > cfg.max_decode_mb * 2**20:
            raise _RejectSized(Status.TOO_LARGE, f"decoding {ow}x{oh} {img.mode} needs {need / 2**20:.0f} MiB > "
                               f"max_decode_mb {cfg.max_decode_mb:g}", sizes)
        if long_ / short > cfg.max_aspect_ratio:
            raise _RejectSized(Status.BAD_ASPECT, f"aspect ratio {long_ / short:.2f} > {cfg.max_aspect_ratio:g}",
                               sizes)
        try:  # GIF/APNG find out by seeking to frame 1, which damaged files fail in many ways
            animated = bool(getattr(img, "is_animated", False)) and getattr(img, "n_frames", 1) > 1
        except Exception as exc:  # noqa: BLE001
            raise _RejectSized(Status.CORRUPT, f"frame scan failed: {type(exc).__name__}: {exc}"[:200], sizes) from None
        if animated and cfg.animated == "reject":
            raise _RejectSized(Status.UNSUPPORTED, f"animated {fmt} ({img.n_frames} frames)", sizes)
        if fmt == "JPEG":
            # libjpeg recovers from damage silently (Pillow keeps the grey remainder of a cut file), so the
            # scan data is validated by a strict decode; plain RGB/gray JPEGs are stored as they are and hashed
            # from that decode, without a second, full-size one.
            try:
                pixels = _jpeg_pixels(data, img.mode, int(32 * cfg.phash_reducing_gap))
            except Exception as exc:  # noqa: BLE001 - simplejpeg raises ValueError/OSError/RuntimeError
                raise _RejectSized(Status.CORRUPT, f"decode failed: {type(exc).__name__}: {exc}"[:200],
                                   sizes) from None
            if img.mode in ("RGB", "L"):
                return {**sizes, "image": data, "mime": "image/jpeg", "ext": "jpg",
                        "phash": phash_hex(Image.fromarray(pixels), orient, cfg.phash_reducing_gap)}
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
            out_img = cmyk_to_rgb(img, cfg.cmyk_to_srgb)
            out_bytes = _encode(out_img, "JPEG", cfg.reencode_quality, img.info.get("exif"))
        elif fmt == "PNG" and png_bit_depth(data) == 16 and not animated:
            out_img = to_8bit(img)
            if orient in TRANSPOSE:
                out_img, stored_orient = out_img.transpose(TRANSPOSE[orient]), 1
            out_bytes = _encode(out_img, "PNG", cfg.reencode_quality)
        elif fmt in ("JPEG", "PNG") and not animated:
            if img.mode not in ("RGB", "L", "RGBA", "LA", "P", "1", "I", "I;16"):
                out_img = img.convert("RGBA" if has_alpha(img) else "RGB")
                out_bytes = _encode(out_img, "PNG" if fmt == "PNG" else "JPEG", cfg.reencode_quality)
        else:
            # WebP, TIFF, BMP, GIF and first frames of animations: upright pixels in a format every reader has.
            frame = img
            if fmt == "GIF" or (img.mode == "P" and not animated):
                target = "PNG"  # palette graphics stay lossless
                if frame.mode not in ("P", "L", "RGB", "RGBA"):
                    frame = frame.convert("RGBA")
            elif has_alpha(frame):
                target, frame = "PNG", frame.convert("RGBA")
            else:
                target, frame = "JPEG", frame.convert("RGB") if frame.mode not in ("RGB", "L") else frame
            if orient in TRANSPOSE:
                frame = frame.transpose(TRANSPOSE[orient])  # re-encoded files carry no EXIF, so apply it
            out_img, stored_orient = frame, 1
            out_bytes = _encode(frame, target, cfg.reencode_quality)
        out_mime = sniff_mime(out_bytes)
        sizes["width"], sizes["height"] = (out_img.height, out_img.width) if stored_orient in SWAPS_AXES \
            else out_img.size
        return {**sizes, "image": out_bytes, "mime": out_mime, "ext": _EXT[out_mime],
                "phash": phash_hex(out_img, stored_orient, cfg.phash_reducing_gap)}


class _RejectSized(_Reject):
    """A rejection that still records the header sizes (useful in the metadata: why was it too small?)."""

    def __init__(self, status: Status, error: str, sizes: dict[str, int]):
        super().__init__(status, error)
        self.sizes = sizes
