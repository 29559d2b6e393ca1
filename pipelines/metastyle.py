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

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/metastyle.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, setup_logging, subcommand_parsers

EXAMPLES = (
    ("bbst metastyle adapt --checkpoint meta.pt --style style.jpg --content photos/ --steps 200 --out adapted.pt",
     "adapt a meta-trained MetaStyle checkpoint to one style in 200 steps and save the adapted model"),
    ("bbst metastyle stylize --checkpoint adapted.pt --content photo.jpg --out photo_styled.png",
     "feed-forward stylisation with the adapted model (it renders the one style it was adapted to)"),
    (("bbst metastyle interpolate --checkpoint adapted.pt adapted2.pt --content photo.jpg --steps 5 --out interp.png "
     "--save mix.pt --save-weights 0.5 0.5"), "5 convex combinations of two adapted models; save the 50/50 mixture"),
)


def build_parser():
    p, subs = subcommand_parsers("metastyle", __doc__.split("\n")[0], EXAMPLES, {
        "adapt": "adapt a meta-trained model to one style and save it",
        "stylize": "feed-forward stylisation with an adapted model",
        "interpolate": "convex combinations of adapted models"})
    for sp in subs.values():
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (default: auto)")
    a, s, i = subs["adapt"], subs["stylize"], subs["interpolate"]
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
    s.add_argument("--checkpoint", required=True, metavar="CKPT", help="adapted checkpoint (required)")
    s.add_argument("--content", required=True, metavar="PATH", help="content image or folder (required)")
    s.add_argument("--out", required=True, metavar="PATH", help="output file (one image) or folder (required)")
    s.add_argument("--max-side", type=int, default=3840, metavar="N",
                   help="content larger than this (long side) is downscaled to it (default: 3840)")
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


@error_boundary("metastyle")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from train.style_space import adapt_checkpoint, interpolate_checkpoints, stylize_adapted

    if args.command == "adapt":
        return adapt_checkpoint(args.checkpoint, args.style, args.content, args.out, steps=args.steps, lr=args.lr,
                                params=args.params, crop=args.crop, batch=args.batch, style_size=args.style_size,
                                seed=args.seed, device=args.device)
    if args.command == "stylize":
        return stylize_adapted(args.checkpoint, args.content, args.out, args.max_side, args.device)
    return interpolate_checkpoints(args.checkpoint, args.content, args.out, args.steps, args.max_side, args.save,
                                   args.save_weights, args.device)


if __name__ == "__main__":
    exit_with(main())
