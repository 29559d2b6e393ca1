"""Loader throughput: bbst's ShardPairLoader vs a plain webdataset.WebLoader doing the same crops, side by side.

Both read the same JPEG shards (1024-2048 px images), apply the same augmentation (random resize of the short
side in [crop, 2 x crop], random crop, random flip) and deliver uint8/float crops of ``--crop`` px.
The plain pipeline decodes every image at full resolution with PIL, resizes it whole, then crops (the usual
``WebDataset(...).shuffle().decode("pil").map(transform)``). bbst's loader decodes at the smallest DCT scale
that covers the crop (libjpeg-turbo via simplejpeg) and resamples only the crop box, while also keeping the
exact-resume state and the rank balance.

    python benchmarks/bench_loader.py                      # 2 workers, 512 px crops, 96 images
    python benchmarks/bench_loader.py --workers 4 --images 256 --crop 512
    python benchmarks/bench_loader.py --coverage-only      # epoch coverage on skewed shard layouts

Epoch coverage (share of the content samples a DDP run trains on in one epoch) on skewed shard layouts compares
bbst's sample-level dealing with the previous shard-dealing rule (every reader emits only as many samples as the
smallest reader's shards hold) and with WebDataset's ``split_by_node`` + ``split_by_worker`` (run for real over
tiny tars: every rank reads its shards, and a DDP epoch ends when the rank with the fewest batches runs out).
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


# ------------------------------------------------------------------------------------------------ epoch coverage

# name -> (content samples per shard, ranks, workers per rank, batch per rank)
LAYOUTS = {
    "12 shards of 1-25 (52 samples), 2 ranks x 2 workers x batch 2": ([1, 1, 2, 2, 3, 3, 4, 4, 5, 1, 1, 25], 2, 2, 2),
    "40 shards (39 x 1000 + 137) over 8 ranks x 4 workers x batch 8": ([1000] * 39 + [137], 8, 4, 8),
    "small last shard: 4 x 200 + 3, 1 rank x 5 workers x batch 4": ([200] * 4 + [3], 1, 5, 4),
    "1 shard of 13 (the curation demo), 1 rank x 2 workers x batch 2": ([13], 1, 2, 2),
}


def _tiny_shards(root: Path, sizes: list[int]) -> Path:
    """Tars of tiny members (nothing is decoded when counting) plus the manifest the loaders read."""
    import webdataset as wds

    marker = root / "layout.json"
    if marker.exists() and json.loads(marker.read_text()) == sizes:
        return root
    (root / "shards").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, n in enumerate(sizes):
        name = f"content-{i:06d}.tar"
        with open(root / "shards" / name, "wb") as f:
            writer = wds.TarWriter(f)
            for j in range(n):
                writer.write({"__key__": f"{i:06d}{j:06d}", "jpg": b"0"})
            writer.close()
        entries.append({"url": f"shards/{name}", "nsamples": n, "subset": "content"})
    entries.append({"url": "shards/style-000000.tar", "nsamples": 1, "subset": "style"})
    with open(root / "shards" / "style-000000.tar", "wb") as f:
        writer = wds.TarWriter(f)
        writer.write({"__key__": "style", "jpg": b"0"})
        writer.close()
    (root / "manifest.json").write_text(json.dumps({"shardlist": entries}))
    marker.write_text(json.dumps(sizes))
    return root


def coverage_bbst(root: Path, ranks: int, workers: int, batch: int, epoch: int) -> tuple[float, str]:
    """Share of samples bbst's loader yields in ``epoch`` (from its plan: the spans its readers own)."""
    from train.data import cut_runs, expand_runs

    data = DataConfig(root=str(root), crop_size=16, short_side_min=16, short_side_max=16)
    seen = []
    for rank in range(ranks):
        loader = ShardPairLoader(data, LoaderConfig(batch_size=batch, num_workers=workers, seed=0), rank, ranks)
        order = loader.planner.content_order(epoch, [])
        n = int((order[:, 2] - order[:, 1]).sum())
        for w in range(workers):
            shard, index = expand_runs(cut_runs(order, *loader.layout.span(n, rank, w)))
            seen += list(zip(shard.tolist(), index.tolist()))
    assert len(seen) == len(set(seen))
    return len(seen) / n, f"{loader.batches_per_epoch(epoch)} batches on every rank"


def coverage_previous(sizes: list[int], ranks: int, workers: int, batch: int, epoch: int) -> tuple[float | None, str]:
    """The previous rule: shards permuted and dealt to ranks x workers; every reader emits the smallest total."""
    slots = ranks * workers
    if len(sizes) < slots:
        return None, f"refused: {len(sizes)} shard(s) for {slots} readers"
    order = np.random.default_rng([0, 1, epoch, 0]).permutation(len(sizes))
    per_slot = min(sum(sizes[i] for i in order[g::slots]) for g in range(slots)) // batch * batch
    return per_slot * slots / sum(sizes), f"{per_slot // batch * workers} batches per rank"


def coverage_webdataset(root: Path, ranks: int, workers: int, batch: int) -> tuple[float, str]:
    """WebDataset's split_by_node + split_by_worker, run for real: a DDP epoch ends at the shortest rank."""
    import os

    import webdataset as wds

    urls = sorted(str(p) for p in (root / "shards").glob("content-*.tar"))
    per_rank = []
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS")}
    try:
        for rank in range(ranks):
            count = 0
            for worker in range(workers):
                os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks), WORKER=str(worker),
                                  NUM_WORKERS=str(workers))
                ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                                    workersplitter=wds.split_by_worker, empty_check=False)
                count += sum(1 for _ in ds)
            per_rank.append(count)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    steps = min(c // batch for c in per_rank)
    return steps * ranks * batch / sum(per_rank), f"per-rank samples {min(per_rank)}-{max(per_rank)}"


def bench_coverage(base: Path, epochs: int = 2) -> list[dict]:
    rows = []
    for i, (name, (sizes, ranks, workers, batch)) in enumerate(LAYOUTS.items()):
        root = _tiny_shards(base / f"layout{i}", sizes)
        wds_cov, wds_note = coverage_webdataset(root, ranks, workers, batch)
        for epoch in range(epochs):
            bbst_cov, bbst_note = coverage_bbst(root, ranks, workers, batch, epoch)
            prev_cov, prev_note = coverage_previous(sizes, ranks, workers, batch, epoch)
            rows.append({"layout": name, "epoch": epoch, "bbst": bbst_cov, "previous": prev_cov,
                         "webdataset": wds_cov, "notes": f"bbst: {bbst_note}; previous: {prev_note}; "
                                                         f"webdataset: {wds_note}"})
            prev = "refused" if prev_cov is None else f"{prev_cov:.1%}"
            print(f"{name}, epoch {epoch}: bbst {bbst_cov:.1%} | previous loader {prev} | "
                  f"webdataset split_by_node/worker {wds_cov:.1%}   ({rows[-1]['notes']})")
    return rows


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
    p.add_argument("--coverage-only", action="store_true", help="only the epoch-coverage comparison")
    args = p.parse_args(argv)

    coverage = bench_coverage(Path(args.root) / "coverage")
    if args.coverage_only:
        return {"coverage": coverage}
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
    result = {"coverage": coverage, "crop": args.crop, "workers": args.workers, "plain_img_s": max(plain),
              "bbst_img_s": max(bbst),
              "ratio": max(bbst) / max(plain), "single_process_ratio": bbst_1p / plain_1p,
              "plain_runs": plain, "bbst_runs": bbst}
    print(f"loader, {args.workers} workers, {args.crop} px crops: plain webdataset.WebLoader "
          f"{result['plain_img_s']:.1f} img/s | bbst ShardPairLoader {result['bbst_img_s']:.1f} img/s | "
          f"ratio {result['ratio']:.2f}x (best of {args.repeats})")
    return result


if __name__ == "__main__":
    main()
