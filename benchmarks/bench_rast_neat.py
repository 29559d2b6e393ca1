"""RAST against NeAT in one run: training-step time and inference time (warm medians) at the paper's sizes.

Both models at real width (VGG-19, random weights: weights do not change the cost). A training step is what
``train.trainer.train`` does per optimizer step: discriminator step + generator step with backward passes and both
Adam updates, on ``--batch`` content-style pairs (plus IEContraAST's roll pairs). Inference is ``model.stylize`` on
one content image at each size with a ``--style-size`` style, timed by ``train.metrics.seconds_per_image``: warm-up
calls first, then the median of the timed calls, with ``torch.cuda.synchronize`` around each call on a GPU.

    python benchmarks/bench_rast_neat.py                                   # CPU: step at 256, inference 512 + 1080p
    python benchmarks/bench_rast_neat.py --device cuda --sizes 256x256 512x512 1920x1080 --repeats 20 --warmup 5

On CUDA the models run in bf16 autocast with ``attention_mode=sdpa`` (fused attention kernels); on CPU in fp32
with the chunked attention. Prints a Markdown table and, with ``--json``, writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def train_step_seconds(model, crop: int, batch: int, device, steps: int, warmup: int, bf16: bool) -> float:
    import torch

    from train.config import OptimConfig
    from train.step import bf16_autocast, make_optimizers, optimizer_step

    opts = make_optimizers(model, OptimConfig())
    gen = torch.Generator().manual_seed(0)
    data = {k: torch.rand(batch, 3, crop, crop, generator=gen).to(device) for k in ("content", "style", "style2")}
    autocast = bf16_autocast(device, bf16)

    def step() -> None:
        optimizer_step(model, [data], opts, autocast=autocast)

    model.train()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["neat", "rast"], help="registered models (real width)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sizes", nargs="+", default=["512x512", "1920x1080"], help="inference sizes WxH")
    p.add_argument("--style-size", type=int, default=512, help="style image side for inference")
    p.add_argument("--crop", type=int, default=256, help="training crop (0 = skip the training step)")
    p.add_argument("--batch", type=int, default=2, help="content-style pairs per training step")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (median)")
    p.add_argument("--repeats", type=int, default=2, help="timed inference calls per size (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)

    import torch

    from train.metrics import seconds_per_image
    from train.models import create_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    gen = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, args.style_size, args.style_size, generator=gen).to(device)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, vgg_weights=None, attention_mode="sdpa" if cuda else "chunked").to(device)
        row: dict = {"model": name, "device": torch.cuda.get_device_name(device) if cuda else "cpu"}
        if args.crop:
            row[f"train_step_{args.crop}px_s"] = train_step_seconds(model, args.crop, args.batch, device, args.steps,
                                                                    args.warmup, bf16=cuda)
            print(f"{name}: train step {args.crop}px x {args.batch} pairs: {row[f'train_step_{args.crop}px_s']:.3f} s",
                  flush=True)
        model.eval()

        def run(content, style_img, model=model):
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
                return model.stylize(content, style_img)

        for w, h in sizes:
            content = torch.rand(1, 3, h, w, generator=gen).to(device)
            row[f"infer_{w}x{h}_s"] = seconds_per_image(run, content, style, repeats=args.repeats,
                                                        warmup=args.warmup)
            print(f"{name}: stylize {w}x{h}: {row[f'infer_{w}x{h}_s']:.3f} s/image", flush=True)
        rows.append(row)
        del model
        if cuda:
            torch.cuda.empty_cache()
    keys = [k for k in rows[0] if k not in ("model", "device")]
    print("\n| model | device | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['model']} | {r['device']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    if len(rows) == 2:
        print("\nratio " + rows[1]["model"] + " / " + rows[0]["model"] + ": "
              + ", ".join(f"{k} {rows[1][k] / rows[0][k]:.2f}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
