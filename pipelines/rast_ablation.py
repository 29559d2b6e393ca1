"""Train the rows of one of seed 000's RAST tables, evaluate them on a protocol and write the table.

``python pipelines/rast_ablation.py --table 1 --data RUN_DIR --protocol eval/protocol.yaml --out ablation/``

``--table`` picks the rows (train/rast_ablation.py, configs in train/configs/rast_ablation/): ``1`` the full
objective and each loss removed (Table 1), ``2`` with and without the multi-restoration loss (Table 2), ``3`` the
RAST baseline and baseline + LPIPS (Table 3), ``simplified`` the full and the simplified architecture (Section
4.6). Every row is trained by the one trainer from the same seed and data order, then evaluated on the protocol;
``--out`` receives ``runs/<row>/``, ``eval/`` (quality and speed tables, per-pair CSV, grid) and
``ablation.md/.csv``: the quality metrics per row plus restoration SSIM and PSNR at 256, 128 and 64 px.
``--set KEY=VALUE`` overrides every row's config (e.g. ``model.name=rast_tiny`` for a smoke run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, setup_logging

EXAMPLES = (
    (("bbst rast-ablation --table 1 --data bbst-demo --protocol eval-tiny/protocol.yaml --steps 2 "
      "--random-metrics --set model.name=rast_tiny --out ablation-smoke/"),
     "a smoke run of every Table 1 row on the demo output"),
    ("bbst rast-ablation --table 2 --data s3://bucket/bbst --protocol eval/protocol.yaml --out table2/",
     "seed Table 2: restoration at 256/128/64 px with and without the multi-restoration loss"),
)


def build_parser() -> argparse.ArgumentParser:
    from core.cli import make_parser

    p = make_parser("rast-ablation", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--table", default="1", choices=["1", "2", "3", "simplified"],
                   help="which of the seed's experiments (default: 1)")
    p.add_argument("--configs", nargs="+", default=None, metavar="YAML",
                   help="training configs, one per row, instead of --table's (default: none)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="curation run directory with content/style shards, data.root (required)")
    p.add_argument("--protocol", required=True, metavar="FILE",
                   help="evaluation protocol YAML from bbst make-protocol (required)")
    p.add_argument("--steps", type=int, default=0,
                   help="training steps per row (default: 0 = each config's schedule.max_steps)")
    p.add_argument("--out", default="ablation", metavar="DIR", help="output folder (default: ablation)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override every row's training config, e.g. --set loader.batch_size=4; repeatable "
                        "(default: none)")
    p.add_argument("--device", default="auto", help="evaluation device (default: auto, cuda if available)")
    p.add_argument("--random-metrics", action="store_true",
                   help="random-init metric backbones: smoke runs only, the numbers are meaningless (default: off)")
    p.add_argument("--no-timing", action="store_true", help="skip the speed table (default: off)")
    return p


@error_boundary("rast-ablation")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from core.device import resolve_device
    from train.evaluation import RANDOM_METRICS_NOTE, build_metrics, load_protocol
    from train.rast_ablation import TABLES, run_table, table_configs

    protocol, _ = load_protocol(args.protocol)
    device = str(resolve_device(args.device))
    metrics = build_metrics(protocol, device, args.random_metrics)  # its weights error names --random-metrics
    return run_table(args.configs or table_configs(args.table), args.data, args.protocol, args.out, metrics,
                     steps=args.steps, sets=args.sets, device=device, timing=not args.no_timing,
                     note=RANDOM_METRICS_NOTE if args.random_metrics else "",
                     title="" if args.configs else TABLES[args.table][0])


if __name__ == "__main__":
    exit_with(main())
