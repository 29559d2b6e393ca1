"""Evaluation protocol files and the evaluation that reproduces NeAT's Table 1 (quality) and Table 2 (speed).

A **protocol** (YAML, :class:`Protocol`) fixes what is compared: content and style image lists (paths relative to
the protocol file, absolute paths or fsspec URLs), the pairs (every content x style, or an explicit index list),
the sizes, the metrics and the timing settings. ``train/protocols/neat_paper.yaml`` is the paper's shape (15 x 50
pairs, native size up to 1024 px plus the 512 x 512 rows, timing at 256^2, 512^2 and 1920 x 1080);
``pipelines/make_protocol.py`` fills it with images the user supplies; :func:`write_tiny_protocol` generates a tiny
one for tests.

API for any model family (used by ``pipelines/evaluate.py``, ``pipelines/rast_ablation.py`` and
``pipelines/compare.py``)::

    protocol = load_protocol("protocol.yaml")
    rows = [Row("NeAT", Stylizer("neat.pt")), Row("NeAT (no prior blurring)", Stylizer("neat.pt", blur=0.0)),
            Row("CAST", outputs="cast_outputs/")]       # precomputed <content>_stylized_<style>.png files
    result = evaluate(protocol, rows, "eval/", StyleTransferMetrics(...))
    write_comparison(result, "eval/")                  # optional: quality, speed and extra columns in one table

``Row.stylize`` is any callable ``(content, style) -> image`` on (1, 3, H, W) tensors in [0, 1] (a
``train.inference.Stylizer`` for registered models, a ``train.inference.AdaptingStylizer`` for a meta-trained
MetaStyle). ``Row.timing_fn`` replaces it in the speed table (e.g. an adapted network without its per-style cache)
and ``Row.costs`` adds columns to it (e.g. MetaStyle's adaptation seconds per style). Per-output scores beyond the
protocol's metrics (e.g. the deception rate, ``train.deception.DeceptionScorer``) are ``scorers``: each adds a
column to the quality table and to ``per_pair.csv``. :func:`evaluate` writes ``quality.md/.csv`` (Table 1 shape),
``speed.md/.csv`` (Table 2 shape), ``per_pair.csv`` (every pair, with status ``ok`` or ``error``), ``grid.html``
(the tables and an image grid of the first ``grid_pairs`` pairs with every row's output) and ``grid.png`` (the same
grid as one image).

Size specs: ``WxH`` = scaled (aspect kept) to cover W x H and centre-cropped, ``max:N`` = long side at most N
(aspect kept, never upscaled), ``native`` = as stored. The paper does not say how its 512 x 512 inputs were made;
cropping is chosen so that no image is distorted.
"""

from __future__ import annotations

import csv
import hashlib
import html
import logging
import math
import os
import random
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from core.config import ConfigError, from_dict, read_yaml, resolve_file, to_dict
from core.progress import ProgressMeter
from core.tables import read_csv_rows
from train.inference import load_image, resize_cover_crop, resize_max_side, save_image
from train.metrics import METRIC_NAMES, STYLE_MATCH_MODES, seconds_per_image

log = logging.getLogger("bbst.evaluate")
HEADERS = {"lpips": "LPIPS ↓", "sifid": "SIFID ↓", "chamfer": "Chamfer ↓", "ssim": "SSIM ↑", "gram": "Gram ↓ (×10³)"}
SCALE = {"gram": 1e3}  # Table 1 reports the Gram distance x 10^3
STYLE_CACHE_SIDE = 2048  # style images are kept at most this long side during an evaluation


@dataclass
class Protocol:
    name: str = "custom"  # label written into the tables
    contents: list[str] = field(default_factory=list)  # content images: relative to this file, absolute, or URLs
    styles: list[str] = field(default_factory=list)  # style images
    pairs: list[list[int]] = field(default_factory=list)  # [[content_index, style_index], ...]; empty = all pairs
    sizes: list[str] = field(default_factory=lambda: ["max:1024", "512x512"])  # quality sizes; the first = main rows
    metrics: list[str] = field(default_factory=lambda: list(METRIC_NAMES))  # subset of lpips sifid chamfer ssim gram
    style_size: int = 512  # style images enter the models at this long side (0 = as stored)
    style_match: str = "crop"  # style brought to the output's size for SIFID/Gram: "crop" or "pad", never stretched
    timing_sizes: list[str] = field(default_factory=lambda: ["256x256", "512x512", "1920x1080"])  # Table 2 columns
    timing_warmup: int = 3  # untimed calls per size before timing (CUDA context, cudnn autotune, allocator)
    timing_repeats: int = 10  # timed calls per size; the median is reported
    grid_pairs: int = 24  # pairs shown in grid.html (0 = none)
    n_content: int = 0  # content images make_protocol.py picks (0 = all given); the paper: 15
    n_style: int = 0  # style images make_protocol.py picks (0 = all given); the paper: 50
    seed: int = 0  # seed of make_protocol.py's random pick
    sha256: dict[str, str] = field(default_factory=dict)  # image -> checksum, recorded by make_protocol.py
    notes: str = ""  # free text: where the images come from, licences

    def __post_init__(self) -> None:
        for spec in self.sizes + self.timing_sizes:
            parse_size(spec)
        unknown = set(self.metrics) - set(METRIC_NAMES)
        if unknown:
            raise ConfigError(f"protocol metrics: unknown {sorted(unknown)}; known: {', '.join(METRIC_NAMES)}")
        if self.style_match not in STYLE_MATCH_MODES:
            raise ConfigError(f"protocol style_match: {self.style_match!r} not in {STYLE_MATCH_MODES}")
        for p in self.pairs:
            if len(p) != 2 or not (0 <= p[0] < len(self.contents) and 0 <= p[1] < len(self.styles)):
                raise ConfigError(f"protocol pairs: {p} is not a [content_index, style_index] within the lists "
                                  f"({len(self.contents)} contents, {len(self.styles)} styles)")

    def pair_list(self) -> list[tuple[int, int]]:
        if self.pairs:
            return [(int(c), int(s)) for c, s in self.pairs]
        return [(c, s) for c in range(len(self.contents)) for s in range(len(self.styles))]


def parse_size(spec: str) -> tuple[str, int, int]:
    """``"WxH"`` -> ("exact", W, H); ``"max:N"`` -> ("max", N, N); ``"native"`` -> ("native", 0, 0)."""
    text = str(spec).strip().lower()
    if text == "native":
        return "native", 0, 0
    m = re.fullmatch(r"max:(\d+)", text)
    if m and int(m.group(1)) > 0:
        return "max", int(m.group(1)), int(m.group(1))
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return "exact", int(m.group(1)), int(m.group(2))
    raise ConfigError(f"size {spec!r}: expected WIDTHxHEIGHT (e.g. 1920x1080), max:N (e.g. max:1024) or native")


def apply_size(img: torch.Tensor, spec: str) -> torch.Tensor:
    kind, w, h = parse_size(spec)
    if kind == "exact":
        return resize_cover_crop(img, h, w)
    if kind == "max":
        return resize_max_side(img, w)
    return img


def load_protocol(path: str | Path) -> tuple[Protocol, Path]:
    """Read a protocol YAML strictly (unknown keys are errors); returns it and the folder paths are relative to."""
    path = Path(resolve_file(path, "protocol", "--protocol"))  # a path, or a packaged protocol's name
    if not path.is_file():
        raise ConfigError(f"{path}: protocol file not found")
    proto = from_dict(Protocol, read_yaml(path), str(path))
    if not proto.contents or not proto.styles:
        raise ConfigError(f"{path}: protocol lists no {'contents' if not proto.contents else 'styles'}",
                          hint="build one from your images: python pipelines/make_protocol.py --help")
    return proto, path.parent


def save_protocol(proto: Protocol, path: str | Path) -> None:
    from core.atomic import atomic_write

    text = yaml.safe_dump(to_dict(proto), sort_keys=False, allow_unicode=True)
    atomic_write(str(path), lambda f: f.write(text.encode()))


def resolve(base: Path, item: str) -> str:
    """A protocol entry as a loadable path: URLs and absolute paths as they are, others relative to the file."""
    if "://" in item or os.path.isabs(item):
        return item
    return str(base / item)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(proto: Protocol, base: str | Path) -> None:
    """Refuse a protocol whose recorded local images changed since ``make_protocol.py`` recorded them."""
    for item, digest in proto.sha256.items():
        path = resolve(Path(base), item)
        if "://" in path or not os.path.isfile(path):
            continue  # a missing file becomes an error row per pair, as any unreadable image
        if sha256_of(path) != digest:
            raise ConfigError(f"{path}: image differs from the one the protocol recorded (sha256 mismatch)",
                              hint="rebuild the protocol with pipelines/make_protocol.py or restore the image")


def write_tiny_protocol(directory: str | Path, n_content: int = 2, n_style: int = 2, seed: int = 0) -> Path:
    """A generated protocol for tests: small synthetic photos and artworks (one style non-square), tiny sizes."""
    from core.synthetic import artwork_like, photo_like

    d = Path(directory)
    (d / "content").mkdir(parents=True, exist_ok=True)
    (d / "style").mkdir(parents=True, exist_ok=True)
    contents, styles = [], []
    for i in range(n_content):
        photo_like(72 + 8 * i, 48, seed=seed + i).save(d / "content" / f"c{i}.jpg")
        contents.append(f"content/c{i}.jpg")
    for i in range(n_style):
        artwork_like(48 + 16 * (i % 2), 48, seed=seed + 100 + i).save(d / "style" / f"s{i}.png")
        styles.append(f"style/s{i}.png")
    proto = Protocol(name="tiny", contents=contents, styles=styles, sizes=["max:64", "48x48"],
                     timing_sizes=["32x32", "48x32"], timing_warmup=1, timing_repeats=2, grid_pairs=4,
                     sha256={p: sha256_of(d / p) for p in contents + styles}, notes="generated by write_tiny_protocol")
    save_protocol(proto, d / "protocol.yaml")
    return d / "protocol.yaml"


def gather_images(source: str) -> list[str]:
    """Images of a folder (sorted), one image, or the lines of a text file (paths or URLs, relative to the file)."""
    from core.images import is_image_name
    from train.inference import list_images

    p = Path(source)
    if p.is_dir() or (p.is_file() and is_image_name(p.name)):
        return [str(f) for f in list_images(p)]
    if p.is_file():
        items = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
        return [i if "://" in i or os.path.isabs(i) else str(p.parent / i) for i in items]
    raise ConfigError(f"{source}: no such folder, image or list file")


def pick_images(items: list[str], n: int, rng: random.Random, what: str) -> list[str]:
    """``n`` of ``items`` drawn by ``rng``, sorted (all of them when ``n`` is 0); ``what`` names the flag."""
    if n <= 0:
        return items
    if len(items) < n:
        raise ConfigError(f"--{what}: {n} images wanted, only {len(items)} found",
                          hint=f"add images or pass --n-{what} {len(items)}")
    return sorted(rng.sample(items, n))


def make_protocol(content: str, style: str, out: str | Path, template: str | None = None,
                  n_content: int | None = None, n_style: int | None = None, seed: int | None = None,
                  name: str | None = None) -> Protocol:
    """Pick contents and styles from the images given, write the protocol file ``out`` and return it.

    Settings come from ``template`` (a protocol YAML) or the defaults; ``n_content``, ``n_style`` and ``seed``
    override them when given. Image paths are written relative to ``out``, each local image with its SHA-256.
    """
    template = resolve_file(template, "protocol", "--template") if template else None
    proto = from_dict(Protocol, read_yaml(template), template) if template else Protocol()
    proto.n_content = proto.n_content if n_content is None else n_content
    proto.n_style = proto.n_style if n_style is None else n_style
    proto.seed = proto.seed if seed is None else seed
    rng = random.Random(proto.seed)
    contents = pick_images(gather_images(content), proto.n_content, rng, "content")
    styles = pick_images(gather_images(style), proto.n_style, rng, "style")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    here = out.parent.resolve()

    def relative(item: str) -> str:
        return item if "://" in item else os.path.relpath(Path(item).resolve(), here)

    proto.contents = [relative(c) for c in contents]
    proto.styles = [relative(s) for s in styles]
    proto.pairs = []
    proto.name = name or (proto.name if proto.name != "custom" else out.stem)
    proto.sha256 = {relative(i): sha256_of(i) for i in contents + styles if "://" not in i}
    proto.__post_init__()
    save_protocol(proto, out)
    return proto


def protocol_from_inputs(protocol: str = "", pairs: str = "", content: str = "", style: str = "",
                         ) -> tuple[Protocol, Path]:
    """The protocol a command's inputs name: a protocol file, a pairs CSV (``content``, ``style`` columns; paths
    relative to the CSV allowed) or every pair of a content and a style folder, with the default settings.

    Returns the protocol and the folder its paths are relative to.
    """
    from train.inference import list_images

    if protocol:
        return load_protocol(protocol)
    if pairs:
        path = Path(pairs)
        rows = read_csv_rows(path, ("content", "style"), "pairs CSV", flag="--pairs")
        contents = list(dict.fromkeys(r["content"] for r in rows))
        styles = list(dict.fromkeys(r["style"] for r in rows))
        index = [[contents.index(r["content"]), styles.index(r["style"])] for r in rows]
        return Protocol(name=path.stem, contents=contents, styles=styles, pairs=index), path.parent
    if content and style:
        contents = [str(p.resolve()) for p in list_images(content)]
        styles = [str(p.resolve()) for p in list_images(style)]
        return Protocol(name="folders", contents=contents, styles=styles), Path(".")
    raise ConfigError("give --protocol FILE, --pairs CSV, or both --content and --style")


def override_protocol(protocol: Protocol, sizes: list[str] | None = None, timing_sizes: list[str] | None = None,
                      timing_repeats: int = 0, timing_warmup: int = -1) -> Protocol:
    """Command-line overrides of a protocol's sizes and timing (empty / 0 / -1 = keep the protocol's), validated."""
    if sizes:
        protocol.sizes = list(sizes)
    if timing_sizes:
        protocol.timing_sizes = list(timing_sizes)
    if timing_repeats > 0:
        protocol.timing_repeats = timing_repeats
    if timing_warmup >= 0:
        protocol.timing_warmup = timing_warmup
    protocol.__post_init__()  # re-validate the overridden sizes
    return protocol


def parse_named(items: list[str], flag: str) -> list[tuple[str, str]]:
    """``NAME=PATH`` command-line items -> (name, path) pairs; anything else names the flag."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected NAME=PATH")
        name, path = item.split("=", 1)
        out.append((name, path))
    return out


def build_metrics(protocol: Protocol, device: str, random_init: bool = False, vgg_weights: str = "auto",
                  lpips_net: str = "alex", lpips_backbone: str = "auto", inception_weights: str = "auto"):
    """The protocol's ``StyleTransferMetrics`` with weights from local files (or random backbones: smoke runs)."""
    from train.metrics import StyleTransferMetrics

    kw = {"device": device, "metrics": protocol.metrics, "style_match": protocol.style_match}
    if random_init:
        return StyleTransferMetrics.random_init(**kw)
    from core.weights import WeightsNotFoundError

    try:
        return StyleTransferMetrics(vgg_weights, lpips_net, lpips_backbone, inception_weights, **kw)
    except WeightsNotFoundError as exc:  # the metrics have a way to run without their backbones: say so
        exc.hint = f"{exc.hint}; or run without them: --random-metrics (random backbones, meaningless numbers)"
        raise


RANDOM_METRICS_NOTE = "Metric backbones are RANDOM (smoke run): the numbers are meaningless."


def prepare(cfg: typing.Any) -> tuple[Protocol, Path, str, typing.Any]:
    """``(protocol, base dir, device, metrics)`` for an evaluation command's config.

    ``cfg`` has the protocol input fields (``protocol``, ``pairs``, ``content``, ``style``), the overrides
    (``sizes``, ``timing_sizes``, ``timing_repeats``, ``timing_warmup``), ``device`` and the metric weights
    (``random_metrics``, ``vgg_weights``, ``lpips_net``, ``lpips_backbone``, ``inception_weights``).
    """
    from core.device import resolve_device

    protocol, base = protocol_from_inputs(cfg.protocol, cfg.pairs, cfg.content, cfg.style)
    verify_checksums(protocol, base)
    override_protocol(protocol, cfg.sizes, cfg.timing_sizes, cfg.timing_repeats, cfg.timing_warmup)
    device = str(resolve_device(cfg.device))
    metrics = build_metrics(protocol, device, cfg.random_metrics, cfg.vgg_weights, cfg.lpips_net,
                            cfg.lpips_backbone, cfg.inception_weights)
    return protocol, Path(base), device, metrics


# --------------------------------------------------------------------------------------------------------- running
@dataclass
class Row:
    label: str  # the table's row name
    stylize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (content, style) -> image
    outputs: str | None = None  # or: folder of precomputed <content stem>_stylized_<style stem>.png
    timed: bool = True  # include in the speed table (only rows with ``stylize``)
    timing_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # timed instead of ``stylize``
    costs: Callable[[], dict[str, float | None]] | None = None  # speed-table columns read after the row ran


class Scorer(typing.Protocol):
    """A per-output score beyond the protocol's metrics (e.g. the deception rate): one quality-table column."""

    key: str  # per_pair.csv column
    header: str  # quality-table header

    def begin(self, label: str) -> None:
        """Start a new quality row (a model at one size)."""

    def add(self, result: torch.Tensor, content: str, style: str) -> float:
        """Score one output of ``content`` x ``style`` (their protocol paths); the per-pair value."""

    def value(self) -> float:
        """The row's figure."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "row"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(out: Path, stem: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
    """``stem.md`` (with the note above the table) and ``stem.csv``."""
    (out / f"{stem}.md").write_text((note + "\n\n" if note else "") + _markdown(header, rows))
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _thumb(img: torch.Tensor, path: Path, side: int = 256) -> torch.Tensor:
    small = resize_max_side(img, side)
    save_image(small, path)
    return small


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class=scores><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _write_grid(out: Path, title: str, labels: list[str], cells: list[dict],
                tables: list[tuple[str, list[str], list[list[str]]]] = ()) -> None:
    head = "".join(f"<th>{html.escape(x)}</th>" for x in ["content", "style", *labels])
    body = []
    for cell in cells:
        tds = []
        for key in ["content", "style", *labels]:
            src = cell.get(key)
            tds.append(f'<td><a href="{html.escape(src)}"><img src="{html.escape(src)}" loading="lazy" '
                       f'alt="{html.escape(key)}"></a></td>' if src else "<td class=err>error</td>")
        body.append(f"<tr title=\"{html.escape(cell['pair'])}\">{''.join(tds)}</tr>")
    sections = "".join(f"<h2>{html.escape(name)}</h2>{_html_table(header, rows)}" for name, header, rows in tables)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}} td,th{{padding:2px;text-align:center}}
.scores td,.scores th{{border:1px solid #ccc;padding:4px}} img{{max-width:192px;max-height:192px}}
.err{{color:#b00}}</style></head><body>
<h1>{html.escape(title)}</h1>{sections}<h2>Outputs</h2>
<table class=grid><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
</body></html>"""
    (out / "grid.html").write_text(page)


def _write_grid_png(out: Path, labels: list[str], cells: list[dict], images: dict[str, torch.Tensor],
                    cell_px: int) -> None:
    """``grid.png``: one row per pair (content, style, every row's output; empty where a pair failed), columns
    named above the first row."""
    from train.image_grid import save_grid

    columns = ["content", "style", *labels]
    rows = [[images.get(cell.get(key, "")) for key in columns] for cell in cells if "content" in cell]
    if rows:
        save_grid(rows, out / "grid.png", cell=cell_px, labels=columns)


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def evaluate(protocol: Protocol, rows: list[Row], out: str | Path, metrics, base_dir: str | Path = ".",
             timing: bool = True, note: str = "", scorers: typing.Sequence[Scorer] = (),
             grid_cell: int = 192, progress_interval_s: float = 10.0) -> dict:
    """Run every row on every protocol pair at every protocol size; write the tables, per-pair CSV and grids.

    ``metrics`` is a ``train.metrics.StyleTransferMetrics``; each of ``scorers`` adds a quality column. Progress
    (pairs done of all, rate, ETA, failures) is a live bar on a terminal, else a log line every
    ``progress_interval_s`` seconds and one at the end. A pair whose
    image cannot be read becomes a row with status ``error`` in ``per_pair.csv`` and is left out of the means (the
    count of pairs is in the table). Returns ``{"quality": rows, "speed": rows, "per_pair": records,
    "table": [{"model", "size", "pairs", <metric>..., <scorer key>...}], "timing": [{"model", <size>...,
    <cost header>...}], "headers": {...}, "notes": [...]}`` (the last three feed :func:`write_comparison`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(base_dir)
    pairs = protocol.pair_list()
    content_paths = [resolve(base, c) for c in protocol.contents]
    style_paths = [resolve(base, s) for s in protocol.styles]
    grid_keys = set(pairs[:protocol.grid_pairs])
    grid: dict[tuple[int, int], dict] = {p: {"pair": f"{content_paths[p[0]]} x {style_paths[p[1]]}"}
                                         for p in pairs[:protocol.grid_pairs]}
    thumbs: dict[str, torch.Tensor] = {}  # grid image path -> thumbnail, for grid.png
    # Decoded images are cached at the size they are used at, not as stored: 65 full-resolution photos as float
    # tensors would take gigabytes. Contents per (path, size); styles at most STYLE_CACHE_SIDE (the metrics use them
    # at the output's size, the models at style_size).
    cache: dict[tuple[str, str], torch.Tensor | Exception] = {}

    def image(path: str, size: str) -> torch.Tensor:
        key = (path, size)
        if key not in cache:
            try:
                img = load_image(path)
                keep = 0 if protocol.style_size == 0 else max(STYLE_CACHE_SIDE, protocol.style_size)
                cache[key] = apply_size(img, size) if size != "style" else resize_max_side(img, keep)
            except (FileNotFoundError, ValueError) as exc:
                cache[key] = exc
        got = cache[key]
        if isinstance(got, Exception):
            raise got
        return got

    names = [m for m in METRIC_NAMES if m in protocol.metrics]
    runs = sum(1 for size_i in range(len(protocol.sizes)) for row in rows if row.outputs is None or size_i == 0)
    meter = ProgressMeter(total=runs * len(pairs), interval_s=progress_interval_s, label="evaluate", unit="pairs")
    per_pair: list[dict] = []
    quality_rows: list[list[str]] = []
    table: list[dict] = []
    for size_i, size in enumerate(protocol.sizes):
        for row in rows:
            if row.outputs is not None and size_i > 0:
                continue  # precomputed outputs exist at one size only
            label = row.label if size_i == 0 else f"{row.label} ({size})"
            scores: dict[str, list[float]] = {m: [] for m in names}
            for scorer in scorers:
                scorer.begin(label)
            for ci, si in pairs:
                cpath, spath = content_paths[ci], style_paths[si]
                rec = {"model": row.label, "size": size, "content": cpath, "style": spath, "status": "ok",
                       "error": ""}
                try:
                    content = image(cpath, size)
                    style_full = image(spath, "style")
                    style_in = resize_max_side(style_full, protocol.style_size)
                    if row.outputs is not None:
                        name = f"{Path(cpath).stem}_stylized_{Path(spath).stem}.png"
                        result = load_image(Path(row.outputs) / name)
                    else:
                        result = row.stylize(content, style_in).float().cpu()
                except (FileNotFoundError, ValueError) as exc:
                    rec.update(status="error", error=str(exc))
                    log.warning("%s: %s", label, exc)
                    per_pair.append(rec)
                    meter.update(["error"], [str(exc)])
                    continue
                m = metrics(result, content, resize_max_side(style_full, max(content.shape[-2:])))
                for k in names:
                    scores[k].append(m[k][0])
                    rec[k] = m[k][0]
                for scorer in scorers:
                    rec[scorer.key] = scorer.add(result, cpath, spath)
                per_pair.append(rec)
                if size_i == 0 and (ci, si) in grid_keys:
                    cell = grid[(ci, si)]
                    if "content" not in cell:
                        cell["content"], cell["style"] = f"images/content/{ci}.png", f"images/style/{si}.png"
                        thumbs[cell["content"]] = _thumb(content, out / cell["content"])
                        thumbs[cell["style"]] = _thumb(style_full, out / cell["style"])
                    rel = f"images/{_slug(row.label)}/{ci}_{si}.png"
                    thumbs[rel] = _thumb(result, out / rel)
                    cell[row.label] = rel
                meter.update(["ok"])
            n = len(scores[names[0]]) if names else 0
            means = {k: float(np.mean(v)) * SCALE.get(k, 1.0) if v else float("nan") for k, v in scores.items()}
            extra = {sc.key: sc.value() for sc in scorers}
            table.append({"model": row.label, "size": size, "pairs": n, **means, **extra})
            quality_rows.append([label, str(n)] + [f"{means[k]:.3f}" for k in names] + [_fmt(v) for v in extra.values()])

    meter.close()
    speed_rows: list[list[str]] = []
    timing_rows: list[dict] = []
    timing_specs = [parse_size(s) for s in protocol.timing_sizes]
    cost_headers: list[str] = list(dict.fromkeys(h for row in rows if row.costs for h in row.costs()))
    device_name = "CPU"
    g = torch.Generator().manual_seed(0)
    side = protocol.style_size or 512
    style = torch.rand(1, 3, side, side, generator=g)
    for row in rows:
        if row.stylize is None or not (row.timed or row.costs):
            continue
        entry: dict = {"model": row.label}
        fn = row.timing_fn or row.stylize
        for (_, w, h), spec in zip(timing_specs, protocol.timing_sizes):
            if timing and row.timed:
                content = torch.rand(1, 3, h, w, generator=g)
                entry[spec] = seconds_per_image(fn, content, style, repeats=protocol.timing_repeats,
                                                warmup=protocol.timing_warmup)
                log.info("%s: %s %.4f s/image", row.label, spec, entry[spec])
            else:
                entry[spec] = None
        costs = row.costs() if row.costs else {}
        entry.update({h: costs.get(h) for h in cost_headers})
        if not (timing and row.timed) and not costs:
            continue
        timing_rows.append(entry)
        speed_rows.append([row.label] + [_fmt(entry[s]) for s in protocol.timing_sizes]
                          + [_fmt(entry[h]) for h in cost_headers])
        device = getattr(row.stylize, "device", None)
        if device is not None and torch.device(device).type == "cuda":
            device_name = torch.cuda.get_device_name(torch.device(device))

    sizes_note = (f"Protocol {protocol.name!r}: {len(pairs)} pairs; main rows at {protocol.sizes[0]}"
                  + (", rows marked with another size at that size" if len(protocol.sizes) > 1 else "")
                  + f"; style compared {'cropped' if protocol.style_match == 'crop' else 'padded'}, never stretched.")
    speed_note = (f"Seconds per image on {device_name}: median of {protocol.timing_repeats} timed calls after "
                  f"{protocol.timing_warmup} warm-up calls, CUDA synchronised; style {protocol.style_size} px."
                  if timing else "Not timed (timing switched off).")
    quality_header = ["Model", "pairs"] + [HEADERS[k] for k in names] + [sc.header for sc in scorers]
    speed_header = ["Model"] + [f"{s} ↓" for s in protocol.timing_sizes] + cost_headers
    quality_note = "\n\n".join(x for x in (note, sizes_note) if x)
    write_table(out, "quality", quality_header, quality_rows, quality_note)
    write_table(out, "speed", speed_header, speed_rows, speed_note)
    with open(out / "per_pair.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "size", "content", "style", "status", "error", *names,
                                          *[sc.key for sc in scorers]])
        w.writeheader()
        w.writerows(per_pair)
    labels = [r.label for r in rows]
    cells = list(grid.values())
    _write_grid(out, f"{protocol.name}: {len(rows)} rows", labels, cells,
                [("Quality", quality_header, quality_rows), ("Speed", speed_header, speed_rows)])
    _write_grid_png(out, labels, cells, thumbs, grid_cell)
    log.info("wrote %s", out)
    headers = {**{k: HEADERS[k] for k in names}, **{sc.key: sc.header for sc in scorers},
               **{s: f"{s} (s/image) ↓" for s in protocol.timing_sizes}, **{h: h for h in cost_headers}}
    return {"quality": quality_rows, "speed": speed_rows, "per_pair": per_pair, "table": table,
            "timing": timing_rows, "headers": headers, "notes": [quality_note, speed_note]}


def write_comparison(result: dict, out: str | Path, stem: str = "comparison") -> list[list[str]]:
    """One table from :func:`evaluate`'s result: each quality row with its model's speed and cost columns.

    Writes ``stem.md`` (with both notes) and ``stem.csv``; returns the rows.
    """
    heads = result["headers"]
    quality_keys = [k for k in heads if any(k in e for e in result["table"]) and k not in ("model", "size", "pairs")]
    timing_keys = [k for k in heads if k not in quality_keys]
    speed = {e["model"]: e for e in result["timing"]}
    sizes = list(dict.fromkeys(e["size"] for e in result["table"]))
    rows = []
    for e in result["table"]:
        main_size = e["size"] == sizes[0]
        label = e["model"] if main_size else f"{e['model']} ({e['size']})"
        t = speed.get(e["model"], {}) if main_size else {}  # speed and costs once per model, on its main row
        rows.append([label, str(e["pairs"])] + [_fmt(e.get(k)) for k in quality_keys]
                    + [_fmt(t.get(k)) for k in timing_keys])
    header = ["Model", "pairs"] + [heads[k] for k in quality_keys] + [heads[k] for k in timing_keys]
    write_table(Path(out), stem, header, rows, "\n\n".join(n for n in result["notes"] if n))
    return rows
