"""List every pretrained backbone bbst can use: what needs it, where bbst looks, whether it is here, how to fetch it.

bbst never downloads weights. ``bbst weights`` shows, for each known backbone (``core.weights.BACKBONES``), the
feature that loads it, the environment variable and file names searched, the folders searched, the file found (or
that none is), and the exact command that puts it where bbst looks, to run on a machine with internet access.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: pipelines/ is first on sys.path, the repo root is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, make_parser
from core.weights import render_listing, weights_listing

EXAMPLES = (
    ("bbst weights", "every backbone: present or missing, where bbst looks, the command that fetches it"),
    ("bbst weights --missing", "only the backbones that are not on this machine"),
    ("bbst weights --json", "the same as JSON (one object per backbone)"),
)


def build_parser():
    p = make_parser("weights", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--missing", action="store_true", help="list only the backbones not found here (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    return p


@error_boundary("weights")
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    table = [r for r in weights_listing() if not (args.missing and r["found"])]
    print(json.dumps(table, indent=2) if args.json else render_listing(table))
    return table


if __name__ == "__main__":
    exit_with(main())
