"""Peak inference memory of NeAT stylisation vs content resolution: chunked attention vs full attention.

Each measurement runs in a fresh subprocess so peaks do not leak between runs. CPU: peak RSS growth during the
stylize call (``ru_maxrss`` after minus RSS before). GPU: ``torch.cuda.max_memory_allocated`` growth.

Modes:
  chunked        attention in content-row chunks, style tokens capped (the default inference path)
  sdpa           F.scaled_dot_product_attention per chunk, style capped
  full           the whole content x style attention matrix at once, style capped
  full_uncapped  full attention with the style image at the content's resolution and no cap (quadratic)

  python benchmarks/bench_inference_memory.py --model neat_tiny
  python benchmarks/bench_inference_memory.py --model neat --modes chunked full --sizes 512x512 1920x1080
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

ROOT = Path(__file__).resolve().parent.parent


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def worker(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from train.models import create_model

    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    mode = args.mode
    overrides = {"vgg_weights": None,  # random init: memory and time do not depend on the weight values
                 "attention_mode": "full" if mode.startswith("full") else mode,
                 # the inference defaults of the real model, also for the tiny one (its test config is smaller)
                 "attention_chunk": args.chunk, "max_style_tokens": 0 if mode == "full_uncapped" else 4096}
    model = create_model(args.model, **overrides).eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, h, w, generator=g).to(args.device)
    style_hw = (h, w) if mode == "full_uncapped" else (args.style_size, args.style_size)
    style = torch.rand(1, 3, *style_hw, generator=g).to(args.device)
    blur = None if args.blur < 0 else args.blur
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.stylize(content, style, blur=blur)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.perf_counter() - t
    fc_tokens = (h // 8) * (w // 8)
    fs_tokens = (style_hw[0] // 8) * (style_hw[1] // 8)
    if mode != "full_uncapped":
        fs_tokens = min(fs_tokens, model.cfg.max_style_tokens)
    return {"size": args.size, "mode": mode, "peak_mb": peak / 2**20, "seconds": seconds,
            "content_tokens": fc_tokens, "style_tokens": fs_tokens, "out_shape": list(out.shape)}


def attention_bytes(content_tokens: int, style_tokens: int) -> int:
    # logits + softmax output, fp32, per attention call (the main quadratic term)
    return 2 * 4 * content_tokens * style_tokens


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="neat_tiny", help="registered model (neat = real VGG-19 width)")
    p.add_argument("--sizes", nargs="+", default=["512x512", "1920x1080", "3840x2160"])
    p.add_argument("--modes", nargs="+", default=["chunked", "full", "full_uncapped"])
    p.add_argument("--style-size", type=int, default=512)
    p.add_argument("--blur", type=float, default=-1.0, help="prior blur strength (-1 = as trained)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=4096, help="content tokens per attention chunk")
    p.add_argument("--max-attention-gb", type=float, default=6.0,
                   help="skip a run whose full attention matrices alone would exceed this")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return []

    results = []
    for mode in args.modes:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            st = (h // 8) * (w // 8) if mode == "full_uncapped" else min((args.style_size // 8) ** 2, 4096)
            need = attention_bytes((h // 8) * (w // 8), st) if mode.startswith("full") else 0
            if need > args.max_attention_gb * 2**30:
                row = {"size": size, "mode": mode, "peak_mb": None, "seconds": None,
                       "note": f"skipped: attention alone needs ~{need / 2**30:.1f} GB"}
                print(json.dumps(row), flush=True)
                results.append(row)
                continue
            cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--size", size, "--mode", mode,
                   "--style-size", str(args.style_size), "--blur", str(args.blur), "--device", args.device,
                   "--threads", str(args.threads), "--chunk", str(args.chunk)]
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                row = {"size": size, "mode": mode, "peak_mb": None, "seconds": None,
                       "note": f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            results.append(row)

    print(f"\nmodel={args.model} device={args.device} style={args.style_size}px threads={args.threads} "
          f"chunk={args.chunk}")
    print("| mode | size | content tokens | style tokens | peak MB | MB per Mpx | vs 512x512 (pixels x) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        rows = [r for r in results if r["mode"] == mode]
        base = next((r for r in rows if r["peak_mb"]), None)
        for r in rows:
            w, h = (int(v) for v in r["size"].split("x"))
            if r["peak_mb"] is None:
                print(f"| {mode} | {r['size']} | | | {r['note']} | | | |")
                continue
            bw, bh = (int(v) for v in base["size"].split("x"))
            print(f"| {mode} | {r['size']} | {r['content_tokens']} | {r['style_tokens']} | {r['peak_mb']:.0f} | "
                  f"{r['peak_mb'] / (w * h / 1e6):.0f} | {r['peak_mb'] / base['peak_mb']:.1f}x "
                  f"({w * h / (bw * bh):.1f}x) | {r['seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
