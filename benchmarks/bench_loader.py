"""Loader throughput: bbst's ShardPairLoader vs a plain webdataset.WebLoader doing the same crops, side by side.

Both read the same JPEG shards (1024-2048 px images), apply the same augmentation (random resize of the short
side in [crop, 2 x crop], random crop, random flip) and deliver uint8/float crops of ``--crop`` px.
The plain pipeline decodes every image at full resolution with PIL, resizes it whole, then crops (the usual
``WebDataset(...).shuffle().decode("pil").map(transform)``). bbst's loader decodes at the smallest DCT scale
that covers the crop (libjpeg-turbo via simplejpeg) and resamples only the crop box, while also keeping the
exact-resume state and the rank balance.

    python benchmarks/bench_loader.py                      # 2 workers, 512 px crops, 96 images
    python benchmarks/bench_loader.py --workers 4 --images 256 --crop 512
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.config import DataConfig, LoaderConfig
from train.data import CropSpec, ShardPairLoader, decode_crops


def make_shards(root: Path, images: int, per_shard: int, seed: int = 0) -> Path:
    """JPEG shards of 1024-2048 px synthetic images (content photo-like, style artwork-like), cached on disk."""
    from train.demo_shards import write_demo_shards

    marker = root / "bench.json"
    want = {"images": images, "per_shard": per_shard, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return root
    half = images // 2
    counts = [per_shard] * (half // per_shard) + ([half % per_shard] if half % per_shard else [])
    # 2048x1536 scaled by 0.75-1.0 per image: short sides 1152-1536, long sides 1536-2048
    write_demo_shards(root, {"content": counts, "style": counts}, size=(2048, 1536), seed=seed)
    marker.write_text(json.dumps(want))
    return root


def plain_transform(crop: int, lo: int, hi: int):
    """Full PIL decode -> resize the whole image to a random short side -> random crop -> flip (the baseline)."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)

    def transform(sample: dict) -> np.ndarray:
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(sample["jpg"]))).convert("RGB")
        w, h = img.size
        short = float(rng.uniform(lo, hi))
        ratio = short / min(w, h)
        img = img.resize((max(crop, round(w * ratio)), max(crop, round(h * ratio))), Image.Resampling.BILINEAR)
        x = int(rng.integers(0, img.size[0] - crop + 1))
        y = int(rng.integers(0, img.size[1] - crop + 1))
        img = img.crop((x, y, x + crop, y + crop))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(img)

    return transform


def bench_plain(root: Path, crop: int, workers: int, batch: int, n_images: int) -> float:
    import torch
    import webdataset as wds

    urls = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    transform = plain_transform(crop, crop, 2 * crop)

    def to_tensor(sample):
        return torch.from_numpy(transform(sample).copy()).permute(2, 0, 1)

    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, empty_check=False,
                         seed=0)
          .shuffle(32).map(to_tensor).batched(batch, collation_fn=torch.stack).repeat())
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
    return _time((b.float() / 255 for b in loader), n_images, batch, warmup=2 * workers)


def bench_bbst(root: Path, crop: int, workers: int, batch: int, n_images: int) -> float:
    data = DataConfig(root=str(root), crop_size=crop, short_side_min=crop, short_side_max=2 * crop, style2=False)
    cfg = LoaderConfig(batch_size=batch // 2, num_workers=workers, open_shards=2, shuffle_buffer=16)
    loader = ShardPairLoader(data, cfg)

    def images():  # one pair = two crops (content + style), so count both
        for b in loader:
            yield b["content"]
            yield b["style"]

    return _time(images(), n_images, batch // 2, warmup=4 * workers)


def _time(batches, n_images: int, per_batch: int, warmup: int) -> float:
    it = iter(batches)
    for _ in range(warmup):  # worker start-up and the first shard opens / buffer fills are not throughput
        next(it)
    done, t0 = 0, time.perf_counter()
    while done < n_images:
        next(it)
        done += per_batch
    return done / (time.perf_counter() - t0)


def bench_decode_only(root: Path, crop: int, n: int) -> tuple[float, float]:
    """Per-image transform cost in one process (no loader): plain full decode vs bbst's scaled decode."""
    import tarfile

    datas = []
    for p in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(p) as tf:
            datas += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".jpg")]
    datas = datas[:n]
    rng = np.random.default_rng(1)
    plain = plain_transform(crop, crop, 2 * crop)
    t0 = time.perf_counter()
    for d in datas:
        plain({"jpg": d})
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in datas:
        decode_crops(d, [CropSpec(float(rng.uniform(crop, 2 * crop)), rng.random(), rng.random(), rng.random() < .5)],
                     crop)
    t_bbst = time.perf_counter() - t0
    return len(datas) / t_plain, len(datas) / t_bbst


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="/tmp/bbst-bench-loader", help="where the benchmark shards are cached")
    p.add_argument("--images", type=int, default=96, help="images in the shards (half content, half style)")
    p.add_argument("--per-shard", type=int, default=12, help="images per shard")
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="images per batch (bbst: batch/2 pairs)")
    p.add_argument("--measure", type=int, default=160, help="images timed per loader")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each loader")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    root = make_shards(Path(args.root), args.images, args.per_shard)
    print(f"shards ready in {time.perf_counter() - t0:.1f}s at {root}")
    plain_1p, bbst_1p = bench_decode_only(root, args.crop, min(args.images, 48))
    print(f"single process, per image: plain {plain_1p:.1f} img/s, bbst {bbst_1p:.1f} img/s, "
          f"ratio {bbst_1p / plain_1p:.2f}x")
    plain, bbst = [], []
    for _ in range(args.repeats):  # alternate so that load from other processes hits both alike
        plain.append(bench_plain(root, args.crop, args.workers, args.batch, args.measure))
        bbst.append(bench_bbst(root, args.crop, args.workers, args.batch, args.measure))
    result = {"crop": args.crop, "workers": args.workers, "plain_img_s": max(plain), "bbst_img_s": max(bbst),
              "ratio": max(bbst) / max(plain), "single_process_ratio": bbst_1p / plain_1p,
              "plain_runs": plain, "bbst_runs": bbst}
    print(f"loader, {args.workers} workers, {args.crop} px crops: plain webdataset.WebLoader "
          f"{result['plain_img_s']:.1f} img/s | bbst ShardPairLoader {result['bbst_img_s']:.1f} img/s | "
          f"ratio {result['ratio']:.2f}x (best of {args.repeats})")
    return result


if __name__ == "__main__":
    main()
