"""Scoring throughput of the classifier (shared-trunk, two-trunk) against a plain open_clip image embedding.

    python benchmarks/bench_classifier.py                      # CPU, ViT-B/16, batch 32
    python benchmarks/bench_classifier.py --device cuda --batch-size 256 --batches 20   # GPU, bf16 autocast

All models are random-init (throughput does not depend on the weights). Each round times one batch of every
model in turn, so a load spike on a shared machine hits all of them alike; the median over rounds is reported,
with each classifier mode's ratio to the plain open_clip ``encode_image`` forward of the same backbone size.
``--end-to-end`` adds the full scorer path (JPEG decode + resize in threads, forward, calibration) on
generated 1024 px JPEGs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

SIZES = {
    # name: (classifier configs, open_clip config, classifier overrides)
    "vitb16": (("bbst_vitb16_clip", "bbst_vitb16_2trunk"), "ViT-B-16", {}),
    "tiny": (("test_vit_shared", "test_vit_2trunk"), None, {}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _plain_open_clip(name: str | None, device: torch.device, tiny_like=None):
    import open_clip

    if name is None:  # a tiny CLIP vision tower with the same shape as the tiny test trunks
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8,
                                                            image_size=64),
                     text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=16, heads=1, layers=1))
    else:
        model = open_clip.create_model(name, pretrained=None)
    return model.visual.to(device).eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="vitb16")
    p.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="timed rounds (one batch per model per round)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    p.add_argument("--end-to-end", action="store_true", help="also time StyleScorer on 1024 px JPEG bytes")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from classifier.factory import create_classifier
    from core.device import resolve_device

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs, clip_name, overrides = SIZES[args.size]
    models = {name: create_classifier(name, **overrides).to(device).eval() for name in configs}
    # the shared trunk's own timm forward without the style branch: separates the cost of the statistics from
    # the difference between the timm and open_clip ViT implementations
    models["timm_trunk_plain"] = models[configs[0]].trunk
    models["open_clip_plain"] = _plain_open_clip(clip_name, device)
    size = models[configs[0]].cfg.preprocess.size
    x = torch.randn(args.batch_size, 3, size, size, device=device)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode(), _autocast(device):
        for rnd in range(args.warmup + args.batches):
            for name, model in models.items():
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                if rnd >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    result = {"device": str(device), "dtype": "bf16 autocast" if device.type == "cuda" else "fp32",
              "size": args.size, "batch_size": args.batch_size, "batches": args.batches, "threads": args.threads,
              "images_per_s": {k: args.batch_size / statistics.median(v) for k, v in times.items()}}
    plain = result["images_per_s"]["open_clip_plain"]
    result["ratio_to_plain"] = {k: v / plain for k, v in result["images_per_s"].items()}
    if args.end_to_end:
        result["end_to_end_images_per_s"] = _end_to_end(configs[0], device, args)
    print(f"device={result['device']} ({result['dtype']}), {args.size}, batch {args.batch_size}, "
          f"median of {args.batches} rounds")
    for k, v in result["images_per_s"].items():
        print(f"  {k:22s} {v:9.2f} img/s   x{result['ratio_to_plain'][k]:.3f} of plain open_clip")
    if "end_to_end_images_per_s" in result:
        print(f"  StyleScorer end-to-end ({configs[0]}, 1024 px JPEG bytes): {result['end_to_end_images_per_s']:.2f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _end_to_end(name: str, device: torch.device, args) -> float:
    import tempfile

    import numpy as np

    from classifier.checkpoint import save_classifier
    from classifier.factory import create_classifier
    from classifier.head import HeadResult
    from classifier.scoring import StyleScorer
    from core.synthetic import encode, make_image

    model = create_classifier(name)
    with tempfile.TemporaryDirectory() as tmp:
        save_classifier(tmp, model, HeadResult(head=model.head), training_data_hash="bench")
        scorer = StyleScorer(tmp, device=str(device), batch_size=args.batch_size, num_threads=args.threads)
        imgs = [encode(make_image(i % 2, 1024, 1024, seed=i)) for i in range(args.batch_size)]
        batch = {"image": np.array(imgs, dtype=object)}
        scorer(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.batches):
            scorer(batch)
        return args.batch_size * args.batches / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
