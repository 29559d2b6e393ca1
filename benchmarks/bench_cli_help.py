"""Time ``bbst COMMAND --help`` in fresh processes, side by side with another checkout (for example the main branch).

    python benchmarks/bench_cli_help.py                              # this checkout only
    python benchmarks/bench_cli_help.py --baseline /path/to/other/checkout --rounds 5

Each round runs every command of every checkout once, in turn, so a load spike on a shared machine hits them
alike; the median over rounds is reported, with the heavy modules (torch, Ray) each ``--help`` imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("build", "train-classifier", "label", "train", "stylize", "evaluate")
PROBE = """
import contextlib, io, json, sys, time
t = time.perf_counter()
from pipelines import cli
with contextlib.redirect_stdout(io.StringIO()):
    try:
        cli.main([sys.argv[1], "--help"])
    except SystemExit:
        pass
print(json.dumps({"seconds": time.perf_counter() - t,
                  "heavy": [m for m in ("torch", "ray", "timm", "open_clip") if m in sys.modules]}))
"""


def probe(checkout: Path, command: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, cwd=checkout,
                          env=env, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, help="another checkout to compare with (default: none)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default: 3)")
    args = p.parse_args(argv)
    checkouts = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    times: dict[tuple[str, str], list[float]] = {}
    heavy: dict[tuple[str, str], list[str]] = {}
    for _ in range(args.rounds):
        for command in COMMANDS:
            for name, checkout in checkouts.items():
                res = probe(checkout, command)
                times.setdefault((name, command), []).append(res["seconds"])
                heavy[(name, command)] = res["heavy"]
    print(f"{'command':<18}" + "".join(f"{name + ' s':>14}{'heavy':>18}" for name in checkouts)
          + ("   baseline/this" if args.baseline else ""))
    out = {}
    for command in COMMANDS:
        med = {name: statistics.median(times[(name, command)]) for name in checkouts}
        row = f"{command:<18}" + "".join(f"{med[n]:>14.2f}{','.join(heavy[(n, command)]) or '-':>18}" for n in checkouts)
        if args.baseline:
            row += f"   {med['baseline'] / med['this']:>10.1f}x"
        print(row)
        out[command] = {n: {"seconds": med[n], "heavy": heavy[(n, command)]} for n in checkouts}
    return out


if __name__ == "__main__":
    main()
