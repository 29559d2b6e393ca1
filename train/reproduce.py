"""One named experiment end to end: train each model for a fixed budget, evaluate every checkpoint, one comparison.

An **experiment** (YAML, :class:`Experiment`; the packaged ones are ``train/experiments/<name>.yaml``) lists its
models as data: each is a training config (``train/configs/``) with ``--set`` overrides, or a reuse of another
model's checkpoints with other inference controls (NeAT's "no prior blurring"). :func:`run_experiment` trains
every model with ``train.trainer.train`` for ``steps`` optimiser steps, keeping the untrained model as the step-0
checkpoint, evaluates every kept checkpoint with the one protocol of ``train/evaluation.py`` (a meta-trained
MetaStyle is adapted per style first, on crops of the *training* content, never on the protocol's images), and
writes ``comparison.csv`` (one row per model and step), ``comparison.md`` and ``grid.html``.

With ``random_metrics`` the metric backbones are random. The Gram distance then uses one seeded random VGG-19
(width 1/16, :func:`gram_backbone`): the same network for every row, so rows stay comparable, and bit-identical to
the loss network of the models whose tiny variants build their VGG first from the training seed (the ``backbone``
column says, per row, whether the model's own loss network is that network). Random convolutional features keep
colour and local texture statistics, so a model that learns to match the style moves this distance down even
where its own loss network is another random VGG; the numbers are not comparable to a paper's.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import ConfigError, load_config, packaged_names, resolve_file
from core.errors import MissingInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("bbst.reproduce")
PACKAGE = Path(__file__).resolve().parent
EXPERIMENTS_DIR = PACKAGE / "experiments"
CONFIGS_DIR = PACKAGE / "configs"
PROTOCOLS_DIR = PACKAGE / "protocols"
QUALITY_COLUMNS = ("lpips", "sifid", "chamfer", "ssim", "gram")


@dataclass
class ModelRun:
    label: str = ""  # the model's name in the tables
    model: str = ""  # registered model name (sets model.name; with no config, on the trainer's defaults)
    config: str = ""  # training config: a path (relative to the experiment file) or a file name in train/configs/
    sets: list[str] = field(default_factory=list)  # KEY=VALUE overrides of this model's training config
    steps: int = 0  # this model's training budget in optimiser steps (0 = the experiment's steps)
    reuse: str = ""  # instead of training: evaluate the checkpoints of the model with this label
    controls: dict[str, float] = field(default_factory=dict)  # inference controls (alpha, blur, prior_weight, steps)
    paper: dict[str, float] = field(default_factory=dict)  # the paper's numbers for this row, by column


@dataclass
class Experiment:
    name: str = "custom"  # label written into the tables
    description: str = ""  # what the experiment reproduces, one paragraph
    data: str = ""  # data.root of every model: a curation output directory or URL (required unless generate_data)
    generate_data: bool = False  # without data: train on a generated shard set (synthetic photos and artworks)
    data_shards: dict[str, list[int]] = field(default_factory=lambda: {"content": [16, 16], "style": [8, 8]})
    data_size: list[int] = field(default_factory=lambda: [128, 96])  # generated images: width, height
    protocol: str = ""  # protocol YAML (a path or a name in train/protocols/; "" = a generated tiny protocol)
    sizes: list[str] = field(default_factory=list)  # override the protocol's quality sizes ([] = the protocol's)
    timing_sizes: list[str] = field(default_factory=list)  # override the protocol's timing sizes ([] = the protocol's)
    timing: bool = True  # time every model (seconds per image at the protocol's timing sizes)
    steps: int = 1000  # training budget: optimiser steps per model
    eval_every: int = 0  # also evaluate every N steps (0 = step 0 and the last step only)
    train_sets: list[str] = field(default_factory=list)  # KEY=VALUE overrides of every model's training config
    random_metrics: bool = False  # random-init metric backbones (no weight files needed; see the module docstring)
    metric_seed: int = 0  # seed of the random metric backbones
    restoration_scales: list[int] = field(default_factory=list)  # RAST restoration SSIM/PSNR at these sizes ([] = off)
    adapt_steps: int = 0  # MetaStyle adaptation steps per style (0 = the model's adapt_steps)
    adapt_batch: int = 4  # MetaStyle adaptation crops per step
    adapt_images: int = 8  # training content crops MetaStyle adapts on
    device: str = "auto"  # "auto", "cpu", "cuda"...
    threads: int = 0  # torch CPU threads for training and evaluation (0 = torch's default; 1 on a busy machine)
    models: list[ModelRun] = field(default_factory=list)  # the rows, in order
    paper_note: str = ""  # where the paper's numbers come from (shown under the table)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.eval_every < 0:
            raise ConfigError(f"steps and eval_every must be >= 0, got {self.steps}, {self.eval_every}")
        labels = [m.label for m in self.models]
        if any(not m.label for m in self.models):
            raise ConfigError("every model needs a label")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"model labels repeat: {labels}")
        for m in self.models:
            if bool(m.config or m.model) == bool(m.reuse):
                raise ConfigError(f"model {m.label!r}: give a config or a model name, or reuse, not both")
            if m.reuse and m.reuse not in labels[:labels.index(m.label)]:
                raise ConfigError(f"model {m.label!r}: reuse {m.reuse!r} names no model listed before it")


def list_experiments() -> list[str]:
    return packaged_names("experiment")


def experiment_path(name_or_path: str, flag: str = "--experiment") -> Path:
    """A packaged experiment's file by name, or the given file (core.config.resolve_file, as every --config)."""
    return Path(resolve_file(name_or_path, "experiment", flag))


def load_experiment(name_or_path: str, overrides: dict | None = None, sets: list[str] | None = None) -> Experiment:
    return load_config(Experiment, experiment_path(name_or_path), overrides=overrides, sets=sets)



def experiment_listing() -> list[str]:
    """One line per packaged experiment: its name, training steps and model labels."""
    out = []
    for name in list_experiments():
        exp = load_experiment(name)
        out.append(f"{name}: {exp.steps} steps; {', '.join(m.label for m in exp.models)}")
    return out


def select_models(exp: Experiment, only: list[str]) -> Experiment:
    """``exp`` with only the models labelled in ``only`` (and the models they reuse); an unknown label is an error."""
    labels = [m.label for m in exp.models]
    unknown = [x for x in only if x not in labels]
    if unknown:
        raise ConfigError(f"--only {unknown[0]!r}: no such model in experiment {exp.name!r}; models: {labels}")
    keep = set(only) | {m.reuse for m in exp.models if m.label in only and m.reuse}
    exp.models = [m for m in exp.models if m.label in keep]
    return exp

def _resolve(item: str, base: Path, folder: Path) -> Path:
    """A file named in an experiment: absolute, relative to the experiment file, or packaged in ``folder``."""
    path = Path(item)
    for candidate in ([path] if path.is_absolute() else [base / path, folder / path]):
        if candidate.is_file():
            return candidate
    raise MissingInputError(f"{item}: not found (looked in {base} and {folder})")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


# --------------------------------------------------------------------------------------------------- metrics
def gram_backbone(seed: int):
    """The seeded random VGG-19 (width 1/16) of random-metric runs: the tiny models' loss network for that seed."""
    import torch

    from train.models.vgg import VGG19Encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VGG19Encoder(None, width=1 / 16)


def build_metrics(exp: Experiment, protocol, device: str):
    """The protocol's metrics; with ``random_metrics`` seeded random backbones and :func:`gram_backbone`."""
    import torch

    from train.evaluation import build_metrics as protocol_metrics

    if not exp.random_metrics:
        return protocol_metrics(protocol, device)
    with torch.random.fork_rng(devices=[]):  # seeded: a rerun scores with the same networks
        torch.manual_seed(exp.metric_seed + 1)
        metrics = protocol_metrics(protocol, device, random_init=True)
    if metrics.vgg is not None:
        metrics.vgg = gram_backbone(exp.metric_seed).to(metrics.device)
    return metrics


def same_backbone(model: torch.nn.Module, vgg: torch.nn.Module | None) -> bool:
    """Whether ``model`` holds a frozen network with exactly ``vgg``'s weights (its loss network is the metric's)."""
    import torch

    if vgg is None:
        return False
    ref = {k: v.cpu() for k, v in vgg.state_dict().items()}
    for module in model.modules():
        if type(module) is type(vgg):
            own = module.state_dict()
            if own.keys() == ref.keys() and all(torch.equal(own[k].cpu(), ref[k]) for k in ref):
                return True
    return False


# --------------------------------------------------------------------------------------------------- training
def training_config(exp: Experiment, run: ModelRun, base: Path, data_root: str, out: Path):
    """The model's TrainConfig: its config file <- the experiment's budget and folders <- train_sets <- its sets."""
    from train.config import TrainConfig

    path = _resolve(run.config, base, CONFIGS_DIR) if run.config else None
    steps = run.steps or exp.steps
    every = exp.eval_every if 0 < exp.eval_every < steps else max(steps, 1)
    sets = [f"data.root={data_root}", f"schedule.max_steps={steps}", f"logging.dir={out / 'runs' / slug(run.label)}",
            "checkpoint.dir=", f"checkpoint.every={every}", "checkpoint.keep=0", "checkpoint.at_start=true"]
    model = [f"model.name={run.model}"] if run.model else []
    return load_config(TrainConfig, path, sets=sets + list(exp.train_sets) + model + list(run.sets))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint a run kept, by step."""
    from train.checkpoint import list_checkpoints

    return [(step, Path(path)) for step, path in list_checkpoints(str(run_dir / "checkpoints"))]


def training_contents(cfg, n: int) -> list[torch.Tensor]:
    """``n`` content crops from the model's own training stream (MetaStyle adapts on these, never on test images)."""
    from dataclasses import replace

    from train.data import ShardPairLoader

    loader = ShardPairLoader(cfg.data, replace(cfg.loader, num_workers=0))
    crops: list[torch.Tensor] = []
    for batch in loader:
        crops += list(batch["content"].split(1))
        if len(crops) >= n:
            break
    return crops[:n]


# --------------------------------------------------------------------------------------------------- the run
def prepare_data(exp: Experiment, out: Path) -> str:
    """``exp.data``, or (``generate_data``) a generated shard set under ``out/data``."""
    if exp.data:
        return exp.data
    if not exp.generate_data:
        raise ConfigError(f"experiment {exp.name!r} trains on your shards: give --data DIR (a curation output "
                          "directory or URL)", hint="bbst build writes one; bbst reproduce --tiny needs none")
    from train.demo_shards import write_demo_shards

    root = out / "data"
    if not (root / "manifest.json").is_file():
        write_demo_shards(root, exp.data_shards, size=tuple(exp.data_size))
    return str(root.resolve())


def prepare_protocol(exp: Experiment, base: Path, out: Path):
    from train.evaluation import load_protocol, override_protocol, verify_checksums, write_tiny_protocol

    path = _resolve(exp.protocol, base, PROTOCOLS_DIR) if exp.protocol else write_tiny_protocol(out / "protocol")
    protocol, proto_base = load_protocol(path)
    verify_checksums(protocol, proto_base)
    override_protocol(protocol, exp.sizes, exp.timing_sizes)
    return protocol, proto_base


def run_experiment(exp: Experiment, out: str | Path, base: str | Path = ".") -> dict:
    """Train, evaluate and compare every model of ``exp``; ``base`` is the folder relative paths start from.

    Returns ``{"rows": [comparison rows], "not_improved": [labels whose Gram distance did not drop],
    "seconds": {...}, "out": path}``.
    """
    import torch

    from train.evaluation import Row, evaluate
    from train.inference import AdaptingStylizer, Stylizer, resolve_device
    from train.models.metastyle import MetaStyle
    from train.trainer import train

    t_start = time.perf_counter()
    if exp.threads > 0:
        torch.set_num_threads(exp.threads)
    out, base = Path(out), Path(base)
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(exp.device))
    data_root = prepare_data(exp, out)
    protocol, proto_base = prepare_protocol(exp, base, out)

    # ------------------------------------------------------------------------------------------- train
    trained: dict[str, tuple[Any, list[tuple[int, Path]], float]] = {}  # label -> (config, checkpoints, seconds)
    for run in exp.models:
        if run.reuse:
            trained[run.label] = trained[run.reuse]
            continue
        cfg = training_config(exp, run, base, data_root, out)
        steps, earlier = cfg.schedule.max_steps, checkpoints(Path(cfg.logging.dir))
        t0 = time.perf_counter()
        if earlier and earlier[-1][0] > steps:
            raise ConfigError(f"{cfg.logging.dir}: holds checkpoints up to step {earlier[-1][0]} of an earlier run, "
                              f"more than this run's {steps}", hint="choose another --out, or remove that folder")
        if earlier and earlier[-1][0] == steps:  # a rerun into the same --out: the model is trained already
            log.info("%s: %s already trained to step %d, not trained again", run.label, cfg.model.name, steps)
        else:  # a new run, or one an interruption stopped: resume continues its data stream exactly
            log.info("%s: training %s for %d steps", run.label, cfg.model.name, steps)
            train(cfg, resume=bool(earlier))
        found = checkpoints(Path(cfg.logging.dir))
        if not found or found[0][0] != 0:
            raise RuntimeError(f"{run.label}: the run kept no step-0 checkpoint in {cfg.logging.dir}/checkpoints")
        trained[run.label] = (cfg, found, time.perf_counter() - t0)
    t_trained = time.perf_counter()

    # ------------------------------------------------------------------------------------------- evaluate
    metrics = build_metrics(exp, protocol, device)
    rows: list[Row] = []
    meta: list[dict] = []  # per evaluation row: model, step, backbone, train seconds
    for run in exp.models:
        cfg, found, seconds = trained[run.label]
        contents = None
        for step, path in found:
            stylizer = Stylizer(str(path), device, max_side=0, style_size=protocol.style_size, **run.controls)
            label = f"{run.label} @ {step}"
            if isinstance(stylizer.model, MetaStyle) and not stylizer.model.cfg.adapted_style:
                if contents is None:
                    contents = training_contents(cfg, exp.adapt_images)
                adapting = AdaptingStylizer(stylizer.model, contents, device, steps=exp.adapt_steps or None,
                                            crop=cfg.data.crop_size, batch=exp.adapt_batch, max_side=0,
                                            style_size=protocol.style_size, seed=cfg.seed)
                rows.append(Row(label, adapting, timing_fn=adapting.feed_forward, costs=adapting.costs))
            else:
                rows.append(Row(label, stylizer))
            meta.append({"model": run.label, "step": step, "config": cfg.model.name,
                         "backbone": "training's" if same_backbone(stylizer.model, metrics.vgg) else "independent",
                         "train_seconds": seconds if step == found[-1][0] else 0.0})
    note = RANDOM_NOTE if exp.random_metrics else ""
    result = evaluate(protocol, rows, out, metrics, base_dir=proto_base, timing=exp.timing, note=note)
    t_done = time.perf_counter()

    table = comparison_rows(result, meta, protocol.sizes[0])
    if exp.restoration_scales:
        add_restoration(table, rows, exp.restoration_scales, protocol, proto_base)
    seconds = {"train": t_trained - t_start, "evaluate": t_done - t_trained, "total": t_done - t_start}
    not_improved = [m for m, d in gram_change(table).items() if d["last_step"] > 0 and not d["dropped"]]
    write_comparison(exp, table, result, out, seconds, device, not_improved)
    for label in not_improved:
        log.warning("%s: the Gram distance did not drop from step 0 to its last step", label)
    return {"rows": table, "not_improved": not_improved, "seconds": seconds, "out": str(out)}


RANDOM_NOTE = ("Metric backbones are RANDOM (seeded): the numbers show the direction each model moves, not paper "
               "quality.")


# --------------------------------------------------------------------------------------------------- the tables
def comparison_rows(result: dict, meta: list[dict], main_size: str) -> list[dict]:
    """One dict per model and step at the protocol's main size: quality columns, speed columns, train seconds."""
    speed = {e["model"]: e for e in result["timing"]}
    by_label = {e["model"]: e for e in result["table"] if e["size"] == main_size}
    rows = []
    for m in meta:
        label = f"{m['model']} @ {m['step']}"
        q = by_label[label]
        t = speed.get(label, {})
        row = {"model": m["model"], "step": m["step"], "config": m["config"], "pairs": q["pairs"],
               **{k: q[k] for k in QUALITY_COLUMNS if k in q},
               **{k: q[k] for k in q if k not in ("model", "size", "pairs", *QUALITY_COLUMNS)},
               **{speed_column(k): v for k, v in t.items() if k != "model"},
               "backbone": m["backbone"], "train_seconds": round(m["train_seconds"], 1)}
        rows.append(row)
    return rows


def add_restoration(table: list[dict], rows: list, scales: list[int], protocol, base: Path) -> None:
    """Seed 000's restoration quality (``train.rast_ablation``) as ``restoration_ssim_<r>`` / ``restoration_psnr_<r>``
    columns: contents stylised at the largest scale, scaled to each, restored; empty for models that cannot restore."""
    from train.rast_ablation import restoration_table

    scales = sorted(scales, reverse=True)
    stylizers = [(row.label, row.stylize) for row in rows if hasattr(row.stylize, "model")]
    _, cells = restoration_table(stylizers, protocol, base, size=scales[0], scales=tuple(scales))
    for entry in table:
        values = cells.get(f"{entry['model']} @ {entry['step']}", ["n/a"] * 2 * len(scales))
        for i, r in enumerate(scales):
            ssim, psnr = values[i], values[len(scales) + i]
            entry[f"restoration_ssim_{r}"] = None if ssim == "n/a" else float(ssim)
            entry[f"restoration_psnr_{r}"] = None if psnr == "n/a" else float(psnr)


def speed_column(key: str) -> str:
    """CSV column of a speed-table entry: ``seconds_<WxH>`` for a timing size, a slug of the header for a cost
    (MetaStyle's ``adaptation (s/style) ↓`` -> ``adaptation_s_style``)."""
    if re.fullmatch(r"\d+x\d+", key):
        return f"seconds_{key}"
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def gram_change(rows: list[dict]) -> dict[str, dict]:
    """Per model: Gram distance at step 0 and at its last step, and whether it dropped."""
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(r["model"], {})
        if r["step"] == 0:
            d["first"] = r.get("gram", math.nan)
        if r["step"] >= d.get("last_step", -1):
            d["last_step"], d["last"] = r["step"], r.get("gram", math.nan)
    for d in out.values():
        first, last = d.get("first", math.nan), d.get("last", math.nan)
        d["dropped"] = bool(d["last_step"] > 0 and last < first)
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_comparison(exp: Experiment, rows: list[dict], result: dict, out: Path, seconds: dict, device: str,
                     not_improved: list[str]) -> None:
    """``comparison.csv`` (every column), ``comparison.md`` (with the paper's numbers where given) and a table at the
    top of ``grid.html``."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    heads = {**result["headers"], "gram": "Gram ↓ (×10³)"}
    quality = [k for k in QUALITY_COLUMNS if k in columns]
    costs = {speed_column(h): h for h in heads  # speed-table costs beside the timings (MetaStyle's adaptation)
             if h not in QUALITY_COLUMNS and speed_column(h) in columns and not speed_column(h).startswith("seconds_")}
    quality += [k for k in columns if (k.startswith(("seconds_", "restoration_")) or k in costs)
                and any(r.get(k) is not None for r in rows)]
    heads.update(costs)
    heads.update({k: f"restoration {k.split('_')[1].upper()} {k.split('_')[2]} ↑" for k in quality
                  if k.startswith("restoration_")})
    heads.update({k: f"{k.removeprefix('seconds_')} s/image ↓" for k in quality if k.startswith("seconds_")})
    header = ["Model", "step"] + [heads.get(k, k) for k in quality] + ["Gram change", "backbone"]
    change = gram_change(rows)
    papers = {m.label: m.paper for m in exp.models}
    body = []
    for r in rows:
        d = change[r["model"]]
        last = r["step"] == d["last_step"] and r["step"] > 0
        verdict = ("↓" if d["dropped"] else "NOT lower") if last else ""
        body.append([r["model"], str(r["step"])] + [_fmt(r.get(k, math.nan)) for k in quality]
                    + [verdict, r["backbone"]])
        if last and papers.get(r["model"]):
            paper = papers[r["model"]]
            body.append([f"*{r['model']}: paper*", ""] + [_fmt(paper.get(k, math.nan)) for k in quality] + ["", ""])
    budgets = sorted({m.steps or exp.steps for m in exp.models if not m.reuse})
    lines = [f"# {exp.name}: {len(exp.models)} models, {' or '.join(map(str, budgets))} training steps each", ""]
    if exp.description:
        lines += [exp.description.strip(), ""]
    lines += [n for n in result["notes"] if n] + [""]
    lines += [(f"Device {device}; wall time {seconds['total']:.0f} s (training {seconds['train']:.0f} s, "
               f"evaluation {seconds['evaluate']:.0f} s)."), ""]
    if exp.paper_note:
        lines += [exp.paper_note.strip(), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    lines += ["", ("Gram distance lower at the last step than at step 0 for every model." if not not_improved else
                   f"Gram distance NOT lower at the last step for: {', '.join(not_improved)}.")]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    grid = out / "grid.html"
    if grid.is_file():  # the comparison above evaluate()'s per-row tables and images
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        table = (f"<h2>Comparison: {html.escape(exp.name)}</h2><table class=scores><thead><tr>{head}</tr></thead>"
                 f"<tbody>{trs}</tbody></table>")
        page = grid.read_text()
        at = page.find("<h2>")
        grid.write_text(page[:at] + table + page[at:] if at >= 0 else page + table)
