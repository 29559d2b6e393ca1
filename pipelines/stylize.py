"""Stylise images (files or folders) at their own resolution with a trained checkpoint.

``python pipelines/stylize.py --checkpoint CKPT --content A.jpg --style B.jpg --out C.png [--alpha 1.0] [--blur 1.0]``

With a folder for ``--content`` and/or ``--style`` every content x style pair is stylised into the ``--out`` folder
as ``<content>_stylized_<style>.png`` and ``results.csv`` records one row per pair (status ``ok`` or ``error`` with
the message): an unreadable image fails its rows, not the run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python pipelines/stylize.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch, numpy and PIL are imported inside the functions that use them: `--help` prints before torch loads
from curate.cli import ConfigFlags, add_config_file_flags, error_boundary, exit_with, load_args, make_parser
from curate.config import ConfigError
from curate.errors import BadInputError, MissingInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bbst.stylize")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class StylizeConfig:
    checkpoint: str = ""  # trainer checkpoint (model_name, model_config, model state dict)
    content: str = ""  # content image or folder of images
    style: str = ""  # style image or folder of images
    out: str = ""  # output file (single pair) or folder
    alpha: float = 1.0  # style strength: 0 = content, 1 = as trained, > 1 amplifies the style
    blur: float | None = None  # prior blur strength: None = as trained, 0 = off, 0.5 = half the window sizes
    max_side: int = 3840  # content larger than this (long side) is downscaled to it; 3840 = 4K UHD
    style_size: int = 512  # style images are resized to this long side (bounds attention cost; 0 = keep)
    attention_mode: str | None = None  # override the checkpoint's attention ("chunked", "sdpa", "full")
    attention_chunk: int | None = None  # override content tokens per attention chunk
    max_style_tokens: int | None = None  # override the style-token cap
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"...


def load_image(path: str | Path) -> torch.Tensor:
    """Image file -> (1, 3, H, W) float in [0, 1]; EXIF orientation applied, alpha composited on white."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path}: cannot decode image ({exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def save_image(img: torch.Tensor, path: str | Path) -> None:
    import numpy as np
    from PIL import Image

    arr = (img[0].clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def resize_max_side(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """Downscale (antialiased) so the long side is at most ``max_side``; never upscales; 0 = unchanged."""
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", antialias=True)


def list_images(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingInputError(f"{p}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not p.exists():
        raise MissingInputError(f"{p}: no such file or folder")
    return [p]


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Stylizer:
    """Loads a checkpoint once; ``__call__(content, style)`` stylises image tensors (Ray Data-friendly callable)."""

    def __init__(self, checkpoint: str, device: str = "auto", alpha: float = 1.0, blur: float | None = None,
                 max_side: int = 3840, style_size: int = 512, **model_overrides):
        from train.models import load_model_from_checkpoint

        self.device = resolve_device(device)
        overrides = {k: v for k, v in model_overrides.items() if v is not None}
        self.model = load_model_from_checkpoint(checkpoint, map_location="cpu", **overrides).to(self.device)
        self.alpha, self.blur, self.max_side, self.style_size = alpha, blur, max_side, style_size

    def __call__(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            content = resize_max_side(content, self.max_side).to(self.device)
            style = resize_max_side(style, self.style_size).to(self.device)
            return self.model.stylize(content, style, alpha=self.alpha, blur=self.blur)


EXAMPLES = (
    ("bbst stylize --checkpoint ckpt.pt --content photo.jpg --style art.jpg --out out.png",
     "one content image in the style of one style image, at the content's own resolution"),
    ("bbst stylize --checkpoint ckpt.pt --content photos/ --style styles/ --out stylized/ --alpha 0.7",
     "every content x style pair of two folders, weaker style; results.csv lists each pair's status"),
)
REQUIRED = ("checkpoint", "content", "style", "out")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("stylize", __doc__.split("\n")[0], EXAMPLES)
    add_config_file_flags(p, "StylizeConfig", "alpha=0.5")
    flags = ConfigFlags(StylizeConfig)  # the dataclass comments are the option docs
    for name in REQUIRED:
        flags.add(p, name, metavar="PATH", required=True)
    flags.add_rest(p)  # alpha, blur, max_side, ...: every other option, in the dataclass's order
    p.set_defaults(config_flags=flags)
    return p


@error_boundary("stylize")
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_args(StylizeConfig, args, args.config_flags)
    for field_name in REQUIRED:
        if not getattr(cfg, field_name):
            raise ConfigError(f"--{field_name} is required", hint="bbst stylize --help shows an example")
    contents, styles = list_images(cfg.content), list_images(cfg.style)
    single = len(contents) == 1 and len(styles) == 1 and not Path(cfg.out).is_dir() and Path(cfg.out).suffix
    out_dir = Path(cfg.out).parent if single else Path(cfg.out)
    stylizer = Stylizer(cfg.checkpoint, cfg.device, cfg.alpha, cfg.blur, cfg.max_side, cfg.style_size,
                        attention_mode=cfg.attention_mode, attention_chunk=cfg.attention_chunk,
                        max_style_tokens=cfg.max_style_tokens)
    rows: list[dict] = []
    style_cache: dict[Path, torch.Tensor | Exception] = {}
    for cpath in contents:
        try:
            content: torch.Tensor | Exception = load_image(cpath)
        except (FileNotFoundError, ValueError) as exc:
            content = exc
        for spath in styles:
            if spath not in style_cache:
                try:
                    style_cache[spath] = load_image(spath)
                except (FileNotFoundError, ValueError) as exc:
                    style_cache[spath] = exc
            style = style_cache[spath]
            target = Path(cfg.out) if single else out_dir / f"{cpath.stem}_stylized_{spath.stem}.png"
            row = {"content": str(cpath), "style": str(spath), "output": str(target), "status": "ok", "error": "",
                   "seconds": 0.0, "height": 0, "width": 0}
            bad = content if isinstance(content, Exception) else style if isinstance(style, Exception) else None
            if bad is not None:
                if single:
                    raise bad
                row.update(status="error", error=str(bad))
                log.warning("skipping %s x %s: %s", cpath.name, spath.name, bad)
            else:
                t = time.perf_counter()
                out = stylizer(content, style)
                row.update(seconds=round(time.perf_counter() - t, 4), height=out.shape[-2], width=out.shape[-1])
                save_image(out, target)
                log.info("%s (%dx%d, %.2fs)", target, out.shape[-1], out.shape[-2], row["seconds"])
            rows.append(row)
    if not single:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == "__main__":
    exit_with(main())
