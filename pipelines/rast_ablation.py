"""Train every RAST ablation row briefly, evaluate each on a protocol and write the ablation table (seed 000, Table 1).

``python pipelines/rast_ablation.py --data RUN_DIR --protocol eval/protocol.yaml --steps 2000 --out ablation/``

Each row is one training config (default: ``train/configs/rast_ablation/*.yaml``: all losses, then each loss
removed). Every row is trained by the same trainer as any model (``train.trainer.train``) for ``--steps`` steps from
the same seed and data order, then evaluated on the protocol (train/evaluation.py). Written to ``--out``:
``runs/<row>/`` (logs, checkpoint), ``eval/`` (quality/speed tables, per-pair CSV, grid) and ``ablation.md/.csv``:
the Table 1 metrics per row plus restoration quality, the SSIM and PSNR of the content restored from each
stylisation, ``T(T(c, s), c)`` against ``c`` (the seed's "restoration quality" column).
``--set KEY=VALUE`` overrides every row's config (e.g. ``model.name=rast_tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/rast_ablation.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with
from core.config import ConfigError, load_config
from core.device import resolve_device

log = logging.getLogger("bbst.rast_ablation")


EXAMPLES = (
    (("bbst rast-ablation --data bbst-demo --protocol eval-tiny/protocol.yaml --steps 2 --random-metrics "
     "--set model.name=rast_tiny --out ablation-smoke/"), "a smoke run of every ablation row on the demo output"),
    ("bbst rast-ablation --data s3://bucket/bbst --protocol eval/protocol.yaml --steps 2000 --out ablation/",
     "the seed's ablation table: each loss removed in turn, trained briefly and evaluated on one protocol"),
)


def build_parser() -> argparse.ArgumentParser:
    from core.cli import make_parser

    p = make_parser("rast-ablation", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--configs", nargs="+", default=None, metavar="YAML",
                   help="training configs, one per row (default: train/configs/rast_ablation/*.yaml, 'full' first)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="curation run directory with content/style shards, data.root (required)")
    p.add_argument("--protocol", required=True, metavar="FILE",
                   help="evaluation protocol YAML from bbst make-protocol (required)")
    p.add_argument("--steps", type=int, default=2000, help="training steps per row (default: 2000)")
    p.add_argument("--out", default="ablation", metavar="DIR", help="output folder (default: ablation)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override every row's training config, e.g. --set loader.batch_size=4; repeatable "
                        "(default: none)")
    p.add_argument("--device", default="auto", help="evaluation device (default: auto, cuda if available)")
    p.add_argument("--random-metrics", action="store_true",
                   help="random-init metric backbones: smoke runs only, the numbers are meaningless (default: off)")
    p.add_argument("--no-timing", action="store_true", help="skip the speed table (default: off)")
    return p


def _restoration(stylizer, protocol, base: Path) -> tuple[float, float]:
    """Mean SSIM and PSNR of T(T(c, s), c) against c over the protocol's pairs at its main size."""
    import torch

    from train.evaluation import apply_size, resolve
    from train.inference import load_image, resize_max_side
    from train.metrics import ssim

    model = stylizer.model
    if not hasattr(model, "restore_content"):
        return math.nan, math.nan
    ssims, psnrs = [], []
    for ci, si in protocol.pair_list():
        try:
            content = apply_size(load_image(resolve(base, protocol.contents[ci])), protocol.sizes[0])
            style = resize_max_side(load_image(resolve(base, protocol.styles[si])), protocol.style_size)
        except (FileNotFoundError, ValueError) as exc:
            log.warning("restoration: %s", exc)
            continue
        with torch.inference_mode():
            out = stylizer(content, style)
            restored = model.restore_content(out, content.to(out.device)).float().cpu()
        ssims.append(float(ssim(restored, content)))
        mse = float((restored - content).pow(2).mean())
        psnrs.append(10 * math.log10(1.0 / max(mse, 1e-10)))
    mean = (lambda v: sum(v) / len(v) if v else math.nan)
    return mean(ssims), mean(psnrs)


@error_boundary("rast-ablation")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from core.config import packaged_names
    from train.config import TrainConfig
    from train.evaluation import Row, evaluate, load_protocol, verify_checksums, write_table
    from train.inference import Stylizer
    from train.metrics import StyleTransferMetrics
    from train.trainer import train

    # default: the packaged ablation configs by name ('full' first); --configs takes names or paths alike
    configs = args.configs or sorted((n for n in packaged_names("config") if n.startswith("rast_ablation/")),
                                     key=lambda n: (Path(n).stem != "full", Path(n).stem))
    if not configs:
        raise ConfigError("--configs: no ablation configs found")
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    protocol, base = load_protocol(args.protocol)
    verify_checksums(protocol, base)
    out = Path(args.out)
    device = str(resolve_device(args.device))

    rows: list[Row] = []
    for path in configs:
        name = Path(path).stem
        sets = [f"data.root={args.data}", f"schedule.max_steps={args.steps}",
                f"logging.dir={out / 'runs' / name}", f"checkpoint.every={args.steps}", "checkpoint.dir="]
        cfg = load_config(TrainConfig, path, sets=sets + list(args.sets))
        log.info("row %s: training %s for %d steps", name, cfg.model.name, args.steps)
        result = train(cfg)
        rows.append(Row(name, Stylizer(result["checkpoint"], device, max_side=0)))

    kw = {"device": device, "metrics": protocol.metrics, "style_match": protocol.style_match}
    metrics = StyleTransferMetrics.random_init(**kw) if args.random_metrics else StyleTransferMetrics(**kw)
    note = "Metric backbones are RANDOM (smoke run): the numbers are meaningless." if args.random_metrics else ""
    result = evaluate(protocol, rows, out / "eval", metrics, base_dir=base, timing=not args.no_timing, note=note)

    main_rows = {r[0]: r for r in result["quality"]}
    header = ["Row", "pairs"] + (out / "eval" / "quality.csv").read_text().splitlines()[0].split(",")[2:] + [
        "Restoration SSIM ↑", "Restoration PSNR (dB) ↑"]
    table = []
    for row in rows:
        r_ssim, r_psnr = _restoration(row.stylize, protocol, base)
        table.append(list(main_rows[row.label]) + [f"{r_ssim:.3f}", f"{r_psnr:.2f}"])
    what = (f"Each row trained {args.steps} steps from the same seed and data order; protocol {protocol.name!r} "
            f"at {protocol.sizes[0]}.")
    write_table(out, "ablation", header, table, "\n\n".join(x for x in (note, what) if x))
    log.info("wrote %s", out / "ablation.md")
    return {"ablation": table, **result}


if __name__ == "__main__":
    exit_with(main())
