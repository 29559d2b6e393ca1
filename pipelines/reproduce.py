"""Reproduce a named experiment end to end: train each model, evaluate every checkpoint, one comparison table.

``python pipelines/reproduce.py --tiny --out reproduce-tiny/``

An experiment (``train/experiments/<name>.yaml``, or your own file with ``--config``) lists its models as data;
each is trained for the experiment's budget by the trainer of ``bbst train``, kept at step 0 and at its last step
(and every ``--eval-every`` steps), and every checkpoint is scored by the evaluation of ``bbst evaluate``
(train/evaluation.py) on one protocol. Writes ``comparison.csv`` (one row per model and step: model, step, the
protocol's metrics with ``gram`` the Gram distance to the style, seconds per image, training seconds),
``comparison.md`` (with the paper's numbers where the experiment gives them), ``grid.html`` and the evaluation's
own tables into ``--out``; training runs go to ``--out``/runs/. Library: train/reproduce.py; docs/reproduce.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import (
    ConfigFlags,
    add_config_file_flags,
    error_boundary,
    exit_with,
    load_args,
    make_parser,
    setup_logging,
)
from core.config import ConfigError

log = logging.getLogger("bbst.reproduce")

EXAMPLES = (
    ("bbst reproduce --tiny --out reproduce-tiny/",
     "every model family, tiny, on generated data: CPU minutes, no downloads, random metric backbones"),
    ("bbst reproduce --experiment neat_table1 --data s3://bucket/bbst --protocol eval/protocol.yaml --out t1/",
     "NeAT Table 1 on your shards and protocol (GPU; metric weights in the local cache)"),
    ("bbst reproduce --config my_experiment.yaml --set steps=5000 --out mine/", "your own experiment file"),
)


def build_parser() -> argparse.ArgumentParser:
    from train.reproduce import Experiment, list_experiments

    p = make_parser("reproduce", __doc__.split("\n")[0], EXAMPLES)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--experiment", metavar="NAME",
                       help=f"a packaged experiment: {', '.join(list_experiments())} (default: none)")
    which.add_argument("--tiny", action="store_true", help="the 'tiny' experiment (default: off)")
    add_config_file_flags(p, "experiment (train/reproduce.py Experiment)", "steps=2000")
    flags = ConfigFlags(Experiment)
    flags.add(p, "data", metavar="DIR")
    flags.add(p, "protocol", metavar="FILE")
    flags.add(p, "steps")
    flags.add(p, "eval_every")
    flags.add(p, "sizes", metavar="SIZE")
    flags.add(p, "timing_sizes", metavar="WxH")
    flags.add(p, "timing")
    flags.add(p, "random_metrics", action="store_true")
    flags.add(p, "adapt_steps")
    flags.add(p, "device")
    p.add_argument("--train-set", dest="train_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training option of every model, after the experiment's own train_sets, e.g. "
                        "--train-set optim.lr=3.0e-4; repeatable (default: none)")
    p.add_argument("--only", action="append", default=[], metavar="LABEL",
                   help="run only the model with this label; repeatable (default: all the experiment's models)")
    p.add_argument("--list", action="store_true", help="list the packaged experiments and their models, and exit (default: off)")
    p.add_argument("--out", default="reproduce", metavar="DIR", help="output folder (default: reproduce)")
    p.set_defaults(config_flags=flags)
    return p


@error_boundary("reproduce")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from train.reproduce import (
        Experiment,
        experiment_listing,
        experiment_path,
        list_experiments,
        run_experiment,
        select_models,
    )

    if args.list:
        print("\n".join(experiment_listing()))
        return {"experiments": list_experiments()}
    named = "tiny" if args.tiny else args.experiment
    if named and args.config:
        raise ConfigError("give --experiment/--tiny or --config, not both")
    if not named and not args.config:
        raise ConfigError("name an experiment: --tiny, --experiment NAME or --config FILE",
                          hint=f"packaged experiments: {', '.join(list_experiments())}")
    args.config = str(experiment_path(named or args.config, "--experiment" if named else "--config"))
    exp = load_args(Experiment, args, args.config_flags)
    exp.train_sets = list(exp.train_sets) + list(args.train_sets)
    if args.only:
        exp = select_models(exp, args.only)
    if not exp.models:
        raise ConfigError(f"{args.config}: the experiment lists no models")
    result = run_experiment(exp, args.out, base=Path(args.config).parent)
    log.info("wrote %s/comparison.md, comparison.csv and grid.html", args.out)
    if result["not_improved"]:
        log.warning("Gram distance not lower at the last step than at step 0: %s", ", ".join(result["not_improved"]))
    return result


if __name__ == "__main__":
    exit_with(main())
