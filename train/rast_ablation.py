"""Seed 000's RAST experiments: the configs of each table, the restoration metric, and one run per table.

A table is a list of training configs (``train/configs/rast_ablation/``, each a ``base:`` variant of ``full.yaml``).
:func:`run_table` trains every row with the one trainer from the same seed and data order, evaluates every
checkpoint on one protocol (``train.evaluation.evaluate``) and adds restoration quality at the sizes of the
seed's Table 2, measured along the path the multi-restoration loss trains (:func:`restoration_quality`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.config import ConfigError, load_config
from train.models.rast import scale_to

log = logging.getLogger("bbst.rast_ablation")

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "rast_ablation"
# table name -> (what it reproduces, its rows: config stems in CONFIG_DIR; the first row is the reference)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "1": ("seed 000 Table 1: each loss removed from the full objective",
          ("full", "no_content", "no_style", "no_restoration", "no_adversarial", "no_idempotency", "no_lpips")),
    "2": ("seed 000 Table 2: restoration with and without the multi-restoration loss at 256, 128 and 64 px",
          ("full", "no_lowres_restoration")),
    "3": ("seed 000 Table 3: RAST baseline vs + LPIPS, both without idempotency",
          ("baseline", "baseline_lpips")),
    "simplified": ("seed 000 Section 4.6: full vs simplified architecture, quality and inference time",
                   ("full", "simplified")),
}
RESTORATION_SIZE = 256  # contents are stylised at this square size (the training crop) before scaling down
RESTORATION_SCALES = (256, 128, 64)  # seed Table 2's resolutions


def table_configs(table: str) -> list[Path]:
    """The config files of a table's rows, reference row first."""
    if table not in TABLES:
        raise ConfigError(f"--table {table!r}: expected one of {', '.join(TABLES)}", key="table")
    return [CONFIG_DIR / f"{stem}.yaml" for stem in TABLES[table][1]]


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1], per sample (B,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def restoration_quality(model: torch.nn.Module, content: torch.Tensor, style: torch.Tensor,
                        scales: tuple[int, ...] = RESTORATION_SCALES) -> dict[int, tuple[float, float]]:
    """Scale r -> (SSIM, PSNR) of R_r(S_r(T(c, s))) against S_r(c), the images of seed 000's L_mr.

    ``model`` is a RAST (``stylize``, ``restore_content``); ``content`` (1, 3, H, W) is stylised at its size, the
    stylisation is scaled to r x r, restored with the content at r x r as the reference, and compared with it. At
    r = the content's own size this is the plain restoration T(T(c, s), c) against c.
    """
    from train.metrics import ssim

    out = model.stylize(content, style)
    scores = {}
    for r in scales:
        c_r = scale_to(content, r)
        restored = model.restore_content(scale_to(out, r), c_r).float()
        scores[r] = (float(ssim(restored, c_r.float()).mean()), float(psnr(restored, c_r).mean()))
    return scores


def restoration_table(stylizers: list[tuple[str, object]], protocol, base: Path, size: int = RESTORATION_SIZE,
                      scales: tuple[int, ...] = RESTORATION_SCALES) -> tuple[list[str], dict[str, list[str]]]:
    """Mean restoration SSIM and PSNR per scale over the protocol's pairs, per row: (header, {label: cells}).

    Contents enter at ``size`` x ``size`` (scaled to cover, centre-cropped), styles at the protocol's style size.
    ``stylizers`` are ``(label, train.inference.Stylizer)``; a model without ``restore_content`` gets "n/a".
    """
    from train.evaluation import apply_size, resolve
    from train.inference import load_image, resize_max_side

    header = [f"Restoration SSIM {r} ↑" for r in scales] + [f"Restoration PSNR {r} (dB) ↑" for r in scales]
    images = []
    for ci, si in protocol.pair_list():
        try:
            images.append((apply_size(load_image(resolve(base, protocol.contents[ci])), f"{size}x{size}"),
                           resize_max_side(load_image(resolve(base, protocol.styles[si])), protocol.style_size)))
        except (FileNotFoundError, ValueError) as exc:
            log.warning("restoration: %s", exc)
    cells: dict[str, list[str]] = {}
    for label, stylizer in stylizers:
        model = stylizer.model
        if not hasattr(model, "restore_content") or not images:
            cells[label] = ["n/a"] * len(header)
            continue
        sums = {r: [0.0, 0.0] for r in scales}
        for content, style in images:
            for r, (s, p) in restoration_quality(model, content.to(stylizer.device), style.to(stylizer.device),
                                                 scales).items():
                sums[r][0] += s
                sums[r][1] += p
        n = len(images)
        cells[label] = [f"{sums[r][0] / n:.3f}" for r in scales] + [f"{sums[r][1] / n:.2f}" for r in scales]
    return header, cells


def run_table(configs: list[str | Path], data: str, protocol_path: str | Path, out: str | Path, metrics,
              steps: int = 0, sets: list[str] | None = None, device: str = "cpu", timing: bool = True,
              note: str = "", title: str = "") -> dict:
    """Train each config's row, evaluate all rows on the protocol, write ``OUT/ablation.md/.csv``.

    ``steps`` > 0 replaces every row's ``schedule.max_steps``; ``sets`` are ``--set`` pairs applied to every row.
    Returns ``{"ablation": table rows, **train.evaluation.evaluate's result}``.
    """
    from train.config import TrainConfig
    from train.evaluation import Row, evaluate, load_protocol, verify_checksums, write_table
    from train.inference import Stylizer
    from train.trainer import train

    if steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}", key="steps")
    protocol, base = load_protocol(protocol_path)
    verify_checksums(protocol, base)
    out = Path(out)
    rows: list[Row] = []
    trained = []
    for path in configs:
        name = Path(path).stem
        own = [f"data.root={data}", f"logging.dir={out / 'runs' / name}", "checkpoint.dir="]
        cfg = load_config(TrainConfig, path, sets=own + list(sets or []))
        if steps:
            cfg.schedule.max_steps = steps
        cfg.checkpoint.every = cfg.schedule.max_steps
        log.info("row %s: training %s for %d steps", name, cfg.model.name, cfg.schedule.max_steps)
        result = train(cfg)
        trained.append(cfg.schedule.max_steps)
        rows.append(Row(name, Stylizer(result["checkpoint"], device, max_side=0)))
    result = evaluate(protocol, rows, out / "eval", metrics, base_dir=base, timing=timing, note=note)
    r_header, r_cells = restoration_table([(r.label, r.stylize) for r in rows], protocol, base)
    main_rows = {r[0]: r for r in result["quality"]}
    header = ["Row", "pairs"] + (out / "eval" / "quality.csv").read_text().splitlines()[0].split(",")[2:] + r_header
    table = [list(main_rows[row.label]) + r_cells[row.label] for row in rows]
    what = (f"{title + '. ' if title else ''}Rows trained {', '.join(map(str, sorted(set(trained))))} steps from "
            f"the same seed and data order; quality on protocol {protocol.name!r} at {protocol.sizes[0]}; "
            f"restoration: contents at {RESTORATION_SIZE}x{RESTORATION_SIZE}, stylised, scaled to each size, "
            f"restored with the content at that size, compared with it.")
    write_table(out, "ablation", header, table, "\n\n".join(x for x in (note, what) if x))
    log.info("wrote %s", out / "ablation.md")
    return {"ablation": table, **result}
