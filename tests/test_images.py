"""core/images.py: one extension list, one colour rule, and every pixel reader applying it the same way."""

from __future__ import annotations

import ast
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.images import IMAGE_EXTENSIONS, MEMBER_EXTENSIONS, is_image_name, open_image, thumbnail, to_rgb

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
BLOCKS = RNG.integers(0, 255, (6, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)  # 64x48 colour blocks


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _rgba_with_hidden_colour() -> tuple[bytes, np.ndarray]:
    """Left half opaque blocks, right half fully transparent over red (the colour no viewer shows)."""
    rgba = np.dstack([BLOCKS, np.full(BLOCKS.shape[:2], 255, np.uint8)])
    rgba[:, 32:, :3] = (255, 0, 0)
    rgba[:, 32:, 3] = 0
    expected = BLOCKS.copy()
    expected[:, 32:] = 255
    return _png(Image.fromarray(rgba, "RGBA")), expected


def _rgb48_png() -> bytes:
    raw = b"".join(b"\x00" + (row.astype(">u2") * 257).tobytes() for row in BLOCKS)
    h, w = BLOCKS.shape[:2]

    def chunk(tag, payload):
        return len(payload).to_bytes(4, "big") + tag + payload + zlib.crc32(tag + payload).to_bytes(4, "big")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0]))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_colour_rule_alpha_on_white_16bit_high_byte_cmyk_palette():
    data, expected = _rgba_with_hidden_colour()
    assert np.array_equal(np.asarray(open_image(data)), expected)
    pal = Image.fromarray(BLOCKS).convert("P")
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [255, 255, 255]
    gray16 = Image.fromarray(np.full((4, 4), 0x80FF, np.uint16))  # PIL's own I;16 -> L would clip this to 255
    assert np.asarray(to_rgb(gray16))[0, 0].tolist() == [0x80] * 3
    assert np.array_equal(np.asarray(open_image(_rgb48_png())), BLOCKS)
    buf = io.BytesIO()
    Image.fromarray(BLOCKS).convert("CMYK").save(buf, "JPEG", quality=95)
    assert np.abs(np.asarray(open_image(buf.getvalue())).astype(float) - BLOCKS).mean() < 8


def test_open_image_applies_exif_orientation_and_thumbnail_is_upright_and_bounded():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; the reader turns it back to 64x48
    stored = Image.fromarray(BLOCKS).transpose(Image.Transpose.ROTATE_90)
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    img = open_image(buf.getvalue())
    assert img.size == (64, 48) and np.abs(np.asarray(img).astype(float) - BLOCKS).mean() < 8
    small = Image.open(io.BytesIO(thumbnail(buf.getvalue(), 32)))
    assert small.format == "JPEG" and small.size == (32, 24)
    with pytest.raises(OSError):
        open_image(b"not an image")


def test_every_pixel_reader_gives_the_same_colours():
    """The trainer's loader, the classifier, stylisation and the thumbnails all apply the one colour rule."""
    import torch

    from classifier.transforms import ImageTransform, PreprocessConfig
    from train.data.decode import CropSpec, decode_crops
    from train.inference import load_image

    for data in (_rgba_with_hidden_colour()[0], _rgb48_png()):
        ref = np.asarray(open_image(data))
        crop = decode_crops(data, [CropSpec(10_000, 0.0, 0.0, False)], 48)[0]  # top-left 48x48, full size
        assert np.array_equal(crop, ref[:48, :48])
        assert np.array_equal(np.asarray(ImageTransform(PreprocessConfig(size=48)).decode(data)), ref)
        assert torch.equal((load_image_bytes(load_image, data) * 255).round().byte()[0].permute(1, 2, 0),
                           torch.from_numpy(ref.copy()))


def load_image_bytes(load_image, data: bytes):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(data)
        return load_image(path)


def test_extension_list_and_member_names():
    assert is_image_name("A/B/photo.JPG") and is_image_name("x.avif") and not is_image_name("notes.txt")
    assert MEMBER_EXTENSIONS == tuple(e[1:] for e in IMAGE_EXTENSIONS)


def _image_extension_tuples(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len([n for n in names if n.lstrip(".").lower() in ("jpg", "jpeg", "png", "webp", "bmp", "tif")]) >= 3:
                yield node.lineno


def test_no_second_extension_list_outside_core_images():
    assert list(_image_extension_tuples(ast.parse('EXTS = (".jpg", ".png", ".webp")'))) == [1]  # the check bites
    found = []
    for package in ("core", "curate", "classifier", "train", "pipelines", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "core" / "images.py":
                continue
            found += [f"{path.relative_to(ROOT)}:{line}" for line in _image_extension_tuples(ast.parse(path.read_text()))]
    assert found == [], f"image extension lists outside core/images.py: {found}"
