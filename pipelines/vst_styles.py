"""Explore a trained variational style-transfer model's style space: sample new styles, interpolate two styles.

``sample`` renders each content image with ``--num`` style codes drawn from the prior; ``interpolate`` renders it
at ``--steps`` points between two styles' codes (``VariationalStyleTransfer.interpolate_styles``). Both write a PNG
grid and ``<out>.json`` with the codes used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/vst_styles.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside the functions that use them: `--help` prints before torch loads
from core.cli import (
    ConfigFlags,
    HelpFormatter,
    add_config_file_flags,
    error_boundary,
    examples_epilog,
    exit_with,
    load_args,
    make_parser,
    setup_logging,
)
from core.config import ConfigError
from core.errors import BadInputError, BbstError

log = logging.getLogger("bbst.variational")


@dataclass
class VstStylesConfig:
    checkpoint: str = ""  # trainer checkpoint of a variational model
    content: list[str] = field(default_factory=list)  # content image(s), one grid row each
    out: str = ""  # output PNG grid; <out>.json records the codes
    max_side: int = 512  # content long side in pixels
    cell: int = 256  # grid cell size in pixels
    device: str = "auto"  # auto, cpu, cuda, cuda:1...
    num: int = 8  # sample: styles drawn from the prior
    seed: int = 0  # sample: random seed of the draws
    temperature: float = 1.0  # sample: scale of the prior's standard deviation
    style: list[str] = field(default_factory=list)  # interpolate: the two style images
    steps: int = 7  # interpolate: points from style A to style B, ends included
    style_size: int = 512  # interpolate: style long side loaded (the model encodes it at its own style_size)


EXAMPLES = (
    ("bbst vst-styles sample --checkpoint vst.pt --content a.jpg b.jpg --num 8 --out samples.png",
     "8 new styles drawn from the prior, rendered on each content image (one grid row per content)"),
    (("bbst vst-styles interpolate --checkpoint vst.pt --content a.jpg --style s1.jpg s2.jpg --steps 7 "
     "--out interp.png"), "7 evenly spaced points between two styles' codes: [style 1, t=0 ... t=1, style 2]"),
)
COMMANDS = {"sample": ("render content images with style codes drawn from the prior", ("num", "seed", "temperature")),
            "interpolate": ("render content images along the line between two styles' codes",
                            ("style", "steps", "style_size"))}


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("vst-styles", __doc__.split("\n")[0], EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="sample or interpolate (required)")
    for name, (help_, own) in COMMANDS.items():
        examples = [e for e in EXAMPLES if e[0].split()[2] == name]
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                           epilog=examples_epilog(examples))
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error instead of one line (default: off)")
        add_config_file_flags(s, "VstStylesConfig", "cell=128")
        flags = ConfigFlags(VstStylesConfig)
        flags.add(s, "checkpoint", metavar="CKPT", required=True)
        flags.add(s, "content", metavar="PATH", required=True)
        flags.add(s, "out", metavar="FILE", required=True)
        flags.add_all(s, ["max_side", "cell", "device"])
        for key in own:
            flags.add(s, key, **({"nargs": 2, "metavar": ("STYLE_A", "STYLE_B"), "required": True}
                                 if key == "style" else {}))
        s.set_defaults(config_flags=flags)
    return p


@error_boundary("vst-styles")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = load_args(VstStylesConfig, args, args.config_flags)
    setup_logging(args.log_level)
    for key in ("checkpoint", "content", "out") + (("style",) if args.command == "interpolate" else ()):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    import torch

    with torch.inference_mode():
        return render(cfg, args.command)


def render(cfg: VstStylesConfig, command: str) -> dict:
    import torch

    from core.device import resolve_device
    from train.image_grid import save_grid
    from train.inference import load_image, resize_max_side
    from train.models import load_model_from_checkpoint
    from train.models.variational import VariationalStyleTransfer

    device = resolve_device(cfg.device)
    model = load_model_from_checkpoint(cfg.checkpoint, map_location="cpu").to(device)
    if not isinstance(model, VariationalStyleTransfer):
        raise BadInputError(f"--checkpoint {cfg.checkpoint}: holds a {type(model).__name__}, not a variational model")
    contents = [resize_max_side(load_image(p), cfg.max_side).to(device) for p in cfg.content]
    if command == "sample":
        if cfg.num < 1:
            raise BbstError(f"--num {cfg.num}: must be >= 1")
        z = model.sample_prior(cfg.num, torch.Generator().manual_seed(cfg.seed)) * cfg.temperature
        rows = [[c] + [model.decode(c, z[i:i + 1]) for i in range(cfg.num)] for c in contents]
        meta = {"command": "sample", "seed": cfg.seed, "temperature": cfg.temperature, "codes": z.tolist()}
    else:
        if cfg.steps < 2:
            raise BbstError(f"--steps {cfg.steps}: must be >= 2 (both ends are included)")
        if len(cfg.style) != 2:
            raise BbstError(f"--style {' '.join(cfg.style)}: give exactly two style images")
        styles = [resize_max_side(load_image(p), cfg.style_size).to(device) for p in cfg.style]
        ts, codes = model.interpolate_styles(styles[0], styles[1], cfg.steps)
        rows = [[styles[0]] + [model.decode(c, z) for z in codes] + [styles[1]] for c in contents]
        meta = {"command": "interpolate", "styles": cfg.style, "t": ts, "codes": [z[0].tolist() for z in codes]}
    save_grid(rows, cfg.out, cell=cfg.cell)
    meta.update(checkpoint=cfg.checkpoint, content=cfg.content)
    Path(cfg.out + ".json").write_text(json.dumps(meta))
    log.info("wrote %s (%d rows x %d columns)", cfg.out, len(rows), len(rows[0]))
    return {"rows": len(rows), "columns": len(rows[0]), "out": cfg.out}


if __name__ == "__main__":
    exit_with(main())
