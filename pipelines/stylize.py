"""Stylise images (files or folders) at their own resolution with a trained checkpoint.

Folders give every content x style pair, written as ``<content>_stylized_<style>.png`` with ``results.csv`` (one
row per pair, ``ok`` or ``error``: an unreadable image fails its rows, not the run): ``train.inference.stylize_pairs``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/stylize.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside main(): `--help` prints before torch loads
from core.cli import config_parser, error_boundary, exit_with, parse_config
from core.config import ConfigError


@dataclass
class StylizeConfig:
    checkpoint: str = ""  # trainer checkpoint (model_name, model_config, model state dict)
    content: str = ""  # content image or folder of images
    style: str = ""  # style image or folder of images
    out: str = ""  # output file (single pair) or folder
    alpha: float = 1.0  # style strength: 0 = content, 1 = as trained, > 1 amplifies the style
    blur: float | None = None  # prior blur strength: None = as trained, 0 = off, 0.5 = half the window sizes (NeAT)
    prior_weight: float | None = None  # prior weighting: None = as trained, 0 = decoded deltas alone (NeAT)
    steps: int | None = None  # repeated applications of the transfer: None = 1 (RAST)
    max_side: int = 3840  # content larger than this (long side) is downscaled to it; 3840 = 4K UHD
    style_size: int = 512  # style images are resized to this long side (bounds attention cost; 0 = keep)
    attention_mode: str | None = None  # override the checkpoint's attention ("chunked", "sdpa", "full")
    attention_chunk: int | None = None  # override content tokens per attention chunk
    max_style_tokens: int | None = None  # override the style-token cap
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"...


EXAMPLES = (
    ("bbst stylize --checkpoint ckpt.pt --content photo.jpg --style art.jpg --out out.png",
     "one content image in the style of one style image, at the content's own resolution"),
    ("bbst stylize --checkpoint ckpt.pt --content photos/ --style styles/ --out stylized/ --alpha 0.7",
     "every content x style pair of two folders, weaker style; results.csv lists each pair's status"),
)
REQUIRED = ("checkpoint", "content", "style", "out")


def build_parser() -> argparse.ArgumentParser:
    # the required inputs first; alpha, blur, max_side, ...: every other option, in the dataclass's order
    return config_parser("stylize", __doc__.split("\n")[0], EXAMPLES, StylizeConfig, "alpha=0.5",
                         {name: {"metavar": "PATH", "required": True} for name in REQUIRED})


@error_boundary("stylize")
def main(argv: list[str] | None = None) -> list[dict]:
    cfg, _ = parse_config(build_parser(), StylizeConfig, argv)
    for field_name in REQUIRED:
        if not getattr(cfg, field_name):
            raise ConfigError(f"--{field_name} is required", hint="bbst stylize --help shows an example")
    from train.inference import Stylizer, list_images, stylize_pairs
    from train.stylising import cannot_stylise

    contents, styles = list_images(cfg.content), list_images(cfg.style)
    stylizer = Stylizer(cfg.checkpoint, cfg.device, cfg.alpha, cfg.blur, cfg.max_side, cfg.style_size,
                        prior_weight=cfg.prior_weight, steps=cfg.steps, attention_mode=cfg.attention_mode,
                        attention_chunk=cfg.attention_chunk, max_style_tokens=cfg.max_style_tokens)
    meta = getattr(stylizer.model, "checkpoint_meta", None)
    cannot = cannot_stylise(meta["model_config"], meta["step"]) if meta else None
    rows = stylize_pairs(stylizer, contents, styles, cfg.out)
    if Path(cfg.out).is_dir():  # a folder of pairs (one pair into a file says nothing more)
        failed = sum(r["status"] != "ok" for r in rows)
        print(f"bbst stylize: {len(rows) - failed} of {len(rows)} pairs stylised into {cfg.out}"
              + (f"; {failed} failed (their errors are in {Path(cfg.out) / 'results.csv'})" if failed else ""),
              file=sys.stderr)
    if cannot:  # last, beside the outputs it explains
        print(f"bbst stylize: note: {cfg.checkpoint} cannot stylise: {cannot}", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    exit_with(main())
