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

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_keys, error_boundary, exit_with, parse_config, subcommand_parsers
from core.config import ConfigError
from train.config import MetaStyleAdaptConfig, MetaStyleInterpolateConfig, MetaStyleStylizeConfig

EXAMPLES = (
    ("bbst metastyle adapt --checkpoint meta.pt --style style.jpg --content photos/ --steps 200 --out adapted.pt",
     "adapt a meta-trained MetaStyle checkpoint to one style in 200 steps and save the adapted model"),
    ("bbst metastyle stylize --checkpoint adapted.pt --content photo.jpg --out photo_styled.png",
     "feed-forward stylisation with the adapted model (it renders the one style it was adapted to)"),
    (("bbst metastyle interpolate --checkpoint adapted.pt adapted2.pt --content photo.jpg --steps 5 --out interp.png "
     "--save mix.pt --save-weights 0.5 0.5"), "5 convex combinations of two adapted models; save the 50/50 mixture"),
)


REQUIRED = ("checkpoint", "content", "out")
METAVARS = {"checkpoint": "CKPT", "style": "PATH", "content": "PATH", "out": "FILE", "save": "FILE", "save_weights": "W"}
CONFIGS = {"adapt": MetaStyleAdaptConfig, "stylize": MetaStyleStylizeConfig, "interpolate": MetaStyleInterpolateConfig}


def build_parser():
    p, subs = subcommand_parsers("metastyle", __doc__.split("\n")[0], EXAMPLES, {
        "adapt": "adapt a meta-trained model to one style and save it",
        "stylize": "feed-forward stylisation with an adapted model",
        "interpolate": "convex combinations of adapted models"}, CONFIGS, "device=cpu")
    model_default = {"steps": "the model's adapt_steps, 200 for metastyle", "lr": "the model's adapt_lr",
                     "params": "the model's adapt_params"}  # None in the config: the meta-trained model's own
    for name, sp in subs.items():
        flags = sp.get_default("config_flags")
        for key in (*REQUIRED, "style") if name == "adapt" else REQUIRED:
            flags.add(sp, key, metavar=METAVARS[key], required=True)
        for key in config_keys(CONFIGS[name]):
            if key not in {f.key for f in flags.flags}:
                options = {"metavar": METAVARS[key]} if key in METAVARS else {}
                flags.add(sp, key, **options, **({"default": model_default[key]} if name == "adapt"
                                                 and key in model_default else {}))
    return p


@error_boundary("metastyle")
def main(argv: list[str] | None = None) -> dict:
    cfg, args = parse_config(build_parser(), None, argv)
    for key in (*REQUIRED, "style") if args.command == "adapt" else REQUIRED:
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    from train.style_space import adapt_checkpoint, interpolate_checkpoints, stylize_adapted

    if args.command == "adapt":
        return adapt_checkpoint(cfg.checkpoint, cfg.style, cfg.content, cfg.out, steps=cfg.steps, lr=cfg.lr,
                                params=cfg.params, crop=cfg.crop, batch=cfg.batch, style_size=cfg.style_size,
                                seed=cfg.seed, device=cfg.device)
    if args.command == "stylize":
        return stylize_adapted(cfg.checkpoint, cfg.content, cfg.out, cfg.max_side, cfg.device)
    return interpolate_checkpoints(cfg.checkpoint, cfg.content, cfg.out, cfg.steps, cfg.max_side, cfg.save,
                                   cfg.save_weights, cfg.device)


if __name__ == "__main__":
    exit_with(main())
