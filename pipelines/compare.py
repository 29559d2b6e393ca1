"""Compare every trained model on the same protocol pairs: one table and one image grid (PNG + HTML).

``bbst evaluate`` run on every ``--model NAME=CKPT``, plus a meta-trained MetaStyle checkpoint adapted to each style
first (on ``--adapt-content``, training-set images; its adaptation time is its own column) and the deception rate
when ``--artist-model`` is given. docs/models.md describes the table; ``train.evaluation_runs`` does the work.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import config_parser, error_boundary, exit_with, parse_config
from train.config import EVAL_FLAGS, CompareConfig

EXAMPLES = (
    (("bbst compare --protocol protocol.yaml --model NeAT=neat.pt --model RAST=rast.pt --model MetaStyle=meta.pt "
     "--adapt-content train-photos/ --out comparison/"),
     "every model on a protocol's pairs: one table (MetaStyle adapted per style) and one grid"),
    (("bbst compare --protocol eval-tiny/protocol.yaml --model tiny=ckpt.pt --random-metrics --timing-sizes 64x64 "
     "--adapt-steps 5 --adapt-crop 32 --out comparison-tiny/"), "a smoke run: tiny protocol, random metric nets"),
)


def build_parser():
    return config_parser("compare", __doc__.split("\n")[0], EXAMPLES, CompareConfig, "adapt_steps=100",
                         EVAL_FLAGS)


@error_boundary("compare")
def main(argv: list[str] | None = None) -> dict:
    cfg, _ = parse_config(build_parser(), CompareConfig, argv)
    from train.evaluation_runs import compare_models

    return compare_models(cfg)


if __name__ == "__main__":
    exit_with(main())
