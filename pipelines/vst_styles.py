"""Explore a trained variational style-transfer model's style space: sample new styles, interpolate two styles.

``python pipelines/vst_styles.py sample --checkpoint CKPT --content A.jpg B.jpg --num 8 --out samples.png``
draws ``--num`` style codes from the prior N(0, I) and renders every content image with each (one row per content).

``python pipelines/vst_styles.py interpolate --checkpoint CKPT --content A.jpg --style S1.jpg S2.jpg
--steps 7 --out interp.png`` encodes both styles (their mean codes), renders the content at ``--steps`` evenly spaced
points of the line between the codes, and writes the row [style 1, t=0 ... t=1, style 2].

Both write the PNG grid and a JSON sidecar (``<out>.json``) with the codes used, so a grid can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/vst_styles.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside the functions that use them: `--help` prints before torch loads
from core.cli import HelpFormatter, error_boundary, examples_epilog, exit_with, make_parser
from core.errors import BadInputError, BbstError

log = logging.getLogger("bbst.variational")

EXAMPLES = (
    ("bbst vst-styles sample --checkpoint vst.pt --content a.jpg b.jpg --num 8 --out samples.png",
     "8 new styles drawn from the prior, rendered on each content image (one grid row per content)"),
    (("bbst vst-styles interpolate --checkpoint vst.pt --content a.jpg --style s1.jpg s2.jpg --steps 7 "
     "--out interp.png"), "7 evenly spaced points between two styles' codes: [style 1, t=0 ... t=1, style 2]"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("vst-styles", __doc__.split("\n")[0], EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="sample or interpolate (required)")
    helps = {"sample": "render content images with style codes drawn from the prior",
             "interpolate": "render content images along the line between two styles' codes"}
    for name, help_ in helps.items():
        examples = [e for e in EXAMPLES if e[0].split()[2] == name]
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                           epilog=examples_epilog(examples))
        s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error instead of one line (default: off)")
        s.add_argument("--checkpoint", required=True, metavar="CKPT",
                       help="trainer checkpoint of a variational model (required)")
        s.add_argument("--content", nargs="+", required=True, metavar="PATH",
                       help="content image(s), one grid row each (required)")
        s.add_argument("--out", required=True, metavar="FILE",
                       help="output PNG grid; <out>.json records the codes (required)")
        s.add_argument("--max-side", type=int, default=512, metavar="N",
                       help="content long side in pixels (default: 512)")
        s.add_argument("--cell", type=int, default=256, metavar="N", help="grid cell size in pixels (default: 256)")
        s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    sample = sub.choices["sample"]
    sample.add_argument("--num", type=int, default=8, metavar="N", help="styles drawn from the prior (default: 8)")
    sample.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of the draws (default: 0)")
    sample.add_argument("--temperature", type=float, default=1.0, metavar="X",
                        help="scale of the prior's standard deviation (default: 1.0)")
    interp = sub.choices["interpolate"]
    interp.add_argument("--style", nargs=2, required=True, metavar=("STYLE_A", "STYLE_B"),
                        help="the two style images (required)")
    interp.add_argument("--steps", type=int, default=7, metavar="N",
                        help="points from style A to style B, ends included (default: 7)")
    interp.add_argument("--style-size", type=int, default=512, metavar="N",
                        help="style long side fed to the style encoder (default: 512)")
    return p


def _load(checkpoint: str, device):
    from train.models import load_model_from_checkpoint
    from train.models.variational import VariationalStyleTransfer

    model = load_model_from_checkpoint(checkpoint, map_location="cpu").to(device)
    if not isinstance(model, VariationalStyleTransfer):
        raise BadInputError(f"--checkpoint {checkpoint}: holds a {type(model).__name__}, not a variational model")
    return model


@error_boundary("vst-styles")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    import torch

    with torch.inference_mode():
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    import torch

    from core.device import resolve_device
    from train.inference import load_image, resize_max_side

    device = resolve_device(args.device)
    model = _load(args.checkpoint, device)
    contents = [resize_max_side(load_image(p), args.max_side).to(device) for p in args.content]
    if args.command == "sample":
        if args.num < 1:
            raise BbstError(f"--num {args.num}: must be >= 1")
        z = model.sample_prior(args.num, torch.Generator().manual_seed(args.seed)) * args.temperature
        rows = [[c] + [model.decode(c, z[i:i + 1]) for i in range(args.num)] for c in contents]
        meta = {"command": "sample", "seed": args.seed, "temperature": args.temperature, "codes": z.tolist()}
    else:
        if args.steps < 2:
            raise BbstError(f"--steps {args.steps}: must be >= 2 (both ends are included)")
        styles = [resize_max_side(load_image(p), args.style_size).to(device) for p in args.style]
        za, zb = (model.encode_style(s)[0] for s in styles)
        ts = torch.linspace(0, 1, args.steps).tolist()
        codes = [za + t * (zb - za) for t in ts]
        rows = [[styles[0]] + [model.decode(c, z) for z in codes] + [styles[1]] for c in contents]
        meta = {"command": "interpolate", "styles": args.style, "t": ts, "codes": [z[0].tolist() for z in codes]}
    from train.image_grid import save_grid

    save_grid(rows, args.out, cell=args.cell)
    meta.update(checkpoint=args.checkpoint, content=args.content)
    Path(args.out + ".json").write_text(json.dumps(meta))
    log.info("wrote %s (%d rows x %d columns)", args.out, len(rows), len(rows[0]))
    return {"rows": len(rows), "columns": len(rows[0]), "out": args.out}


if __name__ == "__main__":
    exit_with(main())
