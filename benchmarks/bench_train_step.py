"""Training-step time and peak memory at crops of 256, 512 and 768 px, on CPU and (when present) on a GPU.

One step is what ``train.trainer.train`` does per optimizer step: a discriminator step and a generator step
with their backward passes and both Adam updates (bf16 autocast on CUDA). Each (device, crop) runs in a fresh
subprocess so the CPU peak (max RSS) belongs to that configuration alone; on CUDA the peak is
``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_train_step.py                               # neat_tiny, batch 2, CPU (+ GPU)
    python benchmarks/bench_train_step.py --model neat --batch 4 --crops 256 512 768 --devices cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one(model_name: str, crop: int, batch: int, device: str, steps: int, warmup: int, threads: int) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from train.config import OptimConfig
    from train.models import create_model
    from train.step import bf16_autocast, make_optimizers, optimizer_step

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    kwargs = {"vgg_weights": None}  # random init: weights do not change the cost
    model = create_model(model_name, **kwargs).to(dev).train()
    opts = make_optimizers(model, OptimConfig())
    gen = torch.Generator().manual_seed(0)
    batch_t = {k: torch.rand(batch, 3, crop, crop, generator=gen).to(dev) for k in ("content", "style", "style2")}
    batch_t.update(content_key=[str(i) for i in range(batch)], style_key=[str(i) for i in range(batch)])
    autocast = bf16_autocast(dev)

    def step() -> None:
        optimizer_step(model, [batch_t], opts, autocast=autocast)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model_name, "device": device, "crop": crop, "batch": batch,
            "step_s": sorted(times)[len(times) // 2], "peak_mib": peak / 2**20,
            "peak_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process max RSS"}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="neat_tiny", help="registered model name")
    p.add_argument("--crops", type=int, nargs="+", default=[256, 512, 768])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child mode: one configuration
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.model, args.crops[0], args.batch, args.devices[0], args.steps, args.warmup,
                             args.threads)))
        return []
    devices = args.devices
    if devices is None:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for crop in args.crops:
            cmd = [sys.executable, __file__, "--one", "--model", args.model, "--crops", str(crop), "--batch",
                   str(args.batch), "--devices", device, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
            if proc.returncode != 0:
                print(f"{device} {crop}px failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['model']:>10} {device:>4} crop {crop:>4} batch {row['batch']}: "
                  f"{row['step_s']:.3f} s/step, peak {row['peak_mib']:.0f} MiB ({row['peak_kind']})", flush=True)
    return rows


if __name__ == "__main__":
    main()
