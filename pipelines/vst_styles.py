"""Explore a trained variational style-transfer model's style space: sample new styles, interpolate two styles.

``sample`` renders each content image with ``--num`` style codes drawn from the prior; ``interpolate`` renders it
at ``--steps`` points between two styles' codes (``VariationalStyleTransfer.interpolate_styles``). Both write a PNG
grid and ``<out>.json`` with the codes used.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, parse_config, subcommand_parsers
from core.config import ConfigError
from train.config import VstStylesConfig

EXAMPLES = (
    ("bbst vst-styles sample --checkpoint vst.pt --content a.jpg b.jpg --num 8 --out samples.png",
     "8 new styles drawn from the prior, rendered on each content image (one grid row per content)"),
    (("bbst vst-styles interpolate --checkpoint vst.pt --content a.jpg --style s1.jpg s2.jpg --steps 7 "
     "--out interp.png"), "7 evenly spaced points between two styles' codes: [style 1, t=0 ... t=1, style 2]"),
)
OWN_FLAGS = {"sample": ("num", "seed", "temperature"), "interpolate": ("style", "steps", "style_size")}


def build_parser():
    p, subs = subcommand_parsers("vst-styles", __doc__.split("\n")[0], EXAMPLES, {
        "sample": "render content images with style codes drawn from the prior",
        "interpolate": "render content images along the line between two styles' codes"}, VstStylesConfig, "cell=128")
    for name, s in subs.items():
        flags = s.get_default("config_flags")
        for key in ("checkpoint", "content", "out"):
            flags.add(s, key, metavar={"checkpoint": "CKPT", "content": "PATH", "out": "FILE"}[key], required=True)
        flags.add_all(s, ["max_side", "cell", "device"])
        for key in OWN_FLAGS[name]:
            flags.add(s, key, **({"nargs": 2, "metavar": ("STYLE_A", "STYLE_B"), "required": True}
                                 if key == "style" else {}))
    return p


@error_boundary("vst-styles")
def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_config(build_parser(), VstStylesConfig, argv)
    for key in ("checkpoint", "content", "out") + (("style",) if args.command == "interpolate" else ()):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    from train.style_space import render_style_space

    return render_style_space(cfg, args.command)


if __name__ == "__main__":
    exit_with(main())
