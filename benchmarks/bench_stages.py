"""Micro-benchmark of the CPU-bound check stage against a plain read+hash+validate loop, and of the downloader.

    python benchmarks/bench_stages.py --images 60 --rounds 5

Prints per-image CPU time (thread time, so other load on the machine distorts it less than wall time) of:
the floor (sha256 + PIL open + full decode, nothing else), ImageChecker (header checks, decode, mode policy,
sha256, phash) and their ratio; then the downloader's images/s and MB/s against a loopback server.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from curate import synthetic
from curate.downloader import DownloadConfig, Downloader
from curate.imagecheck import ImageCheckConfig, ImageChecker


def make_corpus(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(1024, 1700)), int(rng.integers(1024, 1400))
        out.append(synthetic.encode(synthetic.make_image(i % 2, w, h, seed=i), "JPEG", quality=92))
    return out


def floor(datas: list[bytes]) -> None:
    for d in datas:
        hashlib.sha256(d).hexdigest()
        with Image.open(io.BytesIO(d)) as im:
            im.load()


def bench_check(datas: list[bytes], rounds: int) -> None:
    checker = ImageChecker(ImageCheckConfig())
    batch = {"image": np.array(datas, dtype=object)}
    best_floor = best_check = float("inf")
    for _ in range(rounds):
        t = time.thread_time()
        floor(datas)
        best_floor = min(best_floor, time.thread_time() - t)
        t = time.thread_time()
        out = checker(batch)
        best_check = min(best_check, time.thread_time() - t)
    assert set(out["status"]) == {"ok"}, set(out["status"])
    n = len(datas)
    print(f"check: floor {best_floor / n * 1e3:.1f} ms/img, ImageChecker {best_check / n * 1e3:.1f} ms/img, "
          f"ratio floor/checker {best_floor / best_check:.2f} (best of {rounds}, CPU time, 1 thread)")


def bench_download(datas: list[bytes], threads: int, repeat: int) -> None:
    from http_faults import FaultServer

    with FaultServer() as server:
        urls = [server.add_bytes(f"img/{r}-{i}.jpg", d) for r in range(repeat) for i, d in enumerate(datas)]
        dl = Downloader(DownloadConfig(allowed_networks=["127.0.0.0/8"], threads=threads,
                                       per_host_concurrency=threads))
        dl({"url": np.array(urls[:4], dtype=object)})  # warm the connection pool
        t = time.perf_counter()
        out = dl({"url": np.array(urls, dtype=object)})
        wall = time.perf_counter() - t
    assert set(out["status"]) == {"ok"}, set(out["status"])
    mb = sum(out["num_bytes"]) / 1e6
    print(f"download: {len(urls)} images, {mb:.1f} MB in {wall:.2f}s wall = {len(urls) / wall:.0f} img/s, "
          f"{mb / wall:.0f} MB/s (threads={threads}, loopback, server in the same process)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--download-repeat", type=int, default=5, help="each image is served under this many URLs")
    args = p.parse_args(argv)
    datas = make_corpus(args.images)
    print(f"corpus: {len(datas)} JPEGs, mean {np.mean([len(d) for d in datas]) / 1024:.0f} KiB, 1024-1700 px")
    bench_check(datas, args.rounds)
    bench_download(datas, args.threads, args.download_repeat)


if __name__ == "__main__":
    main()
