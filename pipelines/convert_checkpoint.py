"""Rewrite a style-transfer checkpoint of an older bbst (NumPy arrays in it) as one that loads without pickle.

``bbst convert-checkpoint --trust OLD.pt NEW.pt`` reads OLD, allowing only the NumPy arrays and scalars older
checkpoints hold besides tensors and plain values, and writes NEW, which every command loads with
``torch.load(weights_only=True)``. ``--trust`` is required: it says you trust that one file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# torch is imported inside main(): `--help` prints before torch loads
from core.cli import error_boundary, exit_with, make_parser

EXAMPLES = (
    ("bbst convert-checkpoint --trust runs/neat/checkpoints/ckpt-00010000.pt runs/neat/ckpt-00010000.v2.pt",
     "convert a checkpoint written by an older bbst, which you trust, for use with this one"),
)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("convert-checkpoint", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--trust", action="store_true",
                   help="you trust OLD: required, since an older checkpoint loads only through pickle (default: off)")
    p.add_argument("old", metavar="OLD", help="checkpoint written by an older bbst, local or fsspec URL (required)")
    p.add_argument("new", metavar="NEW", help="checkpoint file to write, local or fsspec URL (required)")
    return p


@error_boundary("convert-checkpoint")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from train.checkpoint import convert_checkpoint

    result = convert_checkpoint(args.old, args.new, trust=args.trust)
    print(f"wrote {args.new}: loads without pickle")
    return result


if __name__ == "__main__":
    exit_with(main())
