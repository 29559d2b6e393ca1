"""Training-step and inference time of every seed model against NeAT, in one run, plus MetaStyle's adaptation time.

Full-size architectures with random weights (weights do not change the cost). Per model and size, in a fresh
subprocess: one optimizer step as the trainer does it (discriminator step when the model has one, generator step,
backward passes, Adam updates; batch ``--batch``) and one ``stylize`` call (content WxH, style 512 px), each the
median of ``--repeats`` after a warm-up. MetaStyle's adaptation is timed per Adam step at its adaptation setting
(4 crops of 256 px) and projected to its 200 steps. On CUDA the steps run under bf16 autocast like the trainer and
times are warm medians after synchronisation. Ratios to NeAT are printed with the table.

    python benchmarks/bench_seed_models.py                                   # CPU (+ CUDA when present)
    python benchmarks/bench_seed_models.py --models neat variational --sizes 512x512 --devices cpu --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("neat", "neat_balanced", "variational", "metastyle")
RANDOM = {"neat": {"vgg_weights": None}, "neat_balanced": {"vgg_weights": None},
          "variational": {"loss_vgg_weights": None}, "metastyle": {"loss_vgg_weights": None}}


def _timed(fn, repeats: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one(model_name: str, phase: str, width: int, height: int, batch: int, device: str, repeats: int, warmup: int,
        threads: int, adapt_steps: int) -> dict:
    sys.path.insert(0, str(REPO))
    import torch

    from train.config import OptimConfig
    from train.models import create_model
    from train.step import bf16_autocast, make_optimizers, optimizer_step

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(model_name, **RANDOM[model_name]).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    gen = torch.Generator().manual_seed(0)
    rec = {"model": model_name, "phase": phase, "size": f"{width}x{height}", "device": device}
    if phase == "train":
        model.train()
        opts = make_optimizers(model, OptimConfig())
        b = {k: torch.rand(batch, 3, height, width, generator=gen).to(dev) for k in ("content", "style", "style2")}
        b.update(content_key=[str(i) for i in range(batch)], style_key=[str(i) for i in range(batch)])
        autocast = bf16_autocast(dev)

        def step():
            optimizer_step(model, [b], opts, autocast=autocast)

        rec["seconds"] = _timed(step, repeats, warmup, sync)
        rec["batch"] = batch
    elif phase == "infer":
        model.eval()
        content = torch.rand(1, 3, height, width, generator=gen).to(dev)
        style = torch.rand(1, 3, 512, 512, generator=gen).to(dev)
        with torch.inference_mode():
            rec["seconds"] = _timed(lambda: model.stylize(content, style), repeats, warmup, sync)
    else:  # adapt: MetaStyle's per-style adaptation, timed per step and projected to adapt_steps
        style = torch.rand(1, 3, 512, 512, generator=gen).to(dev)
        crops = torch.rand(4, 3, height, width, generator=gen).to(dev)
        model.adapt(style, crops, steps=2)  # warm-up
        sync()
        _, info = model.adapt(style, crops, steps=max(repeats, 3))
        per_step = info["seconds"] / len(info["losses"])
        rec.update(seconds_per_step=per_step, steps=adapt_steps, seconds=per_step * adapt_steps)
    rec["peak_mb"] = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
                      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return rec


def _run_child(args, model: str, phase: str, size: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model, phase, size, device, "--batch", str(args.batch),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--adapt-steps", str(args.adapt_steps), "--mem-limit-gb", str(args.mem_limit_gb)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=args.timeout)
    if proc.returncode != 0:
        return {"model": model, "phase": phase, "size": size, "device": device,
                "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sizes", nargs="+", default=["512x512", "1920x1080"], help="WxH of training batch and content")
    p.add_argument("--phases", nargs="+", default=["train", "infer", "adapt"], choices=("train", "infer", "adapt"))
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--batch", type=int, default=1, help="training batch size")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--adapt-steps", type=int, default=200, help="MetaStyle adaptation steps to project to")
    p.add_argument("--adapt-size", default="256x256", help="MetaStyle adaptation crop size")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement before it is reported failed")
    p.add_argument("--mem-limit-gb", type=float, default=0.0,
                   help="address-space cap per measurement (fails that measurement instead of the machine's OOM)")
    p.add_argument("--json", default="", help="also write the records to this file")
    p.add_argument("--child", nargs=4, metavar=("MODEL", "PHASE", "SIZE", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        model, phase, size, device = args.child
        if args.mem_limit_gb > 0:  # a shared machine: an over-size step fails alone instead of triggering the OOM killer
            cap = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        w, h = (int(v) for v in size.split("x"))
        print(json.dumps(one(model, phase, w, h, args.batch, device, args.repeats, args.warmup, args.threads,
                             args.adapt_steps)))
        return []
    import torch

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    records = []
    for device in devices:
        for phase in args.phases:
            if phase == "adapt":
                if "metastyle" in args.models:
                    records.append(_run_child(args, "metastyle", "adapt", args.adapt_size, device))
                    print(json.dumps(records[-1]), flush=True)
                continue
            for size in args.sizes:
                for model in args.models:
                    records.append(_run_child(args, model, phase, size, device))
                    print(json.dumps(records[-1]), flush=True)
    neat = {(r["phase"], r["size"], r["device"]): r.get("seconds") for r in records if r["model"] == "neat"}
    print("\n| device | phase | size | model | seconds | x NeAT | peak MB |\n|---|---|---|---|---|---|---|")
    for r in records:
        ref = neat.get((r["phase"], r["size"], r["device"]))
        sec = r.get("seconds")
        ratio = f"{sec / ref:.2f}" if sec and ref else "—"
        shown = f"{sec:.3f}" if sec is not None else f"error: {r.get('error', '')[:60]}"
        print(f"| {r['device']} | {r['phase']} | {r['size']} | {r['model']} | {shown} | {ratio} | "
              f"{r.get('peak_mb', 0):.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return records


if __name__ == "__main__":
    main()
