"""Compare every trained model on the same content-style pairs: one table and one image grid (PNG + HTML).

``python pipelines/compare_models.py --pairs pairs.csv --model NeAT=neat.pt --model "NeAT (balanced)"=bal.pt
--model Variational=vst.pt --model MetaStyle=meta.pt --out comparison/``

Each ``--model NAME=CKPT`` is any trainer checkpoint (NeAT, RAST, balanced-loss variants, the variational model,
MetaStyle). A meta-trained MetaStyle checkpoint is first adapted to every style of the pairs (``--adapt-steps``
Adam steps on ``--adapt-content`` crops, default: the pairs' content images); its mean adaptation time per style is
its own column and its speed columns time the adapted feed-forward network.

Writes ``comparison.md``/``.csv`` (LPIPS, SIFID, Chamfer, SSIM, Gram x 1e3 as means over pairs; seconds per image at
each ``--timing-sizes``; adaptation seconds; deception rate when ``--artist-model`` and ``--artists`` are given),
``per_pair.csv``, ``images/`` (every output), ``grid.png`` (one row per pair: content, style, then each model) and
``grid.html`` (the same grid with the table). A pair whose image cannot be read is a row with status ``error`` in
``per_pair.csv`` and is left out of the means.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/compare_models.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from curate.config import ConfigError
from curate.errors import BbstError
from pipelines.evaluate_st import HEADERS, METRICS, _markdown, _named, _parse_size
from pipelines.stylize import Stylizer, list_images, load_image, resize_max_side, save_image

log = logging.getLogger("bbst.compare")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", dest="models", action="append", required=True, metavar="NAME=CKPT",
                   help="a model row: display name and trainer checkpoint (repeatable)")
    p.add_argument("--pairs", default="", help="CSV with content,style columns (paths relative to the CSV allowed)")
    p.add_argument("--content", default="", help="or: content folder (every content x style pair)")
    p.add_argument("--style", default="", help="style folder or file, with --content")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-side", type=int, default=512, help="content long side for the quality table")
    p.add_argument("--style-size", type=int, default=512, help="style long side fed to the models")
    p.add_argument("--timing-sizes", nargs="+", default=["512x512", "1920x1080"], metavar="WxH",
                   help="sizes of the seconds-per-image columns")
    p.add_argument("--timing-repeats", type=int, default=3, help="timed runs per size (median) after a warm-up")
    p.add_argument("--adapt-steps", type=int, default=None, help="MetaStyle adaptation steps (default: its own)")
    p.add_argument("--adapt-content", default="", help="MetaStyle adaptation content folder (default: the pairs')")
    p.add_argument("--adapt-crop", type=int, default=256, help="MetaStyle adaptation crop size")
    p.add_argument("--adapt-batch", type=int, default=4, help="MetaStyle adaptation crops per step")
    p.add_argument("--artist-model", default="", help="artist classifier (torch.export / TorchScript file)")
    p.add_argument("--artists", default="", help="CSV style,artist: the artist of each style image")
    p.add_argument("--artist-names", default="", help="text file, one artist per line in logit order (classify)")
    p.add_argument("--deception-mode", choices=("classify", "nearest"), default="classify",
                   help="classify: arg-max artist; nearest: artist of the nearest style image (references: styles)")
    p.add_argument("--artist-input-size", type=int, default=224, help="square input size of the artist model")
    p.add_argument("--cell", type=int, default=192, help="grid cell size in pixels")
    p.add_argument("--vgg-weights", default="auto", help="VGG-19 weights of the Gram metric")
    p.add_argument("--lpips-net", default="alex", help="LPIPS backbone: alex or vgg")
    p.add_argument("--lpips-backbone", default="auto", help="LPIPS backbone weights file")
    p.add_argument("--inception-weights", default="auto", help="InceptionV3 weights of SIFID")
    p.add_argument("--random-metrics", action="store_true", help="random metric backbones: smoke runs only")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda...")
    return p


def _pairs(args) -> list[tuple[Path, Path]]:
    from pipelines.evaluate_st import EvalConfig, read_pairs

    try:
        return read_pairs(EvalConfig(pairs=args.pairs, content=args.content, style=args.style))
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise BbstError(f"pairs: {exc}") from None


class ModelRow:
    """One table row: a loaded checkpoint; MetaStyle checkpoints are adapted per style (cached) before use.

    A plain ``(content, style) -> image`` callable, so it also serves as the stylising function of an evaluation
    row; a style is recognised by the hash of its pixels.
    """

    def __init__(self, name: str, checkpoint: str, args, adapt_images: list[torch.Tensor]):
        from train.models.metastyle import MetaStyle

        self.name = name
        self.stylizer = Stylizer(checkpoint, args.device, 1.0, None, args.max_side, args.style_size)
        self.is_meta = isinstance(self.stylizer.model, MetaStyle) and not self.stylizer.model.cfg.adapted_style
        self.args, self.adapt_images = args, adapt_images
        self.adapted: dict[str, torch.nn.Module] = {}
        self.adapt_seconds: list[float] = []

    def _adapted(self, key: str, style: torch.Tensor, style_name: str) -> torch.nn.Module:
        from pipelines.metastyle import random_crops

        if key not in self.adapted:
            dev = self.stylizer.device
            images = [im.to(dev) for im in self.adapt_images]
            gen = torch.Generator().manual_seed(0)
            model, info = self.stylizer.model.adapt(
                resize_max_side(style, self.args.style_size).to(dev),
                lambda step: random_crops(images, self.args.adapt_crop, self.args.adapt_batch, gen),
                steps=self.args.adapt_steps, style_name=style_name)
            self.adapted[key] = model
            self.adapt_seconds.append(info["seconds"])
            log.info("%s: adapted to %s in %.2fs", self.name, style_name, info["seconds"])
        return self.adapted[key]

    def __call__(self, content: torch.Tensor, style: torch.Tensor, style_name: str = "") -> torch.Tensor:
        if not self.is_meta:
            return self.stylizer(content, style)
        key = hashlib.sha1(style.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
        model = self._adapted(key, style, style_name or key)
        with torch.inference_mode():
            return model.stylize(resize_max_side(content, self.args.max_side).to(self.stylizer.device))

    def timing_fn(self):
        """The callable timed for the speed columns: the adapted network for MetaStyle, else the model."""
        if not self.is_meta:
            return self.stylizer
        model = next(iter(self.adapted.values()))
        return lambda content, style: model.stylize(content.to(self.stylizer.device))


def _fit_min_side(img: torch.Tensor, side: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    if min(h, w) >= side:
        return img
    s = side / min(h, w)
    return torch.nn.functional.interpolate(img, size=(max(side, round(h * s)), max(side, round(w * s))),
                                           mode="bilinear")


def _deception(args, pairs):
    if not args.artist_model:
        return None, {}
    from train.deception import DeceptionRate, load_artist_model, read_artist_csv

    if not args.artists:
        raise BbstError("--artist-model needs --artists CSV (style,artist)")
    style_artist = read_artist_csv(args.artists)
    missing = sorted({s.stem for _, s in pairs} - set(style_artist))
    if missing:
        raise BbstError(f"--artists {args.artists}: no artist for style(s) {missing[:5]}")
    names = None
    if args.deception_mode == "classify":
        if not args.artist_names:
            raise BbstError("--deception-mode classify needs --artist-names (one artist per line, logit order)")
        names = [n.strip() for n in Path(args.artist_names).read_text().splitlines() if n.strip()]

    def make():
        rate = DeceptionRate(load_artist_model(args.artist_model, args.device_resolved), args.deception_mode, names,
                             input_size=args.artist_input_size, device=args.device_resolved)
        if args.deception_mode == "nearest":
            # references: the evaluated style images themselves (squared to the model's input size)
            styles = sorted({s for _, s in pairs})
            refs = [torch.nn.functional.interpolate(load_image(s), size=(rate.input_size, rate.input_size),
                                                    mode="bilinear", antialias=True) for s in styles]
            rate.set_references(torch.cat(refs), [style_artist[s.stem] for s in styles])
        return rate

    return make, style_artist


def _fmt(v: float, scale: float = 1.0) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.3f}"


def main(argv: list[str] | None = None) -> dict:
    from train.metrics import StyleTransferMetrics, seconds_per_image

    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    args.device_resolved = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    args.device = args.device_resolved
    pairs = _pairs(args)
    sizes = [_parse_size(s) for s in args.timing_sizes]
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if args.random_metrics:
        metrics = StyleTransferMetrics.random_init(args.device)
    else:
        metrics = StyleTransferMetrics(args.vgg_weights, args.lpips_net, args.lpips_backbone, args.inception_weights,
                                       args.device)
    make_deception, style_artist = _deception(args, pairs)

    # MetaStyle adaptation content: a folder, or the pairs' own content images (read once)
    adapt_paths = list_images(args.adapt_content) if args.adapt_content else sorted({c for c, _ in pairs})
    adapt_images = []
    for p in adapt_paths:
        try:
            adapt_images.append(_fit_min_side(resize_max_side(load_image(p), 2 * args.adapt_crop), args.adapt_crop))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("adaptation content: skipping %s", exc)
    rows = [ModelRow(name, ckpt, args, adapt_images) for name, ckpt in _named(args.models, "model")]
    if any(r.is_meta for r in rows) and not adapt_images:
        raise BbstError("MetaStyle adaptation needs readable content images (--adapt-content)")

    # inputs, read once; unreadable pairs become error rows
    inputs: list[tuple[Path, Path, torch.Tensor | None, torch.Tensor | None, str]] = []
    for cpath, spath in pairs:
        try:
            inputs.append((cpath, spath, resize_max_side(load_image(cpath), args.max_side), load_image(spath), ""))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("pair %s x %s: %s", cpath.name, spath.name, exc)
            inputs.append((cpath, spath, None, None, str(exc)))

    per_pair: list[dict] = []
    table: list[dict] = []
    grid_rows: list[list[torch.Tensor | None]] = [[c, s] for _, _, c, s, err in inputs if not err]
    grid_files: list[list[str]] = [[] for _ in grid_rows]
    for row in rows:
        scores: dict[str, list[float]] = {m: [] for m in METRICS}
        deception = make_deception() if make_deception else None
        g = 0
        for cpath, spath, content, style, err in inputs:
            rec = {"model": row.name, "content": str(cpath), "style": str(spath), "status": "ok", "error": err}
            if err:
                rec["status"] = "error"
                per_pair.append(rec)
                continue
            result = row(content, style, spath.stem).cpu()
            fname = f"{_slug(row.name)}__{cpath.stem}_stylized_{spath.stem}.png"
            save_image(result, out / "images" / fname)
            m = metrics(result, content, resize_max_side(style, args.max_side))
            for k in METRICS:
                scores[k].append(m[k][0])
                rec[k] = m[k][0]
            if deception is not None:
                rec["deceived"] = deception.add(result, [style_artist[spath.stem]])[0]
            per_pair.append(rec)
            grid_rows[g].append(result)
            grid_files[g].append(fname)
            g += 1
        entry = {"model": row.name, "pairs": len(scores["lpips"]),
                 **{k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}}
        timing = row.timing_fn() if (not row.is_meta or row.adapted) else None
        gen = torch.Generator().manual_seed(0)
        style_t = torch.rand(1, 3, args.style_size, args.style_size, generator=gen)
        for w, h in sizes:
            entry[f"{w}x{h}"] = (seconds_per_image(timing, torch.rand(1, 3, h, w, generator=gen).to(args.device),
                                                   style_t.to(args.device), repeats=args.timing_repeats)
                                 if timing is not None else float("nan"))
            log.info("%s: %dx%d %.3fs/image", row.name, w, h, entry[f"{w}x{h}"])
        entry["adapt_s"] = float(np.mean(row.adapt_seconds)) if row.adapt_seconds else None
        entry["adapted_styles"] = len(row.adapted)
        if deception is not None:
            entry.update(deception.result())
        table.append(entry)

    header = ["Model", "pairs"] + [HEADERS[k] for k in METRICS] + [f"{w}x{h} (s/img) ↓" for w, h in sizes] + \
        ["adaptation (s/style) ↓"] + (["deception ↑"] if make_deception else [])
    md_rows = [[e["model"], str(e["pairs"])] + [_fmt(e[k], 1e3 if k == "gram" else 1.0) for k in METRICS]
               + [_fmt(e[f"{w}x{h}"]) for w, h in sizes] + [_fmt(e["adapt_s"])]
               + ([_fmt(e.get("deception_rate"))] if make_deception else []) for e in table]
    device_name = torch.cuda.get_device_name(0) if str(args.device).startswith("cuda") else "CPU"
    note = (f"Means over {len(pairs)} content-style pairs; seconds per image on {device_name} (median of "
            f"{args.timing_repeats}, style {args.style_size} px). Adaptation: MetaStyle's steps per new style.")
    if args.random_metrics:
        note += " Metric backbones are RANDOM (smoke run): the numbers are meaningless."
    markdown = note + "\n\n" + _markdown(header, md_rows)
    (out / "comparison.md").write_text(markdown)
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(md_rows)
    keys = ["model", "content", "style", "status", "error", *METRICS] + (["deceived"] if make_deception else [])
    with open(out / "per_pair.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(per_pair)
    if grid_rows:
        from train.image_grid import save_grid

        save_grid(grid_rows, out / "grid.png", cell=args.cell)
        for i, row in enumerate(grid_rows):  # the inputs beside the outputs in the HTML grid
            for j, kind in enumerate(("content", "style")):
                save_image(row[j], out / "images" / f"_{kind}_{i}.png")
                grid_files[i].insert(j, f"_{kind}_{i}.png")
        (out / "grid.html").write_text(_html(header, md_rows, [r.name for r in rows], grid_files, note))
    log.info("wrote %s", out)
    return {"table": table, "per_pair": per_pair, "markdown": markdown}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name).strip("_") or "model"


def _html(header: list[str], rows: list[list[str]], models: list[str], files: list[list[str]], note: str) -> str:
    esc = html.escape
    table = "<table class='scores'><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in ["content", "style", *models]) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td><a href='images/{esc(f)}'><img src='images/{esc(f)}' loading='lazy'></a>"
                                    f"</td>" for f in row) + "</tr>" for row in files)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Style-transfer model comparison</title><style>"
            "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px;text-align:center}img{max-width:192px;max-height:192px}</style></head><body>"
            f"<h1>Style-transfer model comparison</h1><p>{esc(note)}</p>{table}<h2>Outputs</h2>"
            f"<table class='grid'>{head}{body}</table></body></html>\n")


if __name__ == "__main__":
    main()
