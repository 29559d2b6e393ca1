"""List every pretrained backbone bbst can use: what needs it, where bbst looks, whether it is here, how to fetch it.

bbst never downloads weights. ``bbst weights`` shows, for each known backbone (``core.weights.BACKBONES``), the
feature that loads it, the environment variable and file names searched, the folders searched, the file found (or
that none is), and the exact command that puts it where bbst looks, to run on a machine with internet access.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python pipelines/weights.py` puts pipelines/ first on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import error_boundary, exit_with, make_parser

EXAMPLES = (
    ("bbst weights", "every backbone: present or missing, where bbst looks, the command that fetches it"),
    ("bbst weights --missing", "only the backbones that are not on this machine"),
    ("bbst weights --json", "the same as JSON (one object per backbone)"),
)
HF_CLI = "huggingface-cli download"  # the Hugging Face hub's own client; it fills the cache bbst reads


def fetch_command(row: dict, weights_dir: str) -> str | None:
    """The shell command that fetches ``row``'s file into a folder bbst searches, or None when only a note exists.

    A file with a direct URL goes to ``weights_dir`` (``$BBST_WEIGHTS_DIR``); a Hugging Face file goes to the hub
    cache through the hub's own client, which is where bbst reads it.
    """
    url = next(iter(re.findall(r"https://\S+\.(?:pth|pt|bin|safetensors)", row["fetch"])), None)
    if url:
        target = f"{weights_dir}/{url.rsplit('/', 1)[-1]}"
        return f"mkdir -p {shlex.quote(weights_dir)} && curl -L -o {shlex.quote(target)} {url}"
    if row.get("hf_repo"):
        name = next((f for f in ("open_clip_pytorch_model.bin", "model.safetensors") if f in row["files"]),
                    row["files"][0])
        return f"{HF_CLI} {row['hf_repo']} {name}"
    return None


def rows() -> list[dict]:
    """``core.weights.weights_table()`` with each row's fetch command and the folders searched."""
    from core.weights import WEIGHTS_DIR_ENV, cache_dirs, weights_table

    dirs = cache_dirs()
    out = []
    for row in weights_table():
        row = dict(row)
        row["command"] = fetch_command(row, str(dirs["bbst"]))
        row["weights_dir_env"] = WEIGHTS_DIR_ENV
        out.append(row)
    return out


def render(table: list[dict]) -> str:
    """The listing a terminal shows: one block per backbone."""
    from core.weights import WEIGHTS_DIR_ENV, cache_dirs

    dirs = cache_dirs()
    present = sum(1 for r in table if r["found"])
    lines = [(f"{present} of {len(table)} backbones present. bbst never downloads weights; it looks, in order, in the "
             "file an environment variable names, "
             f"${WEIGHTS_DIR_ENV} ({dirs['bbst']}), torch hub ({dirs['torch_hub']}), the Hugging Face cache "
             f"({dirs['hf_hub']}) and the open_clip / CLIP caches ({dirs['open_clip']}, {dirs['clip']})."), ""]
    for r in table:
        state = f"present: {r['found']}" if r["found"] else "MISSING"
        lines.append(f"{r['title']} [{r['name']}]: {state}")
        lines.append(f"  used by: {r['used_by']}")
        lines.append(f"  files:   {', '.join(r['files'])}" + (f" (or ${r['env']} = the file)" if r["env"] else "")
                     + (f"; Hugging Face repo {r['hf_repo']}" if r["hf_repo"] else ""))
        if not r["found"]:
            if r["command"]:
                lines.append(f"  fetch:   {r['command']}")
            lines.append(f"  source:  {r['fetch']}")
        lines.append("")
    lines.append("Evaluation commands run without the metric backbones with --random-metrics (the numbers are then "
                 "meaningless); the tiny test models (*_tiny, test_*) need no weights.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("weights", __doc__.split("\n")[0], EXAMPLES)
    p.add_argument("--missing", action="store_true", help="list only the backbones not found here (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (default: text)")
    return p


@error_boundary("weights")
def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    table = [r for r in rows() if not (args.missing and r["found"])]
    print(json.dumps(table, indent=2) if args.json else render(table))
    return table


if __name__ == "__main__":
    exit_with(main())
