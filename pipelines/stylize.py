"""Stylise images (files or folders) at their own resolution with a trained checkpoint.

Folders give every content x style pair, written as ``<content>_stylized_<style>.png`` with ``results.csv`` (one
row per pair, ``ok`` or ``error``: an unreadable image fails its rows, not the run): ``train.inference.stylize_pairs``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_parser, error_boundary, exit_with, parse_config
from core.config import ConfigError
from train.config import StylizeConfig

EXAMPLES = (
    ("bbst stylize --checkpoint ckpt.pt --content photo.jpg --style art.jpg --out out.png",
     "one content image in the style of one style image, at the content's own resolution"),
    ("bbst stylize --checkpoint ckpt.pt --content photos/ --style styles/ --out stylized/ --alpha 0.7",
     "every content x style pair of two folders, weaker style; results.csv lists each pair's status"),
)
REQUIRED = ("checkpoint", "content", "style", "out")


def build_parser():
    # the required inputs first; alpha, blur, max_side, ...: every other option, in the dataclass's order
    return config_parser("stylize", __doc__.split("\n")[0], EXAMPLES, StylizeConfig, "alpha=0.5",
                         {name: {"metavar": "PATH", "required": True} for name in REQUIRED})


@error_boundary("stylize")
def main(argv: list[str] | None = None) -> list[dict]:
    cfg, _ = parse_config(build_parser(), StylizeConfig, argv)
    for field_name in REQUIRED:
        if not getattr(cfg, field_name):
            raise ConfigError(f"--{field_name} is required", hint="bbst stylize --help shows an example")
    from train.inference import stylize_files

    rows, notes = stylize_files(cfg)
    for note in notes:
        print(f"bbst stylize: {note}", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    exit_with(main())
