"""Inspect-and-filter stage: header-first rejections, bomb guard, validation, mode policy, hashes."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import imagehash
import numpy as np
import pytest
from http_faults import (
    exif_rotated_jpeg,
    jpeg_cut,
    jpeg_middle_zeroed,
    jpeg_sof_patched,
    png16_gray_blank,
    sample_images,
    webp_lossless_blank,
)
from PIL import Image, ImageFile

from core import synthetic
from curate.downloader import DownloadConfig, Downloader
from curate.imagecheck import ImageCheckConfig, ImageChecker

SMALL = ImageCheckConfig(min_side=64)


@pytest.fixture(scope="module")
def images():
    return {name: body for name, (body, _) in sample_images(96).items()}


def check(data, cfg=SMALL) -> dict:
    out = ImageChecker(cfg)({"image": np.array([data], dtype=object)})
    return {c: out[c][0] for c in out}


def reopen(row) -> Image.Image:
    img = Image.open(io.BytesIO(row["image"]))
    img.load()
    return img


@pytest.fixture
def count_loads(monkeypatch):
    """Count full pixel decodes (ImageFile.load calls that actually decode)."""
    calls = []
    real = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:
            calls.append(self.format)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return calls


EXPECTED = {
    "ok.jpg": ("ok", "jpg"),
    "ok.png": ("ok", "png"),
    "gray.jpg": ("ok", "jpg"),
    "cmyk.jpg": ("ok", "jpg"),
    "png16.png": ("ok", "png"),
    "png16-rgb.png": ("ok", "png"),
    "palette.png": ("ok", "png"),
    "alpha.png": ("ok", "png"),
    "exif-rotated.jpg": ("ok", "jpg"),
    "animated.gif": ("unsupported", None),
    "animated.webp": ("unsupported", None),
    "animated.png": ("unsupported", None),
    "static.gif": ("ok", "png"),
    "image.webp": ("ok", "jpg"),
    "alpha.webp": ("ok", "png"),
    "image.tiff": ("ok", "jpg"),
    "image.bmp": ("ok", "jpg"),
    "tiny.jpg": ("too_small", None),
    "wide.jpg": ("bad_aspect", None),
    "bomb.png": ("too_large", None),
    "corrupt.jpg": ("corrupt", None),
}


def test_every_sample_image_gets_its_status(images):
    assert set(images) == set(EXPECTED)
    names = list(EXPECTED)
    out = ImageChecker(SMALL)({"image": np.array([images[n] for n in names], dtype=object)})
    for i, name in enumerate(names):
        status, ext = EXPECTED[name]
        assert out["status"][i] == status, (name, out["error"][i])
        assert out["sha256"][i] == hashlib.sha256(images[name]).hexdigest()
        if status == "ok":
            assert out["ext"][i] == ext and out["error"][i] is None
            assert out["mime"][i] == {"jpg": "image/jpeg", "png": "image/png"}[ext]
            assert len(out["phash"][i]) == 16 and int(out["phash"][i], 16) >= 0
            img = Image.open(io.BytesIO(out["image"][i]))
            assert img.format == {"jpg": "JPEG", "png": "PNG"}[ext]
        else:
            assert out["image"][i] is None and out["error"][i] and out["phash"][i] is None


def test_end_to_end_through_downloader(fault_server):
    routes = ["ok.jpg", "cmyk.jpg", "png16.png", "exif-rotated.jpg", "animated.gif", "image.webp", "bomb.png",
              "tiny.jpg", "corrupt.jpg", "html", "404"]
    dl = Downloader(DownloadConfig(allowed_networks=["127.0.0.0/8"], retries=0, max_bytes=10_000_000))
    batch = dl({"url": np.array([fault_server.url(r) for r in routes], dtype=object)})
    out = ImageChecker(SMALL)(batch)
    got = dict(zip(routes, out["status"], strict=True))
    assert got == {"ok.jpg": "ok", "cmyk.jpg": "ok", "png16.png": "ok", "exif-rotated.jpg": "ok",
                   "animated.gif": "unsupported", "image.webp": "ok", "bomb.png": "too_large", "tiny.jpg": "too_small",
                   "corrupt.jpg": "corrupt", "html": "not_image", "404": "download_error"}
    assert out["error"][routes.index("404")] == "HTTP 404"  # failed rows pass through untouched
    assert all(out["image"][i] is None for i, r in enumerate(routes) if got[r] != "ok")


def test_too_small_decided_from_header_without_decode(count_loads):
    big_declared = synthetic.encode(synthetic.photo_like(1000, 1200, seed=1), "JPEG")
    row = check(big_declared, ImageCheckConfig(min_side=1024))
    assert row["status"] == "too_small" and "1000" in row["error"]
    assert row["original_width"] == 1000 and row["original_height"] == 1200
    assert count_loads == []


def test_min_side_boundary():
    ok = synthetic.encode(synthetic.photo_like(1024, 1100, seed=2), "JPEG")
    small = synthetic.encode(synthetic.photo_like(1022, 1100, seed=2), "JPEG")
    assert check(ok, ImageCheckConfig())["status"] == "ok"
    assert check(small, ImageCheckConfig())["status"] == "too_small"


def test_pixel_ceiling_before_decode(count_loads, images):
    row = check(images["ok.jpg"], ImageCheckConfig(min_side=64, max_pixels=100 * 100))
    assert row["status"] == "too_large" and "max_pixels" in row["error"]
    assert check(images["bomb.png"])["status"] == "too_large"
    assert count_loads == []


def test_exif_orientation_swaps_sizes():
    stored_portrait = exif_rotated_jpeg(800, 1200, orientation=6)
    row = check(stored_portrait)
    assert (row["original_width"], row["original_height"]) == (1200, 800)
    assert (row["width"], row["height"]) == (1200, 800)
    assert row["image"] == stored_portrait  # original bytes kept, orientation tag included
    assert check(exif_rotated_jpeg(800, 1200, orientation=3))["original_width"] == 800
    # min_side applies to the upright image
    landscape = check(exif_rotated_jpeg(800, 1200, orientation=8), ImageCheckConfig(min_side=1000))
    assert landscape["status"] == "too_small" and landscape["original_width"] == 1200


def test_mode_policy(images):
    # CMYK JPEG -> RGB JPEG
    cmyk = check(images["cmyk.jpg"])
    assert reopen(cmyk).mode == "RGB" and cmyk["ext"] == "jpg"
    # same picture as ok.jpg: colours survive the conversion (an inverted/garbled CMYK decode would not match)
    assert imagehash.hex_to_hash(cmyk["phash"]) - imagehash.hex_to_hash(check(images["ok.jpg"])["phash"]) <= 4
    rgb = np.asarray(reopen(cmyk), dtype=np.int16)
    ref = np.asarray(reopen(check(images["ok.jpg"])), dtype=np.int16)
    assert np.abs(rgb - ref).mean() < 12
    # 16-bit PNG -> 8-bit PNG keeping the high byte
    png16 = check(images["png16.png"])
    img = reopen(png16)
    assert img.mode == "L" and png16["image"][24] == 8
    src = np.asarray(Image.open(io.BytesIO(images["png16.png"])))
    np.testing.assert_array_equal(np.asarray(img), (src.astype(np.uint32) >> 8).astype(np.uint8))
    rgb16 = check(images["png16-rgb.png"])
    assert rgb16["image"][24] == 8 and rgb16["image"][25] == 2  # 8-bit truecolour PNG now
    # IDAT data sits between the 41-byte signature+IHDR+IDAT header and the 16-byte CRC+IEND tail
    raw = np.frombuffer(zlib.decompress(images["png16-rgb.png"][41:-16]), np.uint8).reshape(96, -1)[:, 1:]
    high = raw.reshape(96, 128, 3, 2)[..., 0]  # big-endian samples: the first byte is the high byte
    np.testing.assert_array_equal(np.asarray(reopen(rgb16)), high)
    # palette, alpha and grayscale keep their original bytes
    for name in ("palette.png", "alpha.png", "gray.jpg", "ok.jpg", "ok.png"):
        assert check(images[name])["image"] == images[name], name
    # WebP with alpha -> PNG RGBA; static WebP/TIFF/BMP -> JPEG; static GIF -> PNG
    assert reopen(check(images["alpha.webp"])).mode == "RGBA"
    assert check(images["image.tiff"])["ext"] == "jpg" and check(images["image.bmp"])["ext"] == "jpg"
    assert check(images["static.gif"])["ext"] == "png"


def test_animated_first_frame_policy(images):
    cfg = ImageCheckConfig(min_side=64, animated="first_frame")
    for name in ("animated.gif", "animated.webp", "animated.png"):
        row = check(images[name], cfg)
        assert row["status"] == "ok", (name, row["error"])
        img = Image.open(io.BytesIO(row["image"]))
        assert not getattr(img, "is_animated", False)
        assert img.size == (128, 96)


def test_not_image_and_missing_bytes():
    assert check(b"<!DOCTYPE html><html></html>")["status"] == "not_image"
    assert check(None)["status"] == "not_image"
    assert check(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)["status"] in ("corrupt", "not_image")


def test_phash_is_stable_under_reencoding():
    img = synthetic.artwork_like(640, 480, seed=11)
    a = check(synthetic.encode(img, "JPEG", quality=95))["phash"]
    b = check(synthetic.encode(img.resize((576, 432)), "JPEG", quality=75))["phash"]
    c = check(synthetic.encode(synthetic.artwork_like(640, 480, seed=12), "JPEG"))["phash"]
    dist = (imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b), imagehash.hex_to_hash(a) - imagehash.hex_to_hash(c))
    assert dist[0] <= 4
    assert dist[1] >= 12


def test_phash_equals_imagehash():
    """phash_hex is imagehash.phash of the 32x32 shrink, natural, flat and mirrored images alike."""
    from curate.imagecheck import phash_hex

    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (32, 16), dtype=np.uint8)
    images = [synthetic.artwork_like(96, 64, seed=s) for s in range(6)]
    images += [synthetic.photo_like(80, 80, seed=s) for s in range(6)]
    images += [Image.new("L", (32, 32), v) for v in (0, 17, 255)]
    images += [Image.fromarray(np.concatenate([half, half[:, ::-1]], 1)),
               Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1)))]
    for img in images:
        small = img.resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=4.0)
        assert phash_hex(img) == str(imagehash.phash(small))


def test_non_ok_rows_untouched(images):
    batch = {"image": np.array([images["ok.jpg"], None], dtype=object),
             "status": np.array(["ok", "download_error"], dtype=object),
             "error": np.array([None, "HTTP 404"], dtype=object), "mime": np.array(["image/jpeg", None], dtype=object)}
    out = ImageChecker(SMALL)(batch)
    assert list(out["status"]) == ["ok", "download_error"]
    assert out["error"][1] == "HTTP 404" and out["sha256"][1] is None


def test_config_guards():
    with pytest.raises(ValueError):
        ImageChecker(ImageCheckConfig(max_pixels=10**12))
    with pytest.raises(ValueError):
        ImageCheckConfig(max_aspect_ratio=0.5)


def test_mutated_bytes_never_raise(images):
    """Random truncation and byte damage of every sample format: always a schema status, never an exception."""
    from core.schema import STATUSES

    rng = np.random.default_rng(0)
    mutated = []
    for name, body in images.items():
        if name == "bomb.png":
            continue
        for _ in range(6):
            b = bytearray(body)
            if rng.random() < 0.5:
                b = b[: int(rng.integers(1, len(b)))]
            else:
                for pos in rng.integers(0, len(b), size=int(rng.integers(1, 16))):
                    b[int(pos)] = int(rng.integers(0, 256))
            mutated.append(bytes(b))
    out = ImageChecker(ImageCheckConfig(min_side=16, animated="first_frame"))(
        {"image": np.array(mutated, dtype=object)})
    assert set(out["status"]) <= set(STATUSES)
    for status, image, ext in zip(out["status"], out["image"], out["ext"], strict=True):
        if status == "ok":
            Image.open(io.BytesIO(image)).load()  # whatever is kept decodes
            assert ext in ("jpg", "png")
        else:
            assert image is None


# -- decode budget and strict JPEG validation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile():
    """The damaged and oversized images, each next to a sound control of the same kind."""
    sound = synthetic.encode(synthetic.photo_like(768, 640, seed=21), "JPEG", quality=90)
    small = synthetic.encode(synthetic.photo_like(256, 256, seed=22), "JPEG", quality=75)
    return {
        "webp-16383x10900": webp_lossless_blank(16383, 10900),
        "png16-13376": png16_gray_blank(13376, 13376),
        "jpeg-cut-10": jpeg_cut(sound, 0.10),
        "jpeg-cut-50": jpeg_cut(sound, 0.50),
        "jpeg-middle-zeroed": jpeg_middle_zeroed(sound),
        "jpeg-sof-13376": jpeg_sof_patched(small, 13376, 13376),
        "control.jpg": sound,
        "control-small.jpg": small,
        "control.webp": webp_lossless_blank(700, 600),
        "control.png": png16_gray_blank(700, 600),
    }


HOSTILE_STATUS = {
    "webp-16383x10900": ("too_large", "max_decode_mb"),
    "png16-13376": ("too_large", "max_decode_mb"),
    "jpeg-cut-10": ("corrupt", "Corrupt JPEG data"),
    "jpeg-cut-50": ("corrupt", "Corrupt JPEG data"),
    "jpeg-middle-zeroed": ("corrupt", "Corrupt JPEG data"),
    "jpeg-sof-13376": ("corrupt", "size field disagrees with the scan data"),
    "control.jpg": ("ok", None),
    "control-small.jpg": ("ok", None),
    "control.webp": ("ok", None),
    "control.png": ("ok", None),
}


def test_hostile_images_get_their_status(hostile, count_loads):
    assert len(hostile["png16-13376"]) < 400_000 and len(hostile["jpeg-sof-13376"]) < 20_000  # as small as claimed
    for name, data in hostile.items():
        row = check(data, ImageCheckConfig(min_side=200))
        status, fragment = HOSTILE_STATUS[name]
        assert row["status"] == status, (name, row["error"])
        assert fragment is None or fragment in row["error"], (name, row["error"])
    # refused from the header: the oversized ones were never decoded; JPEGs are never decoded by Pillow
    assert sorted(count_loads) == ["PNG", "WEBP"]


def test_cut_jpeg_keeps_its_eoi_and_pillow_alone_would_keep_it(hostile):
    """Why the strict decode exists: Pillow silently fills the missing part of these files with grey."""
    for name in ("jpeg-cut-10", "jpeg-cut-50", "jpeg-middle-zeroed"):
        data = hostile[name]
        assert data.endswith(b"\xff\xd9")
        Image.open(io.BytesIO(data)).load()  # no error from Pillow


def test_hostile_images_stay_within_memory(hostile, tmp_path):
    """Peak memory of checking every hostile image, in a fresh process, above the same process after a control."""
    import os
    import pickle
    import subprocess
    import sys

    (tmp_path / "cases.pkl").write_bytes(pickle.dumps(hostile))
    script = (
        "import pickle, resource, sys, numpy as np\n"
        "from curate.imagecheck import ImageCheckConfig, ImageChecker\n"
        "cases = pickle.load(open(sys.argv[1], 'rb'))\n"
        "checker = ImageChecker(ImageCheckConfig(min_side=200))\n"
        "checker({'image': np.array([cases['control.jpg'], cases['control.png']], dtype=object)})\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = checker({'image': np.array(list(cases.values()), dtype=object)})\n"
        "print(list(out['status']), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cases.pkl")], capture_output=True,
                         text=True, timeout=120, env=env, check=True)
    statuses, grown_kb = res.stdout.strip().rsplit(" ", 1)
    assert statuses == str([HOSTILE_STATUS[n][0] for n in hostile])
    assert int(grown_kb) < 64 * 1024, f"peak memory grew by {int(grown_kb) // 1024} MiB"


def _png_header(width: int, height: int, depth: int, color_type: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def test_decode_budget_default_passes_8k_rgb():
    """Header-only: the default budget admits 8192 x 8192 RGB in every format and layout, 16-bit included."""
    from curate.imagecheck import decoded_bytes

    budget = ImageCheckConfig().max_decode_mb * 2**20
    photo = synthetic.photo_like(64, 64, seed=1)

    def jpeg8k(**kwargs) -> bytes:
        return jpeg_sof_patched(synthetic.encode(photo, "JPEG", **kwargs), 8192, 8192)

    sound_8k = {
        "jpeg baseline": jpeg8k(),
        "jpeg progressive 4:2:0": jpeg8k(progressive=True),
        "jpeg progressive 4:4:4": jpeg8k(progressive=True, subsampling=0),
        "jpeg cmyk": jpeg_sof_patched(synthetic.encode(photo.convert("CMYK"), "JPEG"), 8192, 8192),
        "png rgb": _png_header(8192, 8192, 8, 2),
        "png rgba 16-bit": _png_header(8192, 8192, 16, 6),
        "png gray 16-bit": _png_header(8192, 8192, 16, 0),
        "webp": webp_lossless_blank(8192, 8192),
    }
    needs = {}
    for name, data in sound_8k.items():
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (8192, 8192)
            needs[name] = decoded_bytes(img, data)
    assert all(v <= budget for v in needs.values()), needs
    # what the estimate counts (MiB): a DCT-scaled decode for plain JPEGs, the coefficient buffer of progressive
    # ones (2 bytes per sample; measured: 195 and 387 MiB over the process's base), rasters for the rest
    assert needs["jpeg baseline"] == 4 * 2**20  # 1/8 scale
    assert needs["jpeg progressive 4:2:0"] == (192 + 4) * 2**20 and needs["jpeg progressive 4:4:4"] == (384 + 4) * 2**20
    assert needs["png rgb"] == needs["png rgba 16-bit"] == needs["webp"] == needs["jpeg cmyk"] == 256 * 2**20
    assert needs["png gray 16-bit"] == 192 * 2**20  # 16-bit raster + its 8-bit copy
    over = {"webp 16383x10900": webp_lossless_blank(16383, 10900), "png gray 16-bit 13376^2": _png_header(
        13376, 13376, 16, 0), "jpeg cmyk progressive 8k": jpeg_sof_patched(synthetic.encode(
            photo.convert("CMYK"), "JPEG", progressive=True), 8192, 8192)}
    for name, data in over.items():
        with Image.open(io.BytesIO(data)) as img:
            assert decoded_bytes(img, data) > budget, name
    # the header-level refusal is configurable
    assert check(png16_gray_blank(300, 300), ImageCheckConfig(min_side=64, max_decode_mb=0.1))["status"] == "too_large"


def test_jpeg_scan_bound():
    from curate.imagecheck import jpeg_scan_shortfall

    small = synthetic.encode(synthetic.photo_like(256, 256, seed=22), "JPEG", quality=75)
    assert jpeg_scan_shortfall(small) is None
    assert jpeg_scan_shortfall(jpeg_sof_patched(small, 512, 512)) is None  # within the bound: the decoder decides
    assert "13376x13376" in jpeg_scan_shortfall(jpeg_sof_patched(small, 13376, 13376))
    progressive = synthetic.encode(synthetic.photo_like(256, 256, seed=22), "JPEG", progressive=True)
    assert jpeg_scan_shortfall(progressive) is None
    assert "blocks" in jpeg_scan_shortfall(jpeg_sof_patched(progressive, 13376, 13376))
    assert check(jpeg_sof_patched(small, 512, 512))["status"] == "corrupt"  # strict decode finds the mismatch


def test_min_side_per_source():
    coco_like = synthetic.encode(synthetic.photo_like(640, 480, seed=5), "JPEG")
    cfg = ImageCheckConfig()
    assert cfg.min_side_for("COCO") == 256 and cfg.min_side_for("flickr") == 1024 and cfg.min_side_for(None) == 1024
    out = ImageChecker(cfg)({"image": np.array([coco_like] * 3, dtype=object),
                            "source": np.array(["coco", "flickr", None], dtype=object)})
    assert list(out["status"]) == ["ok", "too_small", "too_small"]
    with pytest.raises(ValueError):
        ImageCheckConfig(min_side_by_source={"coco": 0})


def test_peak_memory_follows_the_budget():
    assert ImageCheckConfig().peak_memory_bytes() == 4 * 400 * 2**20
    assert ImageCheckConfig(max_decode_mb=100).peak_memory_bytes() == 400 * 2**20
    with pytest.raises(ValueError):
        ImageCheckConfig(max_decode_mb=0)
