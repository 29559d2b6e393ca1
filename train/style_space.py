"""Working in a trained model's style space, checkpoint in, files out.

* MetaStyle (``bbst metastyle``): :func:`adapt_checkpoint` adapts a meta-trained model to one style in a few steps
  and saves it as an ordinary checkpoint; :func:`stylize_adapted` renders with an adapted model;
  :func:`interpolate_checkpoints` renders (and optionally saves) convex combinations of adapted models.
* Variational models (``bbst vst-styles``): :func:`render_style_space` renders content images with style codes
  drawn from the prior or along the line between two styles' codes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from core.device import resolve_device
from core.errors import BadInputError, BbstError
from train.checkpoint import load_checkpoint, save_model_checkpoint
from train.config import VstStylesConfig
from train.image_grid import save_grid
from train.inference import list_images, load_image, resize_max_side, save_image
from train.models import load_model_from_checkpoint
from train.models.metastyle import MetaStyle, fit_for_crops, interpolate_models, interpolation_path, random_crops
from train.models.variational import VariationalStyleTransfer

log = logging.getLogger("bbst.style_space")


def load_typed(path: str, device, cls: type, what: str):
    """The model of checkpoint ``path`` on ``device``; a model of another family is a bad ``--checkpoint``."""
    model = load_model_from_checkpoint(path, map_location="cpu").to(device)
    if not isinstance(model, cls):
        raise BadInputError(f"--checkpoint {path}: holds a {type(model).__name__}, not {what}")
    return model


def crop_contents(folder: str, crop: int, device) -> list[torch.Tensor]:
    """The readable images of ``folder`` (or one file), each large enough for ``crop`` x ``crop`` crops."""
    images = []
    for path in list_images(folder):
        try:
            images.append(fit_for_crops(load_image(path), crop).to(device))
        except ValueError as exc:
            log.warning("skipping %s", exc)
    if not images:
        raise BadInputError(f"--content {folder}: no readable content image")
    return images


def adapt_checkpoint(checkpoint: str, style: str, content: str, out: str, *, steps: int | None = None,
                     lr: float | None = None, params: str | None = None, crop: int = 256, batch: int = 4,
                     style_size: int = 512, seed: int = 0, device: str = "auto") -> dict:
    """Adapt meta-trained MetaStyle ``checkpoint`` to ``style`` on random crops of ``content`` (``None`` options:
    the model's own) and save it to ``out``; returns the adaptation record also stored in the checkpoint."""
    dev = resolve_device(device)
    model = load_typed(checkpoint, dev, MetaStyle, "a MetaStyle model")
    style_img = resize_max_side(load_image(style), style_size).to(dev)
    contents = crop_contents(content, crop, dev)
    gen = torch.Generator().manual_seed(seed)
    adapted, info = model.adapt(style_img, lambda step: random_crops(contents, crop, batch, gen),
                                steps=steps, lr=lr, params=params, style_name=Path(style).stem)
    record = {"seconds": info["seconds"], "steps": len(info["losses"]), "first_loss": info["losses"][0],
              "final_loss": info["losses"][-1], "style": str(style), "from": str(checkpoint)}
    save_model_checkpoint(adapted, out, load_checkpoint(checkpoint)["model_name"], {"adaptation": record})
    log.info("adapted to %s in %d steps, %.1fs (loss %.4g -> %.4g); wrote %s", style, record["steps"],
             record["seconds"], record["first_loss"], record["final_loss"], out)
    return record


def stylize_adapted(checkpoint: str, content: str, out: str, max_side: int = 3840, device: str = "auto") -> dict:
    """Feed-forward stylisation of ``content`` (image or folder) with an adapted MetaStyle model: one image to
    ``out`` when it has a suffix and there is one content image, else ``<stem>_stylized_<style>.png`` in ``out``."""
    dev = resolve_device(device)
    model = load_typed(checkpoint, dev, MetaStyle, "a MetaStyle model")
    contents = list_images(content)
    single = len(contents) == 1 and Path(out).suffix
    written = []
    for path in contents:
        image = model.stylize(resize_max_side(load_image(path), max_side).to(dev))
        target = Path(out) if single else Path(out) / f"{path.stem}_stylized_{model.cfg.adapted_style}.png"
        save_image(image, target)
        written.append(str(target))
    return {"written": written}


def interpolate_checkpoints(checkpoints: list[str], contents: list[str], out: str, steps: int = 5,
                            max_side: int = 512, save: str = "", save_weights: list[float] | None = None,
                            device: str = "auto") -> dict:
    """A PNG grid of mixtures of adapted MetaStyle models along the path through every model (``steps`` points per
    leg), one row per content image; with ``save`` also the mixture ``save_weights`` as a checkpoint."""
    dev = resolve_device(device)
    models = [load_typed(p, dev, MetaStyle, "a MetaStyle model") for p in checkpoints]
    if len(models) < 2:
        raise BbstError("interpolate: give at least two --checkpoint files")
    images = [resize_max_side(load_image(p), max_side).to(dev) for p in contents]
    if steps < 2:
        raise BbstError(f"--steps {steps}: must be >= 2 (both ends are included)")
    weights = interpolation_path(len(models), steps)
    mixes = [interpolate_models(models, w) for w in weights]
    save_grid([[m.stylize(c) for m in mixes] for c in images], out)
    result = {"out": out, "weights": weights}
    if save:
        if not save_weights or len(save_weights) != len(models):
            raise BbstError(f"--save needs --save-weights with one weight per checkpoint ({len(models)})")
        try:
            mixed = interpolate_models(models, save_weights)
        except ValueError as exc:
            raise BbstError(f"--save-weights {save_weights}: {exc}") from None
        save_model_checkpoint(mixed, save, load_checkpoint(checkpoints[0])["model_name"])
        result["saved"] = save
    return result


@torch.inference_mode()
def render_style_space(cfg: VstStylesConfig, command: str) -> dict:
    """``command`` "sample" (``cfg.num`` prior codes) or "interpolate" (``cfg.steps`` codes between ``cfg.style``'s
    two styles) rendered on every content image: a PNG grid at ``cfg.out`` and the codes in ``<out>.json``."""
    device = resolve_device(cfg.device)
    model = load_typed(cfg.checkpoint, device, VariationalStyleTransfer, "a variational model")
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
