"""Labeling-session benchmark: key press -> next image shown in a real browser, labels/minute, pool rescoring.

Part 1 (browser): builds a pool of generated images as one WebDataset shard, starts ``pipelines/label.py`` on a
loopback port (tiny random-init backbone, so the background feature worker and retrains run as they would, only
cheaper), and drives headless Chromium with a scripted annotator that presses ``a``/``x`` as fast as the page
allows. Reported: key press -> next image painted (median, p95, from the page's own clock), labels per minute,
and, as the side-by-side peer, the latency of loading and decoding one not-yet-prefetched image on demand (what
a page without prefetching would pay per decision).

Part 2 (CPU): rescoring a pool of cached features with a trained head, for the real ``bbst_vitb16_2trunk``
feature width, from the on-disk feature cache, including writing every score to the label database. Peer: the
backbone forward that rescoring without the cache would need (measured on a few images, extrapolated).

    python benchmarks/bench_label.py --n-images 10000 --decisions 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.schema import SHARDS_DIR, make_key, shard_name
from core.synthetic import encode, make_image
from core.tarwrite import write_shard


def build_pool(root: Path, n: int, size: int) -> Path:
    """``root/shards/style-000000.tar`` with ``n`` generated JPEGs (alternating photo/artwork) and JSON sidecars."""
    rng = np.random.default_rng(0)

    def samples():
        for i in range(n):
            data = encode(make_image(i % 2, size, size, rng))
            yield {"key": make_key(0, i), "ext": "jpg", "image": data, "sha256": hashlib.sha256(data).hexdigest(),
                   "kind": i % 2}

    write_shard(str(root / SHARDS_DIR / shard_name("style", 0)), samples(), ordered=True)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def bench_browser(pool: Path, work: Path, decisions: int, retrain_every: int) -> dict:
    import httpx
    from playwright.sync_api import sync_playwright

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(REPO / "pipelines" / "label.py"), "--pool", str(pool), "--db",
           str(work / "labels.sqlite"), "--model", "test_vit_shared", "--port", str(port),
           "--retrain-every", str(retrain_every)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                if httpx.get(base + "/api/session", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        startup = time.perf_counter() - t0
        # one keep-alive connection, as the browser holds; Origin as the app's own page sends it
        http = httpx.Client(base_url=base, headers={"origin": base})
        next_ms = []
        for _ in range(20):
            t = time.perf_counter()
            http.post("/api/next", json={"annotator": "probe", "n": 8})
            next_ms.append((time.perf_counter() - t) * 1000)
        http.post("/api/release", json={"annotator": "probe", "keys": []})
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_context(bypass_csp=True).new_page()
            page.goto(base + "/")
            page.fill("#annotator", "bench")
            page.press("#annotator", "Enter")
            page.wait_for_function("document.body.dataset.currentKey")
            t_start = time.perf_counter()
            for _ in range(decisions):
                key = page.evaluate("document.body.dataset.currentKey")
                page.keyboard.press("a" if int(key) % 2 else "x")
                page.wait_for_function("k => document.body.dataset.currentKey !== k", arg=key, timeout=30000)
            elapsed = time.perf_counter() - t_start
            page.wait_for_timeout(200)
            shown = page.evaluate("window.bbst.timings")
            frame = page.evaluate("window.bbst.frameTimings")
            # peer: an image that was not prefetched, loaded and decoded on demand
            cold = page.evaluate("""async (keys) => {
                const out = [];
                for (const k of keys) {
                    const t = performance.now();
                    const img = new Image();
                    img.src = `/api/image?key=${k}&size=view`;
                    await img.decode();
                    out.push(performance.now() - t);
                }
                return out;
            }""", [make_key(0, i) for i in range(9000, 9030)])
            browser.close()
        # the decision round trip alone (commit + fsync), while the background worker is busy
        probe = http.post("/api/next", json={"annotator": "probe", "n": 30}).json()["items"]
        label_ms = []
        for it in probe:
            t = time.perf_counter()
            http.post("/api/label", json={"annotator": "probe", "key": it["key"], "label": "skip"})
            label_ms.append((time.perf_counter() - t) * 1000)
        stats = http.get("/api/stats").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "server_startup_s": round(startup, 2),
        "decisions": decisions,
        "key_to_next_image_ms": {"median": round(_pct(shown, 50), 1), "p95": round(_pct(shown, 95), 1),
                                 "max": round(max(shown), 1), "n": len(shown)},
        "key_to_frame_ms": {"median": round(_pct(frame, 50), 1), "p95": round(_pct(frame, 95), 1)},
        "labels_per_minute": round(decisions / elapsed * 60, 1),
        "api_label_ms": {"median": round(_pct(label_ms, 50), 1), "p95": round(_pct(label_ms, 95), 1)},
        "on_demand_image_ms": {"median": round(_pct(cold, 50), 1), "p95": round(_pct(cold, 95), 1)},
        "api_next_ms": {"median": round(_pct(next_ms, 50), 1), "p95": round(_pct(next_ms, 95), 1)},
        "rounds_during_run": len(stats["rounds"]),
        "labels_committed": stats["labels_total"] - len(probe),
        "features_cached_at_end": stats["features_cached"],
    }


def bench_rescore(work: Path, n: int, model_name: str) -> dict:
    import torch

    from classifier.factory import create_classifier
    from classifier.features import FeatureCache, extract_features
    from classifier.head import train_head
    from classifier.labeling.active import ActiveConfig, ActiveLearner
    from classifier.labeling.pool import Pool, PoolItem
    from classifier.labeling.store import LabelStore

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = create_classifier(model_name).eval()
    dim, hidden = model.num_features, model.cfg.head.hidden
    rng = np.random.default_rng(0)
    keys = [make_key(1, i) for i in range(n)]
    shas = [hashlib.sha256(k.encode()).hexdigest() for k in keys]
    y = rng.integers(0, 2, n)
    # class-dependent random features: what is timed is reading the cache and running the head, not their values
    feats = (rng.normal(0, 1, (n, dim)) + y[:, None] * 0.3).astype(np.float32)
    cache = FeatureCache(work / "rescore-features")
    for i in range(0, n, 32):  # one shard per worker batch, as the feature worker writes them
        cache.put(shas[i:i + 32], feats[i:i + 32])
    cache = FeatureCache(work / "rescore-features")  # a fresh process's view: memory-mapped shards
    store = LabelStore(work / "rescore.sqlite")
    dummy = work / "dummy.jpg"
    dummy.write_bytes(b"")
    pool = Pool([PoolItem(k, str(dummy), sha256=s) for k, s in zip(keys, shas)], "bench")
    store.add_items((k, s, "bench") for k, s in zip(keys, shas))
    head = train_head(feats[:1000], y[:1000], keys[:1000], hidden=hidden, max_epochs=30)
    learner = ActiveLearner(store, pool, model, cache, ActiveConfig(), rounds_dir=work / "rounds",
                            head_result=head, model_version="bench")
    times = []
    for _ in range(3):
        count, seconds = learner.rescore_pool()
        times.append(seconds)
    t = time.perf_counter()
    got, _found = cache.get(shas)
    t_get = time.perf_counter() - t
    from classifier.head import predict_proba

    t = time.perf_counter()
    predict_proba(head, got)
    t_head = time.perf_counter() - t
    # peer: rescoring without the cache means a backbone forward per image
    imgs = [encode(make_image(i % 2, 256, 256, i)) for i in range(8)]
    extract_features(model, imgs[:2], batch_size=2)  # warm-up
    t = time.perf_counter()
    extract_features(model, imgs, batch_size=8)
    per_img = (time.perf_counter() - t) / len(imgs)
    return {"model": model_name, "feature_dim": dim, "head_hidden": hidden, "n": count,
            "rescore_s": {"median": round(float(np.median(times)), 3), "runs": [round(x, 3) for x in times]},
            "cache_get_s": round(t_get, 3), "head_forward_s": round(t_head, 3),
            "backbone_s_per_image": round(per_img, 3),
            "backbone_extrapolated_s": round(per_img * n, 1),
            "speedup_vs_backbone": round(per_img * n / float(np.median(times)), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=10000)
    ap.add_argument("--size", type=int, default=96, help="side of the generated pool images (px)")
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--retrain-every", type=int, default=50)
    ap.add_argument("--rescore-model", default="bbst_vitb16_2trunk")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--work", help="scratch dir (default: a temp dir)")
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-label-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict = {"n_images": args.n_images, "image_side": args.size}
    if not args.skip_browser:
        t = time.perf_counter()
        pool = build_pool(work / "pool", args.n_images, args.size)
        results["pool_build_s"] = round(time.perf_counter() - t, 1)
        results["browser"] = bench_browser(pool, work, args.decisions, args.retrain_every)
        print(json.dumps(results["browser"], indent=2), flush=True)
    results["rescore"] = bench_rescore(work, args.n_images, args.rescore_model)
    print(json.dumps(results["rescore"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
