"""Evaluate style-transfer models on content-style pairs: a quality table (NeAT Table 1) and a speed table (Table 2).

``python pipelines/evaluate_st.py --pairs pairs.csv --model neat=ckpt.pt --no-blur-row --out eval/``

Rows come from checkpoints (``--model NAME=CKPT``, stylised here) and/or folders of precomputed outputs of other
methods (``--outputs NAME=DIR`` holding ``<content>_stylized_<style>.png``, the naming of pipelines/stylize.py).
Pairs come from a CSV with ``content`` and ``style`` columns or from every pair of ``--content DIR`` x ``--style DIR``.
Writes ``quality.md/.csv`` (LPIPS, SIFID, Chamfer, SSIM, Gram x 1e3, means over pairs), ``speed.md/.csv``
(seconds per image at each ``--timing-sizes``) and ``per_pair.csv``. A pair whose image cannot be read becomes a
row with status ``error`` in ``per_pair.csv`` and is left out of the means (the count is in the table).
"""

from __future__ import annotations

import argparse
import copy
import csv
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/evaluate_st.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch, numpy and the model code are imported inside main(): `--help` prints before torch loads
from curate.cli import ConfigFlags, add_config_file_flags, error_boundary, exit_with, load_args, make_parser
from curate.config import ConfigError
from curate.errors import BadInputError, MissingInputError

log = logging.getLogger("bbst.evaluate")
METRICS = ("lpips", "sifid", "chamfer", "ssim", "gram")
HEADERS = {"lpips": "LPIPS ↓", "sifid": "SIFID ↓", "chamfer": "Chamfer ↓", "ssim": "SSIM ↑", "gram": "Gram ↓ (x10^3)"}


@dataclass
class EvalConfig:
    pairs: str = ""  # CSV with content,style columns (paths relative to the CSV allowed)
    content: str = ""  # or: folder of content images (every content x style pair)
    style: str = ""  # folder (or file) of style images, with --content
    models: list[str] = field(default_factory=list)  # NAME=CHECKPOINT rows stylised here
    outputs: list[str] = field(default_factory=list)  # NAME=DIR rows of precomputed <content>_stylized_<style>.png
    no_blur_row: bool = False  # add a "NAME (no prior blurring)" row per checkpoint (blur=0), as in Table 1
    alpha: float = 1.0  # style strength for checkpoint rows
    max_side: int = 1024  # content long side used for the quality table
    style_size: int = 512  # style long side fed to checkpoint models
    timing_sizes: list[str] = field(default_factory=lambda: ["256x256", "512x512", "1920x1080"])  # WxH for speed
    timing_repeats: int = 3  # timed runs per size (median reported) after one warm-up
    vgg_weights: str = "auto"  # VGG-19 for the Gram distance ("auto" = local torch cache / $BBST_VGG19_WEIGHTS)
    lpips_net: str = "alex"  # LPIPS backbone: "alex" (LPIPS default) or "vgg"
    lpips_backbone: str = "auto"  # LPIPS backbone weights file ("auto" = torch hub checkpoints dir)
    inception_weights: str = "auto"  # InceptionV3 weights for SIFID ("auto" = torch hub checkpoints dir)
    random_metrics: bool = False  # random-init metric backbones: smoke tests only, numbers are meaningless
    device: str = "auto"  # "auto", "cpu", "cuda"...
    out: str = "eval"  # output folder


def read_pairs(cfg: EvalConfig) -> list[tuple[Path, Path]]:
    from pipelines.stylize import list_images

    if cfg.pairs:
        path = Path(cfg.pairs)
        if not path.is_file():
            raise MissingInputError(f"--pairs {path}: pairs CSV not found")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"content", "style"} <= set(reader.fieldnames):
                raise BadInputError(f"{path}: needs 'content' and 'style' columns, has {reader.fieldnames}")
            rows = list(reader)
        base = path.parent

        def resolve(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() else base / q

        return [(resolve(r["content"]), resolve(r["style"])) for r in rows]
    if cfg.content and cfg.style:
        return [(c, s) for c in list_images(cfg.content) for s in list_images(cfg.style)]
    raise ConfigError("give --pairs CSV or both --content and --style")


def _named(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--{what} {item!r}: expected NAME=PATH")
        name, path = item.split("=", 1)
        out.append((name, path))
    return out


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"timing size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
    return w, h


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _write_table(out: Path, stem: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
    (out / f"{stem}.md").write_text((note + "\n\n" if note else "") + _markdown(header, rows))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


EXAMPLES = (
    ("bbst evaluate --pairs pairs.csv --model neat=ckpt.pt --no-blur-row --out eval/",
     "quality and speed tables of one checkpoint, with and without the prior blur (NeAT Tables 1 and 2)"),
    ("bbst evaluate --content photos/ --style styles/ --outputs other=other/ --random-metrics --out smoke/",
     "every content x style pair against another method's saved outputs; random metric nets (a smoke run)"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("evaluate", __doc__.split("\n")[0], EXAMPLES)
    add_config_file_flags(p, "EvalConfig", "max_side=512")
    flags = ConfigFlags(EvalConfig)  # the dataclass comments are the option docs
    for name in ("pairs", "content", "style"):
        flags.add(p, name, metavar="PATH")
    flags.add(p, "models", "--model", action="append", metavar="NAME=CKPT")
    flags.add(p, "outputs", action="append", metavar="NAME=DIR")
    flags.add(p, "timing_sizes", metavar="WxH")
    flags.add(p, "no_blur_row", action="store_true")
    flags.add(p, "random_metrics", action="store_true")
    flags.add_rest(p)  # every other option, in the dataclass's order
    p.set_defaults(config_flags=flags)
    return p


@error_boundary("evaluate")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_args(EvalConfig, args, args.config_flags)
    if not cfg.models and not cfg.outputs:
        raise ConfigError("nothing to evaluate: give --model NAME=CKPT and/or --outputs NAME=DIR")
    pairs = read_pairs(cfg)
    sizes = [_parse_size(s) for s in cfg.timing_sizes]
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipelines.stylize import Stylizer, load_image, resize_max_side
    from train.metrics import StyleTransferMetrics, seconds_per_image

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if cfg.device == "auto" else cfg.device)
    if cfg.random_metrics:
        metrics = StyleTransferMetrics.random_init(device)
    else:
        metrics = StyleTransferMetrics(cfg.vgg_weights, cfg.lpips_net, cfg.lpips_backbone, cfg.inception_weights,
                                       device)

    # rows: (label, producer(content, style, cpath, spath) -> output tensor, stylizer or None)
    rows = []
    for name, ckpt in _named(cfg.models, "model"):
        base = Stylizer(ckpt, device, cfg.alpha, None, cfg.max_side, cfg.style_size)
        rows.append((name, base))
        if cfg.no_blur_row:
            no_blur = copy.copy(base)  # shares the loaded model; only the prior blur changes
            no_blur.blur = 0.0
            rows.append((f"{name} (no prior blurring)", no_blur))
    for name, folder in _named(cfg.outputs, "outputs"):
        if not Path(folder).is_dir():
            raise MissingInputError(f"--outputs {name}={folder}: folder not found")
        rows.append((name, Path(folder)))

    per_pair: list[dict] = []
    quality_rows: list[list[str]] = []
    speed_rows: list[list[str]] = []
    for label, producer in rows:
        scores: dict[str, list[float]] = {m: [] for m in METRICS}
        for cpath, spath in pairs:
            rec = {"model": label, "content": str(cpath), "style": str(spath), "status": "ok", "error": ""}
            try:
                content = resize_max_side(load_image(cpath), cfg.max_side)
                style = load_image(spath)
                if isinstance(producer, Path):
                    result = load_image(producer / f"{cpath.stem}_stylized_{spath.stem}.png")
                    if result.shape[-2:] != content.shape[-2:]:
                        result = F.interpolate(result, size=content.shape[-2:], mode="bilinear", antialias=True)
                else:
                    result = producer(content, style).cpu()
            except (FileNotFoundError, ValueError) as exc:
                rec.update(status="error", error=str(exc))
                log.warning("%s: %s", label, exc)
                per_pair.append(rec)
                continue
            m = metrics(result, content, resize_max_side(style, cfg.max_side))
            for k in METRICS:
                scores[k].append(m[k][0])
                rec[k] = m[k][0]
            per_pair.append(rec)
        n = len(scores["lpips"])
        means = {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}
        quality_rows.append([label, str(n)] + [f"{means[k] * (1e3 if k == 'gram' else 1):.3f}" for k in METRICS])
        if not isinstance(producer, Path):
            g = torch.Generator().manual_seed(0)
            style = torch.rand(1, 3, cfg.style_size, cfg.style_size, generator=g)
            times = []
            for w, h in sizes:
                content = torch.rand(1, 3, h, w, generator=g)
                times.append(seconds_per_image(producer, content, style, repeats=cfg.timing_repeats))
                log.info("%s: %dx%d %.3fs/image", label, w, h, times[-1])
            speed_rows.append([label] + [f"{t:.3f}" for t in times])

    note = "Metric backbones are RANDOM (smoke run): the numbers are meaningless." if cfg.random_metrics else ""
    _write_table(out, "quality", ["Model", "pairs"] + [HEADERS[k] for k in METRICS], quality_rows, note)
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    _write_table(out, "speed", ["Model"] + [f"{w}x{h} (s) ↓" for w, h in sizes], speed_rows,
                 f"Seconds per image on {device_name} (median of {cfg.timing_repeats}, style {cfg.style_size} px).")
    with open(out / "per_pair.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "content", "style", "status", "error", *METRICS])
        w.writeheader()
        w.writerows(per_pair)
    log.info("wrote %s", out)
    return {"quality": quality_rows, "speed": speed_rows, "per_pair": per_pair}


if __name__ == "__main__":
    exit_with(main())
