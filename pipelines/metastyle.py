"""MetaStyle after meta-training: adapt to a new style in a few steps, stylise with it, interpolate adapted models.

``python pipelines/metastyle.py adapt --checkpoint META.pt --style S.jpg --content photos/ --steps 200
--out adapted.pt`` runs ``--steps`` updates (the model's ``adapt_optimizer``) of the perceptual loss (random
``--crop`` crops of the content images, training content as in the paper, ``--batch`` per step) from the
meta-trained parameters and saves the adapted model as a checkpoint that ``pipelines/stylize.py`` and
``pipelines/evaluate.py`` load like any other. The adaptation time and losses are
recorded in it (``adaptation``).

``python pipelines/metastyle.py stylize --checkpoint adapted.pt --content A.jpg --out A_styled.png`` is the
feed-forward stylisation (no style image: the adapted network renders its one style).

``python pipelines/metastyle.py interpolate --checkpoint a.pt b.pt [c.pt ...] --content A.jpg --steps 5 --out grid.png
[--save-weights 0.5 0.5 --save mixed.pt]`` renders convex combinations of the adapted models' parameters along the
path through every given model (``--steps`` points per leg: a to b, then b to c, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/metastyle.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside the functions that use them: `--help` prints before torch loads
from core.cli import HelpFormatter, error_boundary, examples_epilog, exit_with, make_parser, setup_logging
from core.errors import BadInputError, BbstError

log = logging.getLogger("bbst.metastyle")

EXAMPLES = (
    ("bbst metastyle adapt --checkpoint meta.pt --style style.jpg --content photos/ --steps 200 --out adapted.pt",
     "adapt a meta-trained MetaStyle checkpoint to one style in 200 steps and save the adapted model"),
    ("bbst metastyle stylize --checkpoint adapted.pt --content photo.jpg --out photo_styled.png",
     "feed-forward stylisation with the adapted model (it renders the one style it was adapted to)"),
    (("bbst metastyle interpolate --checkpoint adapted.pt adapted2.pt --content photo.jpg --steps 5 --out interp.png "
     "--save mix.pt --save-weights 0.5 0.5"), "5 convex combinations of two adapted models; save the 50/50 mixture"),
)


def _subparser(sub, name: str, help_: str) -> argparse.ArgumentParser:
    examples = [e for e in EXAMPLES if e[0].split()[2] == name]
    sp = sub.add_parser(name, help=help_, description=help_, formatter_class=HelpFormatter,
                        epilog=examples_epilog(examples) if examples else None)
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show the full traceback of an error instead of one line (default: off)")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    return sp


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("metastyle", __doc__.split("\n")[0], EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="adapt, stylize or interpolate (required)")
    a = _subparser(sub, "adapt", "adapt a meta-trained model to one style and save it")
    a.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="meta-trained MetaStyle checkpoint, from the trainer (required)")
    a.add_argument("--style", required=True, metavar="PATH", help="style image (required)")
    a.add_argument("--content", required=True, metavar="PATH",
                   help="content image or folder the adaptation steps crop from (required)")
    a.add_argument("--out", required=True, metavar="FILE", help="adapted checkpoint to write (required)")
    a.add_argument("--steps", type=int, default=None, metavar="N",
                   help="update steps (default: the model's adapt_steps, 200 for metastyle)")
    a.add_argument("--lr", type=float, default=None, metavar="X", help="Adam learning rate (default: the model's adapt_lr)")
    a.add_argument("--params", choices=("all", "norm"), default=None,
                   help="adapt all parameters or only the norm scales and shifts (default: the model's adapt_params)")
    a.add_argument("--crop", type=int, default=256, metavar="N", help="content crop size in pixels (default: 256)")
    a.add_argument("--batch", type=int, default=4, metavar="N", help="content crops per step (default: 4)")
    a.add_argument("--style-size", type=int, default=512, metavar="N", help="style long side in pixels (default: 512)")
    a.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the crop sampling (default: 0)")
    s = _subparser(sub, "stylize", "feed-forward stylisation with an adapted model")
    s.add_argument("--checkpoint", required=True, metavar="CKPT", help="adapted checkpoint (required)")
    s.add_argument("--content", required=True, metavar="PATH", help="content image or folder (required)")
    s.add_argument("--out", required=True, metavar="PATH", help="output file (one image) or folder (required)")
    s.add_argument("--max-side", type=int, default=3840, metavar="N",
                   help="content larger than this (long side) is downscaled to it (default: 3840)")
    i = _subparser(sub, "interpolate", "convex combinations of adapted models")
    i.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                   help="two or more adapted checkpoints (required)")
    i.add_argument("--content", nargs="+", required=True, metavar="PATH",
                   help="content image(s), one grid row each (required)")
    i.add_argument("--out", required=True, metavar="FILE",
                   help="PNG grid of the mixtures along the path through every model (required)")
    i.add_argument("--steps", type=int, default=5, metavar="N",
                   help="points per leg of the path (model k to model k+1), ends included (default: 5)")
    i.add_argument("--save", default="", metavar="FILE",
                   help="also save the mixture given by --save-weights as a checkpoint (default: none)")
    i.add_argument("--save-weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per checkpoint, >= 0, summing to 1 (default: none)")
    i.add_argument("--max-side", type=int, default=512, metavar="N", help="content long side in pixels (default: 512)")
    return p


def _load(path: str, device):
    from train.checkpoint import load_checkpoint
    from train.models import load_model_from_checkpoint
    from train.models.metastyle import MetaStyle

    model = load_model_from_checkpoint(path, map_location="cpu").to(device)
    if not isinstance(model, MetaStyle):
        raise BadInputError(f"--checkpoint {path}: holds a {type(model).__name__}, not a MetaStyle model")
    return model, load_checkpoint(path)


def _prepare_contents(folder: str, crop: int, device) -> list:
    from train.inference import list_images, load_image
    from train.models.metastyle import fit_for_crops

    images = []
    for path in list_images(folder):
        try:
            images.append(fit_for_crops(load_image(path), crop).to(device))
        except ValueError as exc:
            log.warning("skipping %s", exc)
    if not images:
        raise BadInputError(f"--content {folder}: no readable content image")
    return images


@error_boundary("metastyle")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    import torch

    from core.device import resolve_device
    from train.checkpoint import save_model_checkpoint
    from train.inference import list_images, load_image, resize_max_side, save_image
    from train.models.metastyle import random_crops

    device = resolve_device(args.device)
    if args.command == "adapt":
        model, ck = _load(args.checkpoint, device)
        style = resize_max_side(load_image(args.style), args.style_size).to(device)
        contents = _prepare_contents(args.content, args.crop, device)
        gen = torch.Generator().manual_seed(args.seed)
        adapted, info = model.adapt(style, lambda step: random_crops(contents, args.crop, args.batch, gen),
                                    steps=args.steps, lr=args.lr, params=args.params, style_name=Path(args.style).stem)
        record = {"seconds": info["seconds"], "steps": len(info["losses"]), "first_loss": info["losses"][0],
                  "final_loss": info["losses"][-1], "style": str(args.style), "from": str(args.checkpoint)}
        save_model_checkpoint(adapted, args.out, ck["model_name"], {"adaptation": record})
        log.info("adapted to %s in %d steps, %.1fs (loss %.4g -> %.4g); wrote %s", args.style, record["steps"],
                 record["seconds"], record["first_loss"], record["final_loss"], args.out)
        return record
    if args.command == "stylize":
        model, _ = _load(args.checkpoint, device)
        contents = list_images(args.content)
        single = len(contents) == 1 and Path(args.out).suffix
        written = []
        for path in contents:
            out = model.stylize(resize_max_side(load_image(path), args.max_side).to(device))
            target = Path(args.out) if single else Path(args.out) / f"{path.stem}_stylized_{model.cfg.adapted_style}.png"
            save_image(out, target)
            written.append(str(target))
        return {"written": written}
    # interpolate
    from train.image_grid import save_grid
    from train.models.metastyle import interpolate_models, interpolation_path

    loaded = [_load(p, device) for p in args.checkpoint]
    models = [m for m, _ in loaded]
    if len(models) < 2:
        raise BbstError("interpolate: give at least two --checkpoint files")
    contents = [resize_max_side(load_image(p), args.max_side).to(device) for p in args.content]
    if args.steps < 2:
        raise BbstError(f"--steps {args.steps}: must be >= 2 (both ends are included)")
    weights = interpolation_path(len(models), args.steps)
    mixes = [interpolate_models(models, w) for w in weights]
    rows = [[m.stylize(c) for m in mixes] for c in contents]
    save_grid(rows, args.out)
    result = {"out": args.out, "weights": weights}
    if args.save:
        if not args.save_weights or len(args.save_weights) != len(models):
            raise BbstError(f"--save needs --save-weights with one weight per checkpoint ({len(models)})")
        try:
            mixed = interpolate_models(models, args.save_weights)
        except ValueError as exc:
            raise BbstError(f"--save-weights {args.save_weights}: {exc}") from None
        save_model_checkpoint(mixed, args.save, loaded[0][1]["model_name"])
        result["saved"] = args.save
    return result


if __name__ == "__main__":
    exit_with(main())
