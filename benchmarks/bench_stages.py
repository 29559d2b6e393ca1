"""Micro-benchmark of the CPU-bound check stage against a plain read+hash+validate loop, and of the downloader.

    python benchmarks/bench_stages.py --images 60 --rounds 5
    python benchmarks/bench_stages.py --images 40 --max-side 2048 --compare-ref HEAD~3 --skip-download

Prints per-image CPU time (thread time, so other load on the machine distorts it less than wall time) of:
the floor (sha256 + PIL open + full decode, nothing else), ImageChecker (header checks, decode, mode policy,
sha256, phash) and their ratio; then the downloader's images/s and MB/s against a loopback server.
``--compare-ref`` also times the ImageChecker of another git revision on the same corpus, rounds interleaved.
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

from core import synthetic
from curate.downloader import DownloadConfig, Downloader
from curate.imagecheck import ImageCheckConfig, ImageChecker


def make_corpus(n: int, seed: int = 0, max_side: int = 1700) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(1024, max_side)), int(rng.integers(1024, max(1025, max_side * 4 // 5)))
        out.append(synthetic.encode(synthetic.make_image(i % 2, w, h, seed=i), "JPEG", quality=92))
    return out


def floor(datas: list[bytes]) -> None:
    for d in datas:
        hashlib.sha256(d).hexdigest()
        with Image.open(io.BytesIO(d)) as im:
            im.load()


def checker_at(ref: str):
    """The ImageChecker class of git revision ``ref`` (its curate/imagecheck.py loaded under another name)."""
    import importlib.util
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{ref}:curate/imagecheck.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bbst-bench-")) / "imagecheck_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("imagecheck_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.ImageChecker(module.ImageCheckConfig())


def bench_check(datas: list[bytes], rounds: int, compare_ref: str | None = None) -> None:
    checkers = {"ImageChecker": ImageChecker(ImageCheckConfig())}
    if compare_ref:
        checkers[f"ImageChecker@{compare_ref}"] = checker_at(compare_ref)
    batch = {"image": np.array(datas, dtype=object)}
    best = dict.fromkeys(["floor", *checkers], float("inf"))
    for _ in range(rounds):
        t = time.thread_time()
        floor(datas)
        best["floor"] = min(best["floor"], time.thread_time() - t)
        for name, checker in checkers.items():
            t = time.thread_time()
            out = checker(batch)
            best[name] = min(best[name], time.thread_time() - t)
            assert set(out["status"]) == {"ok"}, (name, set(out["status"]))
    n = len(datas)
    for name in checkers:
        print(f"check: floor {best['floor'] / n * 1e3:.1f} ms/img, {name} {best[name] / n * 1e3:.1f} ms/img, "
              f"ratio floor/checker {best['floor'] / best[name]:.2f} (best of {rounds}, CPU time, 1 thread)")


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
    p.add_argument("--max-side", type=int, default=1700, help="corpus images are 1024..N px wide")
    p.add_argument("--compare-ref", help="also time the ImageChecker of this git revision (e.g. main)")
    p.add_argument("--skip-download", action="store_true", help="time the check stage only")
    args = p.parse_args(argv)
    datas = make_corpus(args.images, max_side=args.max_side)
    print(f"corpus: {len(datas)} JPEGs, mean {np.mean([len(d) for d in datas]) / 1024:.0f} KiB, "
          f"1024-{args.max_side} px")
    bench_check(datas, args.rounds, args.compare_ref)
    if not args.skip_download:
        bench_download(datas, args.threads, args.download_repeat)


if __name__ == "__main__":
    main()
