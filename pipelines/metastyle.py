"""MetaStyle after meta-training: adapt to a new style in a few steps, stylise with it, interpolate adapted models.

``python pipelines/metastyle.py adapt --checkpoint META.pt --style S.jpg --content photos/ --steps 200
--out adapted.pt`` runs ``--steps`` Adam updates of the perceptual loss (random ``--crop`` crops of the content
images, ``--batch`` per step) from the meta-trained parameters and saves the adapted model as a checkpoint that
``pipelines/stylize.py`` and ``pipelines/evaluate_st.py`` load like any other. The adaptation time and losses are
recorded in it (``adaptation``).

``python pipelines/metastyle.py stylize --checkpoint adapted.pt --content A.jpg --out A_styled.png`` is the
feed-forward stylisation (no style image: the adapted network renders its one style).

``python pipelines/metastyle.py interpolate --checkpoint a.pt b.pt --content A.jpg --steps 5 --out grid.png
[--save-weights 0.5 0.5 --save mixed.pt]`` renders convex combinations of the adapted models' parameters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/metastyle.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from curate.errors import BbstError
from pipelines.stylize import list_images, load_image, resize_max_side, resolve_device, save_image

log = logging.getLogger("bbst.metastyle")
CHECKPOINT_FORMAT = "bbst-train-checkpoint-v1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("adapt", help="adapt a meta-trained model to one style and save it")
    a.add_argument("--checkpoint", required=True, help="meta-trained MetaStyle checkpoint (from the trainer)")
    a.add_argument("--style", required=True, help="style image")
    a.add_argument("--content", required=True, help="content image or folder used for the adaptation steps")
    a.add_argument("--out", required=True, help="adapted checkpoint to write")
    a.add_argument("--steps", type=int, default=None, help="update steps (default: the model's adapt_steps, 200)")
    a.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the model's adapt_lr)")
    a.add_argument("--params", choices=("all", "norm"), default=None, help="adapt all or only norm scale/shift")
    a.add_argument("--crop", type=int, default=256, help="content crop size (default 256)")
    a.add_argument("--batch", type=int, default=4, help="content crops per step (default 4)")
    a.add_argument("--style-size", type=int, default=512, help="style long side (default 512)")
    a.add_argument("--seed", type=int, default=0, help="crop sampling seed")
    s = sub.add_parser("stylize", help="feed-forward stylisation with an adapted model")
    s.add_argument("--checkpoint", required=True, help="adapted checkpoint")
    s.add_argument("--content", required=True, help="content image or folder")
    s.add_argument("--out", required=True, help="output file (one image) or folder")
    s.add_argument("--max-side", type=int, default=3840, help="content long side cap (default 3840)")
    i = sub.add_parser("interpolate", help="convex combinations of adapted models")
    i.add_argument("--checkpoint", nargs="+", required=True, help="two or more adapted checkpoints")
    i.add_argument("--content", nargs="+", required=True, help="content image(s); one grid row each")
    i.add_argument("--out", required=True, help="PNG grid (two checkpoints: --steps points between them)")
    i.add_argument("--steps", type=int, default=5, help="points from the first to the second model, ends included")
    i.add_argument("--save", default="", help="also save the mixture given by --save-weights as a checkpoint")
    i.add_argument("--save-weights", type=float, nargs="+", default=None, help="one weight per checkpoint")
    i.add_argument("--max-side", type=int, default=512, help="content long side (default 512)")
    for sp in (a, s, i):
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    return p


def _load(path: str, device: torch.device):
    from train.checkpoint import load_checkpoint
    from train.models import load_model_from_checkpoint
    from train.models.metastyle import MetaStyle

    model = load_model_from_checkpoint(path, map_location="cpu").to(device)
    if not isinstance(model, MetaStyle):
        raise BbstError(f"--checkpoint {path}: holds a {type(model).__name__}, not a MetaStyle model")
    return model, load_checkpoint(path)


def save_model(model, path: str | Path, model_name: str, extra: dict | None = None) -> None:
    """Write a model-only checkpoint (the trainer's format, without optimizer or data state) atomically."""
    from curate.writer import atomic_write

    state = {"format": CHECKPOINT_FORMAT, "model_name": model_name, "model_config": model.model_config(),
             "model": {k: v.cpu() for k, v in model.state_dict().items()}, "step": 0, **(extra or {})}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda f: torch.save(state, f))


def random_crops(images: list[torch.Tensor], crop: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random square crops from images (each resized so its short side is at least ``crop``)."""
    out = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - crop + 1, (1,), generator=gen))
        x = int(torch.randint(w - crop + 1, (1,), generator=gen))
        out.append(img[..., y:y + crop, x:x + crop])
    return torch.cat(out)


def _prepare_contents(folder: str, crop: int, device: torch.device) -> list[torch.Tensor]:
    images = []
    for path in list_images(folder):
        try:
            img = load_image(path)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            continue
        h, w = img.shape[-2:]
        if min(h, w) < crop:
            s = crop / min(h, w)
            img = F.interpolate(img, size=(max(crop, round(h * s)), max(crop, round(w * s))), mode="bilinear")
        images.append(resize_max_side(img, max(2 * crop, 512)).to(device))
    if not images:
        raise BbstError(f"--content {folder}: no readable content image")
    return images


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
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
        save_model(adapted, args.out, ck["model_name"], {"adaptation": record})
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
    from train.models.metastyle import interpolate_models

    loaded = [_load(p, device) for p in args.checkpoint]
    models = [m for m, _ in loaded]
    if len(models) < 2:
        raise BbstError("interpolate: give at least two --checkpoint files")
    contents = [resize_max_side(load_image(p), args.max_side).to(device) for p in args.content]
    if args.steps < 2:
        raise BbstError(f"--steps {args.steps}: must be >= 2 (both ends are included)")
    ts = torch.linspace(0, 1, args.steps).tolist()
    mixes = [interpolate_models(models[:2], [1 - t, t]) for t in ts]
    rows = [[m.stylize(c) for m in mixes] for c in contents]
    save_grid(rows, args.out)
    result = {"out": args.out, "t": ts}
    if args.save:
        if not args.save_weights or len(args.save_weights) != len(models):
            raise BbstError(f"--save needs --save-weights with one weight per checkpoint ({len(models)})")
        try:
            mixed = interpolate_models(models, args.save_weights)
        except ValueError as exc:
            raise BbstError(f"--save-weights {args.save_weights}: {exc}") from None
        save_model(mixed, args.save, loaded[0][1]["model_name"])
        result["saved"] = args.save
    return result


if __name__ == "__main__":
    main()
