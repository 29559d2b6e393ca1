"""Evaluate style-transfer models on a protocol: a quality table (NeAT Table 1), a speed table (Table 2), a grid.

Rows are checkpoints of any registered model (``--model NAME=CKPT``) and folders of other methods' outputs
(``--outputs NAME=DIR``); pairs come from a protocol file, a pairs CSV or two folders. docs/evaluation.md has
the protocol format and the tables; ``train.evaluation_runs`` does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_parser, error_boundary, exit_with, parse_config
from train.config import EVAL_FLAGS, EvaluateConfig

EXAMPLES = (
    (("bbst evaluate --protocol protocol.yaml --model NeAT=neat.pt --no-blur-row "
      "--model 'NeAT (no prior deltas)'=neat_no_prior.pt --out eval/"),
     "NeAT Tables 1 and 2 on a protocol file: the no-blur row, and the model trained without prior deltas"),
    ("bbst evaluate --content photos/ --style styles/ --outputs other=other/ --random-metrics --out smoke/",
     "every content x style pair against another method's saved outputs; random metric nets (a smoke run)"),
)


def build_parser():
    return config_parser("evaluate", __doc__.split("\n")[0], EXAMPLES, EvaluateConfig, "timing_repeats=5",
                         {**EVAL_FLAGS, "outputs": {"action": "append", "metavar": "NAME=DIR"},
                          "no_blur_row": {"action": "store_true"}})


@error_boundary("evaluate")
def main(argv: list[str] | None = None) -> dict:
    cfg, _ = parse_config(build_parser(), EvaluateConfig, argv)
    from train.evaluation_runs import evaluate_models

    return evaluate_models(cfg)


if __name__ == "__main__":
    exit_with(main())
