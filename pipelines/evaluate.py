"""Evaluate style-transfer models on a protocol: a quality table (NeAT Table 1), a speed table (Table 2), a grid.

Rows are checkpoints of any registered model (``--model NAME=CKPT``) and folders of other methods' outputs
(``--outputs NAME=DIR``); pairs come from a protocol file, a pairs CSV or two folders. docs/evaluation.md has
the protocol format and the tables; ``train.evaluation`` does the work.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # `python pipelines/evaluate.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch and the model code are imported inside the functions that use them: `--help` prints before torch loads
from core.cli import config_parser, error_boundary, exit_with, parse_config
from core.config import ConfigError
from core.errors import MissingInputError
from train.config import EVAL_FLAGS, EvalConfig

if TYPE_CHECKING:
    from train.evaluation import Row

@dataclass
class EvaluateConfig(EvalConfig):
    outputs: list[str] = field(default_factory=list)  # NAME=DIR rows of precomputed <content>_stylized_<style>.png
    no_blur_row: bool = False  # add "NAME (no prior blurring)" per checkpoint with a blur control (blur=0), Table 1
    alpha: float = 1.0  # style strength for checkpoint rows


EXAMPLES = (
    (("bbst evaluate --protocol protocol.yaml --model NeAT=neat.pt --no-blur-row "
      "--model 'NeAT (no prior deltas)'=neat_no_prior.pt --out eval/"),
     "NeAT Tables 1 and 2 on a protocol file: the no-blur row, and the model trained without prior deltas"),
    ("bbst evaluate --content photos/ --style styles/ --outputs other=other/ --random-metrics --out smoke/",
     "every content x style pair against another method's saved outputs; random metric nets (a smoke run)"),
)


def build_parser() -> argparse.ArgumentParser:
    return config_parser("evaluate", __doc__.split("\n")[0], EXAMPLES, EvaluateConfig, "timing_repeats=5",
                         {**EVAL_FLAGS, "outputs": {"action": "append", "metavar": "NAME=DIR"},
                          "no_blur_row": {"action": "store_true"}})


def build_rows(cfg: EvaluateConfig, device: str) -> list[Row]:
    """Checkpoint rows (with their no-blur variants) and precomputed-output rows."""
    from train.evaluation import Row, parse_named
    from train.inference import Stylizer

    rows: list[Row] = []
    for name, ckpt in parse_named(cfg.models, "--model"):
        base = Stylizer(ckpt, device, cfg.alpha, max_side=0)
        rows.append(Row(name, base))
        if cfg.no_blur_row and base.supports("blur"):
            no_blur = copy.copy(base)  # shares the loaded model; only the control changes
            no_blur.blur = 0.0
            rows.append(Row(f"{name} (no prior blurring)", no_blur))
    for name, folder in parse_named(cfg.outputs, "--outputs"):
        if not Path(folder).is_dir():
            raise MissingInputError(f"--outputs {name}={folder}: folder not found")
        rows.append(Row(name, outputs=folder))
    return rows


@error_boundary("evaluate")
def main(argv: list[str] | None = None) -> dict:
    cfg, _ = parse_config(build_parser(), EvaluateConfig, argv)
    from train.evaluation import RANDOM_METRICS_NOTE, evaluate, prepare

    if not cfg.models and not cfg.outputs:
        raise ConfigError("nothing to evaluate: give --model NAME=CKPT and/or --outputs NAME=DIR")
    protocol, base, device, metrics = prepare(cfg)
    note = RANDOM_METRICS_NOTE if cfg.random_metrics else ""
    return evaluate(protocol, build_rows(cfg, device), cfg.out, metrics, base_dir=base, timing=not cfg.no_timing,
                    note=note)


if __name__ == "__main__":
    exit_with(main())
