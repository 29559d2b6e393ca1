"""Inference helpers shared by the stylize and evaluate scripts: image I/O, resizing, and the Stylizer.

``Stylizer(checkpoint_or_model, ...)`` loads any registered model once (from a trainer checkpoint alone, see
``train.models.load_model_from_checkpoint``) and is a callable ``(content, style) -> image`` on (1, 3, H, W)
tensors in [0, 1], shaped as a Ray Data batch-inference stage. The user controls (``alpha``, ``blur``,
``prior_weight``, ``steps``) are passed to ``model.stylize`` only when set, and a control the model does not have
is a clear error when the Stylizer is built. ``AdaptingStylizer`` does the same for a meta-trained MetaStyle
model, adapting it to each new style first.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.device import resolve_device
from core.errors import BadInputError, BbstError, MissingInputError
from core.images import IMAGE_EXTENSIONS, is_image_name, open_image

log = logging.getLogger(__name__)
CONTROLS = ("alpha", "blur", "prior_weight", "steps")
ADAPTATION_HEADER = "adaptation (s/style) ↓"  # AdaptingStylizer's speed-table column


class ControlError(BbstError, ValueError):
    """A stylisation control the loaded model does not support."""


def load_image(path: str | Path) -> torch.Tensor:
    """Image file or fsspec URL -> (1, 3, H, W) float in [0, 1], upright RGB by the core.images colour rule."""
    try:
        if "://" in str(path):
            import fsspec

            with fsspec.open(str(path), "rb") as f:
                source: io.BytesIO | str | Path = io.BytesIO(f.read())
        else:
            source = path
        arr = np.asarray(open_image(source), dtype=np.uint8)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path}: cannot decode image ({exc})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def load_adaptation_contents(paths: list[Path], crop: int, held_out: list[Path] = ()) -> list[torch.Tensor]:
    """Adaptation content images (:func:`fit_for_crops`) from ``paths``, unreadable ones skipped with a warning.

    MetaStyle adapts on content images of its training set; an image that is also one of ``held_out`` (the
    evaluation's test images: the same file, or the same bytes under another name) raises ValueError naming it,
    before any image is decoded.
    """
    from train.models.metastyle import fit_for_crops

    def digest(p: Path) -> str:
        return hashlib.sha1(Path(p).read_bytes()).hexdigest()

    held = {Path(p).resolve() for p in held_out}
    held_digests = {digest(p) for p in held if p.is_file()}
    for p in paths:
        if Path(p).resolve() in held or (Path(p).is_file() and digest(p) in held_digests):
            raise ValueError(f"{p} is one of the evaluation's test images: adapt on training content instead")
    images = []
    for p in paths:
        try:
            images.append(fit_for_crops(load_image(p), crop))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("adaptation content: skipping %s", exc)
    return images


def save_image(img: torch.Tensor, path: str | Path) -> None:
    """(1, 3, H, W) in [0, 1] -> an image file (format from the suffix); parent folders are created."""
    arr = (img[0].clamp(0, 1).permute(1, 2, 0).cpu().float().numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def resize_max_side(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """Downscale (antialiased) so the long side is at most ``max_side``; never upscales; 0 = unchanged."""
    h, w = img.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return F.interpolate(img, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", antialias=True)


def resize_cover_crop(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (aspect kept) until the image covers ``height x width``, then centre-crop to exactly that size."""
    h, w = img.shape[-2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    if (nh, nw) != (h, w):
        img = F.interpolate(img, size=(nh, nw), mode="bilinear", antialias=s < 1, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return img[..., top:top + height, left:left + width]


def resize_fit_pad(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale (aspect kept) to fit inside ``height x width``, then reflect-pad (replicate when too small) to it."""
    h, w = img.shape[-2:]
    s = min(height / h, width / w)
    nh, nw = min(height, max(1, round(h * s))), min(width, max(1, round(w * s)))
    if (nh, nw) != (h, w):
        img = F.interpolate(img, size=(nh, nw), mode="bilinear", antialias=s < 1, align_corners=False)
    ph, pw = height - nh, width - nw
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if not any(pad):
        return img
    mode = "reflect" if ph < nh and pw < nw else "replicate"
    return F.pad(img, pad, mode=mode)


def list_images(path: str | Path) -> list[Path]:
    """The image files of a folder (sorted), or the one file given."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if is_image_name(f.name))
        if not files:
            raise MissingInputError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    if not p.exists():
        raise MissingInputError(f"{p}: no such file or folder")
    return [p]


class Stylizer:
    """Loads a model once; ``__call__(content, style)`` stylises image tensors (Ray Data-friendly callable).

    ``source`` is a trainer checkpoint path or a model object. ``alpha`` (1 = as trained), ``blur`` and
    ``prior_weight`` (None = as trained) and ``steps`` (None = 1) are the user controls; ``model_overrides``
    change inference-only config values of a checkpoint (e.g. ``attention_mode``).
    """

    def __init__(self, source: str | torch.nn.Module, device: str = "auto", alpha: float = 1.0,
                 blur: float | None = None, max_side: int = 3840, style_size: int = 512,
                 prior_weight: float | None = None, steps: int | None = None, **model_overrides):
        self.device = resolve_device(device)
        if isinstance(source, torch.nn.Module):
            self.model = source.eval().to(self.device)
        else:
            from train.models import load_model_from_checkpoint

            overrides = {k: v for k, v in model_overrides.items() if v is not None}
            self.model = load_model_from_checkpoint(source, map_location="cpu", **overrides).to(self.device)
        self.alpha, self.blur, self.prior_weight, self.steps = alpha, blur, prior_weight, steps
        self.max_side, self.style_size = max_side, style_size
        self.controls()  # unsupported controls fail now, not at the first image

    def controls(self) -> dict:
        """The controls passed to ``model.stylize``: only those set away from "as trained"."""
        wanted = {"alpha": self.alpha if self.alpha != 1.0 else None, "blur": self.blur,
                  "prior_weight": self.prior_weight, "steps": self.steps}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        accepted = [c for c in inspect.signature(self.model.stylize).parameters if self.supports(c)]
        missing = sorted(k for k in wanted if k not in accepted)
        if missing:
            have = [c for c in CONTROLS if c in accepted]
            raise ControlError(f"model {type(self.model).__name__} has no control {', '.join(missing)} "
                               f"(it supports: {', '.join(have) or 'none'})")
        return wanted

    def supports(self, control: str) -> bool:
        """Whether ``model.stylize`` takes ``control`` and this model has something to apply it to."""
        return (control in inspect.signature(self.model.stylize).parameters
                and control not in getattr(self.model, "disabled_controls", ()))

    @torch.inference_mode()
    def __call__(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        content = resize_max_side(content, self.max_side).to(self.device)
        style = resize_max_side(style, self.style_size).to(self.device)
        return self.model.stylize(content, style, **self.controls())


def stylize_pairs(stylizer, contents: list[Path], styles: list[Path], out: str | Path) -> list[dict]:
    """Stylise every content x style pair and return one row per pair (``status`` ok or error, with the message).

    One pair and an ``out`` with a file suffix (not a folder): the image is written there and an unreadable image
    raises. Otherwise each pair becomes ``out/<content>_stylized_<style>.png`` and ``out/results.csv`` holds the
    rows: an unreadable image fails its rows, not the run, unless every pair fails.
    """
    import csv
    import logging
    import time

    log = logging.getLogger("bbst.stylize")
    single = len(contents) == 1 and len(styles) == 1 and not Path(out).is_dir() and bool(Path(out).suffix)
    out_dir = Path(out).parent if single else Path(out)
    rows: list[dict] = []
    images: dict[Path, torch.Tensor | Exception] = {}

    def image(path: Path) -> torch.Tensor | Exception:  # each image decoded once; a failure is kept as the value
        if path not in images:
            try:
                images[path] = load_image(path)
            except (FileNotFoundError, ValueError) as exc:
                images[path] = exc
        return images[path]

    for cpath in contents:
        for spath in styles:
            content, style = image(cpath), image(spath)
            target = Path(out) if single else out_dir / f"{cpath.stem}_stylized_{spath.stem}.png"
            row = {"content": str(cpath), "style": str(spath), "output": str(target), "status": "ok", "error": "",
                   "seconds": 0.0, "height": 0, "width": 0}
            bad = content if isinstance(content, Exception) else style if isinstance(style, Exception) else None
            if bad is not None:
                if single:
                    raise bad
                row.update(status="error", error=str(bad))
                log.warning("skipping %s x %s: %s", cpath.name, spath.name, bad)
            else:
                t = time.perf_counter()
                result = stylizer(content, style)
                row.update(seconds=round(time.perf_counter() - t, 4), height=result.shape[-2], width=result.shape[-1])
                save_image(result, target)
                log.info("%s (%dx%d, %.2fs)", target, result.shape[-1], result.shape[-2], row["seconds"])
            rows.append(row)
    if not single:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if all(r["status"] != "ok" for r in rows):
            raise BadInputError(f"every one of the {len(rows)} content x style pairs failed; nothing was stylised",
                                hint=f"{out_dir / 'results.csv'} lists each pair's error")
    return rows



def stylize_files(cfg) -> tuple[list[dict], list[str]]:
    """``bbst stylize`` for a ``train.config.StylizeConfig``: :func:`stylize_pairs` with the config's checkpoint and
    controls; returns the rows and the lines to show the user (a folder's summary; why the checkpoint cannot
    stylise, last)."""
    from train.stylising import cannot_stylise

    contents, styles = list_images(cfg.content), list_images(cfg.style)
    stylizer = Stylizer(cfg.checkpoint, cfg.device, cfg.alpha, cfg.blur, cfg.max_side, cfg.style_size,
                        prior_weight=cfg.prior_weight, steps=cfg.steps, attention_mode=cfg.attention_mode,
                        attention_chunk=cfg.attention_chunk, max_style_tokens=cfg.max_style_tokens)
    meta = getattr(stylizer.model, "checkpoint_meta", None)
    cannot = cannot_stylise(meta["model_config"], meta["step"]) if meta else None
    rows = stylize_pairs(stylizer, contents, styles, cfg.out)
    notes = []
    if Path(cfg.out).is_dir():  # a folder of pairs (one pair into a file says nothing more)
        failed = sum(r["status"] != "ok" for r in rows)
        notes.append(f"{len(rows) - failed} of {len(rows)} pairs stylised into {cfg.out}"
                     + (f"; {failed} failed (their errors are in {Path(cfg.out) / 'results.csv'})" if failed else ""))
    if cannot:
        notes.append(f"note: {cfg.checkpoint} cannot stylise: {cannot}")
    return rows, notes

class AdaptingStylizer:
    """A meta-trained MetaStyle model as a ``(content, style) -> image`` callable, like :class:`Stylizer`.

    The first time a style is seen (recognised by a hash of its pixels) a copy of the model is adapted to it by
    ``steps`` Adam updates on random ``crop`` x ``crop`` crops of ``contents`` (``MetaStyle.adapt``); later calls with
    that style run the adapted feed-forward network. ``adapt_seconds`` holds each adaptation's wall time;
    :meth:`feed_forward` is the adapted network alone (what a speed table times).
    """

    def __init__(self, source: str | torch.nn.Module, contents: list[torch.Tensor], device: str = "auto",
                 steps: int | None = None, crop: int = 256, batch: int = 4, max_side: int = 3840,
                 style_size: int = 512, seed: int = 0):
        from train.models.metastyle import MetaStyle, fit_for_crops

        base = Stylizer(source, device, max_side=max_side, style_size=style_size)
        if not isinstance(base.model, MetaStyle):
            raise BadInputError(f"{source}: holds a {type(base.model).__name__}, not a MetaStyle model")
        if not contents:
            raise MissingInputError("MetaStyle adaptation needs at least one readable content image")
        self.model, self.device = base.model, base.device
        self.max_side, self.style_size = max_side, style_size
        self.steps, self.crop, self.batch, self.seed = steps, crop, batch, seed
        self.contents = [fit_for_crops(img, crop).to(self.device) for img in contents]
        self.adapted: dict[str, torch.nn.Module] = {}
        self.adapt_seconds: list[float] = []
        self._last: torch.nn.Module | None = None

    def adapt(self, style: torch.Tensor, name: str = "") -> torch.nn.Module:
        """The network adapted to ``style`` (adapting it now if this style is new)."""
        from train.models.metastyle import random_crops

        style = resize_max_side(style, self.style_size)
        key = hashlib.sha1(style.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        if key not in self.adapted:
            gen = torch.Generator().manual_seed(self.seed)  # every style sees the same crops
            model, info = self.model.adapt(style.to(self.device),
                                           lambda step: random_crops(self.contents, self.crop, self.batch, gen),
                                           steps=self.steps, style_name=name or key)
            self.adapted[key] = model
            self.adapt_seconds.append(info["seconds"])
        self._last = self.adapted[key]
        return self._last

    def __call__(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        model = self.adapt(style)
        with torch.inference_mode():
            return model.stylize(resize_max_side(content, self.max_side).to(self.device))

    def feed_forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """The last adapted network on ``content`` (adapting to ``style`` first when none is): no hashing."""
        model = self._last if self._last is not None else self.adapt(style)
        with torch.inference_mode():
            return model.stylize(content.to(self.device))

    def costs(self) -> dict[str, float | None]:
        """The speed-table column: mean adaptation seconds per style."""
        mean = sum(self.adapt_seconds) / len(self.adapt_seconds) if self.adapt_seconds else None
        return {ADAPTATION_HEADER: mean}
