"""Benchmark: build_bbst vs img2dataset on a loopback corpus of high-resolution JPEGs, plus the machine's floor.

Usage::

    python benchmarks/bench_curate.py --images 1000 --rounds 2 --i2d /tmp/i2d-venv/bin/img2dataset

img2dataset is not a dependency: install it into its own virtual environment for the benchmark
(``python -m venv /tmp/i2d-venv && /tmp/i2d-venv/bin/pip install img2dataset``). Both tools get the same total
download concurrency (build_bbst: one download+check task per CPU x ``download.threads``; img2dataset:
``processes x threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa
import pyarrow.parquet as pq


# --------------------------------------------------------------------------------------------------- corpus
def _make_one(args: tuple[int, int, int, str]) -> tuple[str, int, str]:
    import numpy as np

    from core import synthetic

    i, min_side, seed, root = args
    rng = np.random.default_rng(seed + i)
    small = i % 10 == 9  # one in ten below min_side: filtered by both tools
    short = int(min_side * (rng.uniform(0.8, 0.95) if small else rng.uniform(1.0, 1.25)))
    long = int(short * rng.uniform(1.2, 1.5))
    kind = i % 2
    img = synthetic.photo_like(long, short, seed=rng, noise=8.0) if kind == 0 else \
        synthetic.artwork_like(long, short, seed=rng)
    if kind == 1:
        # artwork-like images compress very well; a little grain brings them into the 0.3-1 MB range
        arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 5, size=(short, long, 1)).astype(np.int16)
        from PIL import Image

        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    data = synthetic.encode(img, "JPEG", quality=92)
    name = f"b{i:06d}.jpg"
    Path(root, name).write_bytes(data)
    return name, len(data), "flickr" if kind == 0 else "behance"


def build_corpus(root: Path, n: int, min_side: int, seed: int = 0) -> list[tuple[str, int, str]]:
    """Generate (or reuse) ``n`` distinct JPEGs under ``root``; returns ``[(name, bytes, source)]``."""
    index = root / f"index-{n}-{min_side}-{seed}.json"
    if index.exists():
        return [tuple(x) for x in json.loads(index.read_text())]
    root.mkdir(parents=True, exist_ok=True)
    # a smaller corpus of the same side and seed holds the first images already (image i depends on i only)
    known: dict[int, tuple] = {}
    for other in root.glob(f"index-*-{min_side}-{seed}.json"):
        for i, item in enumerate(json.loads(other.read_text())):
            known[i] = tuple(item)
    todo = [i for i in range(n) if i not in known]
    with mp.Pool(os.cpu_count()) as pool:
        for i, item in zip(todo, pool.map(_make_one, [(i, min_side, seed, str(root)) for i in todo], chunksize=16)):
            known[i] = item
    items = [known[i] for i in range(n)]
    index.write_text(json.dumps(items))
    return items


def _serve(root: str, port_q) -> None:
    from curate.demo import CorpusServer

    server = CorpusServer(root).start()
    port_q.put(server.httpd.server_address[1])
    threading.Event().wait()


# --------------------------------------------------------------------------------------------------- measuring
# what a process of either tool is, from its command line (Ray's workers retitle themselves ``ray::NAME``)
PROCESS_KINDS = (("raylet/raylet", "raylet"), ("default_worker.py", "worker"), ("gcs_server", "gcs_server"),
                 ("dashboard/agent.py", "dashboard agent"),
                 ("runtime_env/agent/main.py", "runtime-env agent"), ("dashboard/dashboard.py", "api server"),
                 ("log_monitor.py", "log monitor"), ("autoscaler/_private/monitor.py", "autoscaler monitor"),
                 ("core.watchdog", "watchdog"), ("ray::DashboardAgent", "dashboard agent"),
                 ("ray::RuntimeEnvAgent", "runtime-env agent"), ("ray::IDLE", "worker (idle)"), ("ray::", "worker"))


def process_kind(proc, root_pid: int) -> str:
    """A short label for ``proc`` in a per-process memory breakdown."""
    if proc.pid == root_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except Exception:  # noqa: BLE001 - gone meanwhile
        return "other"
    return next((kind for marker, kind in PROCESS_KINDS if marker in cmd), "other")


class TreeMemory:
    """Peak memory summed over a process and all its descendants, sampled every ``interval`` seconds.

    PSS (proportional set size) rather than RSS: Ray's object store is shared memory mapped by many processes,
    and RSS would count those pages once per process. Reading a process's PSS makes the kernel walk its page
    tables (~1.5 ms of CPU per process), a cost that grows with the number of processes measured: the sampling
    thread runs at the lowest CPU priority so that it takes CPU from neither tool.
    """

    def __init__(self, pid: int, interval: float = 1.0, first_file: tuple[Path, str] | None = None) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.root_peak_rss = 0  # peak RSS of the root process alone (the driver)
        self.root_io = 0  # read + write syscall bytes of the root process itself (the driver), last sample
        self.interval = interval
        self.t0 = time.monotonic()
        self.first_file_s: float | None = None  # seconds until a file matching first_file appeared
        # USS: the pages of the tree no other process maps. PSS splits a shared page among all its mappers, so
        # the tree's PSS drops when unrelated processes (another Ray on the machine) map the same libraries
        self.peak_uss = 0
        self.at_peak: dict[str, int] = {}  # PSS by process kind in the sample of the tree's peak
        self.kind_peaks: dict[str, int] = {}  # each kind's own peak PSS (summed over its processes in one sample)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.watcher = None
        if first_file is not None:
            self.watcher = threading.Thread(target=self._watch, args=first_file, daemon=True)
            self.watcher.start()

    def _watch(self, folder: Path, pattern: str) -> None:
        while not self._stop.is_set():
            if folder.is_dir() and next(folder.glob(pattern), None) is not None:
                self.first_file_s = time.monotonic() - self.t0
                return
            self._stop.wait(0.2)

    def _run(self) -> None:
        import psutil

        with contextlib.suppress(OSError):  # this thread only (Linux: a thread is a scheduling entity)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.is_set():
            try:
                io_now = self.proc.io_counters()
                self.root_io = io_now.read_chars + io_now.write_chars
                self.root_peak_rss = max(self.root_peak_rss, self.proc.memory_info().rss)
                procs = [self.proc, *self.proc.children(recursive=True)]
                total, private, kinds = 0, 0, {}
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        pss = getattr(info, "pss", info.rss)
                    except psutil.Error:
                        continue
                    total += pss
                    private += getattr(info, "uss", 0)
                    kind = process_kind(p, self.proc.pid)
                    kinds[kind] = kinds.get(kind, 0) + pss
                for kind, pss in kinds.items():
                    self.kind_peaks[kind] = max(self.kind_peaks.get(kind, 0), pss)
                if total > self.peak:
                    self.peak, self.at_peak = total, kinds
                self.peak_uss = max(self.peak_uss, private)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def breakdown(self) -> dict:
        """PSS by process kind (MiB) at the tree's peak, and each kind's own peak."""
        mib = lambda d: {k: round(v / 2**20, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}
        return {"pss_at_peak_mb": mib(self.at_peak), "kind_peak_pss_mb": mib(self.kind_peaks),
                "peak_uss_mb": round(self.peak_uss / 2**20, 1)}

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        if self.watcher is not None:
            self.watcher.join()
        return self.peak


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None,
                 log_path: Path | None = None, first_file: tuple[Path, str] | None = None,
                 ) -> tuple[float, int, str, TreeMemory]:
    # Start from a clean page cache writeback state: a tool that leaves its output unsynced (img2dataset does not
    # fsync) would otherwise make the next tool's fsyncs flush its data too (ext4 data=ordered).
    os.sync()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mem = TreeMemory(proc.pid, first_file=first_file)
    out, _ = proc.communicate()
    wall = time.monotonic() - t0
    peak = mem.stop()
    if log_path is not None:
        log_path.write_text(out)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{out[-4000:]}")
    return wall, peak, out, mem


def run_bbst(urls: Path, out: Path, args) -> dict:
    cmd = bbst_command(urls, out, args)
    env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1")
    env.pop("RAY_ADDRESS", None)
    if args.ray_address:  # the cluster case: the build attaches to a Ray that is already up
        env["RAY_ADDRESS"] = args.ray_address
    # a shard is written under a hidden temporary name and renamed: the first *.tar is a finished shard
    wall, peak, _, mem = run_measured(cmd, env=env, log_path=out.with_suffix(".log"),
                                      first_file=(out / "shards", "*.tar"))
    driver_io = mem.root_io
    summary = json.loads((out / "summary.json").read_text())
    meta = pa.concat_tables([pq.read_table(p) for p in sorted((out / "meta").glob("*.parquet"))])
    statuses = meta["status"].to_pylist()
    kept = {u for u, s in zip(meta["url"].to_pylist(), statuses) if s == "ok"}
    # img2dataset does not deduplicate: compare its kept set with ours plus what our dedup removed
    deduped = {u for u, s in zip(meta["url"].to_pylist(), statuses) if s in ("duplicate", "near_duplicate")}
    ok = summary["counts_by_status"]["ok"]
    # img2dataset's processing span starts when its workers begin their first shard (processes already up);
    # a further figure leaves out the ramp-up until the first units came back (worker imports included)
    ramp = (summary.get("phase_seconds") or {}).get("until_first_rows", 0.0)
    return {"tool": "build_bbst", "wall_s": wall, "driver_io_bytes": driver_io,
            "driver_io_run_bytes": summary.get("driver_io_bytes"),
            "driver_io_fraction": driver_io / max(summary["shard_bytes"], 1), "shard_bytes": summary["shard_bytes"], "ok": ok, "startup_s": wall - summary["duration_seconds"],
            "images_per_s_wall": ok / wall, "images_per_s_processing": ok / summary["duration_seconds"],
            "ramp_s": ramp, "images_per_s_after_ramp": ok / max(summary["duration_seconds"] - ramp, 1e-9),
            "peak_pss_mb": peak / 2**20, "driver_peak_rss_mb": mem.root_peak_rss / 2**20, **mem.breakdown(),
            "first_shard_s": mem.first_file_s, "kept": kept, "deduped": deduped,
            "phase_seconds": summary.get("phase_seconds"), "rows": summary["rows_in"]}


def bbst_command(urls: Path, out: Path, args) -> list[str]:
    cmd = [sys.executable, str(REPO / "pipelines" / "build_bbst.py"), "--urls", str(urls), "--out", str(out),
           "--min-side", str(args.min_side), "--allow-private-network",
           "--set", f"download.threads={args.threads}",
           "--set", f"download.per_host_concurrency={args.threads}", "--set", "report=false",
           "--set", f"reader.rows_per_partition={args.rows_per_partition}", "--set", "progress_interval_s=30"]
    if args.shard_samples:
        cmd += ["--set", f"shards.target_samples={args.shard_samples}"]
    return cmd


def timeline_bbst(urls: Path, out: Path, args) -> list[tuple[float, str]]:
    """One build, as a list of ``(seconds since the command started, event)``: the driver's own start-up steps
    (its DEBUG log lines), each process as it appears, each worker's first task, the first unit staged, the
    driver's exit and the moment the last of its processes is gone."""
    import datetime

    import psutil

    cmd = bbst_command(urls, out, args) + ["--log-level", "DEBUG"]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    os.sync()
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events: list[tuple[float, str]] = []
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    root_title = root.cmdline()
    seen: dict[int, psutil.Process] = {}
    busy: set[int] = set()
    staged = False
    while proc.poll() is None:
        now = time.time() - t0
        try:
            children = root.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if argv == root_title:  # forked, not yet running its program
                continue
            title = " ".join(argv)
            if child.pid not in seen:
                seen[child.pid] = child
                events.append((now, f"{process_kind(child, proc.pid)} started"))
            if title.startswith("ray::") and "IDLE" not in title and "Agent" not in title and child.pid not in busy:
                busy.add(child.pid)
                events.append((now, f"worker {child.pid} runs {title.split()[0]}"))
        if not staged and next((out / "_staging" / "units").glob("*/*.parquet"), None) is not None:
            staged = True
            events.append((now, "first unit staged"))
        time.sleep(0.02)
    events.append((time.time() - t0, f"driver exited ({proc.returncode})"))
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in seen.values()
              if not _gone(p)):
        time.sleep(0.02)
    events.append((time.time() - t0, "last process of the run gone"))
    reader.join(timeout=5)
    for line in lines:  # "2026-12-01 10:00:00,123 DEBUG bbst.build: start-up: ..."
        parts = line.split(" ", 4)
        if len(parts) == 5 and parts[3].startswith("bbst") and parts[2] in ("DEBUG", "INFO"):
            try:
                when = datetime.datetime.strptime(f"{parts[0]} {parts[1]}", "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            events.append((when - t0, f"driver: {parts[4].strip()}"))
    summary = out / "summary.json"
    if summary.exists():
        events.append((float("nan"), f"phases (s): {json.loads(summary.read_text()).get('phase_seconds')}"))
    return sorted(events, key=lambda e: (e[0] != e[0], e[0]))


def _gone(proc) -> bool:
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def run_i2d(urls: Path, out: Path, args) -> dict:
    cmd = [args.i2d, "--url_list", str(urls), "--input_format", "parquet", "--url_col", "url",
           "--save_additional_columns", "['source']", "--output_format", "webdataset", "--output_folder", str(out),
           "--resize_mode", "no", "--min_image_size", str(args.min_side), "--processes_count", str(args.processes),
           "--thread_count", str(args.threads),
           "--number_sample_per_shard", str(args.shard_samples or args.rows_per_partition),
           "--enable_wandb", "False", "--distributor", "multiprocessing"]
    # img2dataset writes a tar in place and its NNNNN_stats.json once the shard is done
    wall, peak, _, mem = run_measured(cmd, log_path=out.with_suffix(".log"), first_file=(out, "*_stats.json"))
    kept, ok = set(), 0
    starts, ends = [], []
    for p in sorted(out.glob("*.parquet")):
        t = pq.read_table(p, columns=["url", "status"])
        for u, s in zip(t["url"].to_pylist(), t["status"].to_pylist()):
            if s == "success":
                kept.add(u)
                ok += 1
    for p in sorted(out.glob("*_stats.json")):
        st = json.loads(p.read_text())
        if "start_time" in st and "end_time" in st:
            starts.append(st["start_time"])
            ends.append(st["end_time"])
    processing = (max(ends) - min(starts)) if starts else wall
    return {"tool": "img2dataset", "wall_s": wall, "ok": ok, "startup_s": wall - processing,
            "images_per_s_wall": ok / wall, "images_per_s_processing": ok / processing,
            "peak_pss_mb": peak / 2**20, "driver_peak_rss_mb": mem.root_peak_rss / 2**20, **mem.breakdown(),
            "driver_io_bytes": mem.root_io, "first_shard_s": mem.first_file_s, "kept": kept, "deduped": set()}


def _floor_one(path: str) -> int:
    from PIL import Image

    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # full decode: the validation both tools must do
        return 1 if min(im.size) >= FLOOR_MIN_SIDE else 0


FLOOR_MIN_SIDE = 1024


def machine_floor(root: Path, names: list[str]) -> dict:
    """Read, hash and fully decode every file on all cores with no network and no framework."""
    paths = [str(root / n) for n in names]
    t0 = time.monotonic()
    with mp.Pool(os.cpu_count()) as pool:
        kept = sum(pool.map(_floor_one, paths, chunksize=4))
    wall = time.monotonic() - t0
    return {"tool": "floor", "wall_s": wall, "images_per_s": len(paths) / wall, "kept_images": kept}


# --------------------------------------------------------------------------------------------------- dedup at scale
def make_dedup_rows(root: Path, rows: int, per_partition: int = 10_000, seed: int = 0) -> dict[int, int]:
    """Staged metadata rows (no images) as a build leaves them before dedup: 90% ok, 1% exact duplicates, 1% near
    duplicates (2 bits flipped), random sha256 and phash otherwise; a source (half flickr, half behance) and a
    staged size of 0.3-0.8 MB for the split and the shard plan. Written one partition at a time."""
    import numpy as np

    from core import schema
    from core.store import Store
    from curate import staging

    store = Store(str(root))
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng(seed + 1)  # the split and plan columns, apart: the hashes stay as they were
    partitions = {}
    pool_sha: list[str] = []
    pool_ph: list[int] = []
    for p in range(-(-rows // per_partition)):
        n = min(per_partition, rows - p * per_partition)
        raw = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64)
        sha = [f"{a:016x}{b:016x}{c:016x}{d:016x}" for a, b, c, d in raw.tolist()]
        ph = rng.integers(0, 2**63, size=n, dtype=np.int64).tolist()
        kind = rng.random(n)
        for i in range(n):
            if kind[i] < 0.01 and pool_sha:
                sha[i] = pool_sha[int(rng.integers(len(pool_sha)))]
            elif kind[i] < 0.02 and pool_ph:
                ph[i] = pool_ph[int(rng.integers(len(pool_ph)))] ^ (1 << int(rng.integers(63))) ^ 1
        pool_sha, pool_ph = sha[:100], ph[:100]
        status = np.where(rng.random(n) < 0.9, "ok", "too_small").tolist()
        store.write_parquet(staging.rows_rel(p), pa.table({
            "key": [schema.make_key(p, i) for i in range(n)], "status": status, "sha256": sha,
            "phash": [f"{h:016x}" for h in ph],
            "source": np.where(extra.random(n) < 0.5, "flickr", "behance").tolist(),
            "_ref_length": pa.array(extra.integers(300_000, 800_000, size=n), pa.int64())}))
        partitions[p] = n
    store.write_json(f"{schema.STAGING}/partitions.json", partitions)
    return partitions


def dedup_driver(root: str) -> None:
    """The dedup phase of a build over already staged metadata, then its split (finalize) and shard planning, on a
    fresh local Ray; prints the driver's peak RSS after each."""
    import resource

    import ray

    from core.store import Store
    from curate.build_config import BuildConfig
    from pipelines import build_bbst

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    store = Store(root)
    partitions = {int(k): v for k, v in store.read_json("_staging/partitions.json").items()}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    from curate.dedup import bucket_count, wave_rel

    cfg = BuildConfig()
    parts = sorted(partitions)
    # one dedup wave over every partition: what the last wave of a build does
    buckets = bucket_count(sum(partitions.values()), cfg.ray.dedup_buckets)
    near = ray.get(build_bbst._dedup_wave(cfg, store, parts, partitions, buckets))
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rel = wave_rel(len(parts))
    exact = sum(store.read_parquet(f"{rel}/{n}").num_rows for n in store.ls(rel) if n.startswith("exact-"))
    # the build's next steps without a classifier: each partition's decisions and split (one task each), then
    # the shard plan read in key order by one task; the driver holds references and the plan (one entry a shard)
    from curate import assemble

    t1 = time.monotonic()
    final = ray.remote(num_cpus=1)(assemble.finalize_partition)
    ray.get([final.remote(store, p, cfg.split, rel) for p in parts])
    t2 = time.monotonic()
    specs = ray.get(ray.remote(num_cpus=1)(assemble.plan_from_final).remote(
        store, parts, cfg.shards.target_samples, cfg.shards.target_bytes))
    t3 = time.monotonic()
    peak_plan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": sum(partitions.values()), "dedup_seconds": round(wall, 1),
                      "driver_peak_rss_mb": round(peak / 1024, 1), "driver_rss_before_dedup_mb": round(base / 1024, 1),
                      "exact_duplicates": exact, "near_duplicates": near,
                      "finalize_seconds": round(t2 - t1, 1), "plan_seconds": round(t3 - t2, 1),
                      "shards_planned": len(specs), "samples_planned": sum(s["nsamples"] for s in specs),
                      "driver_peak_rss_after_plan_mb": round(peak_plan / 1024, 1)}), flush=True)


# --------------------------------------------------------------------------------------------------- semantic pass
def make_semantic_rows(root: Path, rows: int, dim: int, per_partition: int = 10_000, seed: int = 0) -> dict[int, int]:
    """Embeddings as the score stage publishes them: random unit vectors, except that 5 % of the rows are a
    variant (cosine 0.96-0.99) of a row earlier in their partition: the duplicates the pass must find."""
    import numpy as np

    from core import schema
    from core.store import Store
    from curate import semantic

    store = Store(str(root))
    rng = np.random.default_rng(seed)
    partitions = {}
    planted = 0
    for p in range(-(-rows // per_partition)):
        n = min(per_partition, rows - p * per_partition)
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for i in np.nonzero(rng.random(n) < 0.05)[0]:
            if i == 0:
                continue
            base = x[int(rng.integers(i))]
            noise = rng.normal(size=dim).astype(np.float32)
            noise -= (noise @ base) * base
            cos = rng.uniform(0.96, 0.99)
            x[i] = cos * base + np.sqrt(1 - cos**2) * noise / np.linalg.norm(noise)
            planted += 1
        store.write_parquet(semantic.embeddings_rel(p), semantic.embeddings_table(
            [schema.make_key(p, i) for i in range(n)], x.astype(np.float16)))
        partitions[p] = n
    store.write_json(f"{schema.STAGING}/partitions.json", partitions)
    store.write_json(f"{schema.STAGING}/planted.json", planted)
    return partitions


def semantic_driver(root: str, probes: int) -> None:
    """The semantic pass of a build over already published embeddings, on a fresh local Ray; prints its time,
    the driver's peak RSS and what it found."""
    import resource

    import ray

    from core.store import Store
    from curate.build_config import BuildConfig
    from curate.dedup import DedupConfig, SemanticConfig
    from pipelines import build_bbst

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    store = Store(root)
    partitions = {int(k): v for k, v in store.read_json("_staging/partitions.json").items()}
    cfg = BuildConfig(dedup=DedupConfig(semantic=SemanticConfig(enabled=True, probes=probes)))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    account = build_bbst.semantic_phase(cfg, store, partitions)
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": sum(partitions.values()), "planted_near_copies": store.read_json("_staging/planted.json"),
                      "semantic_seconds": round(wall, 1),
                      "driver_peak_rss_mb": round(peak / 1024, 1), "driver_rss_before_mb": round(base / 1024, 1),
                      **{k: v for k, v in account.items() if k != "examples"}}), flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--rows", type=int, default=0,
                   help="scale-curve run: this many small generated JPEGs (short side --min-side, 256 by default), "
                        "no floor, shards of --shard-samples for both tools, the figures written to --json")
    p.add_argument("--min-side", type=int, default=None, help="short-side floor (default 1024; 256 with --rows)")
    p.add_argument("--shard-samples", type=int, default=0,
                   help="samples per shard for both tools (default: the build's own target; --rows: 1000)")
    p.add_argument("--json", help="write the figures of this run to this JSON file")
    p.add_argument("--plot", nargs="+", metavar="JSON",
                   help="only draw the scale curve (throughput and memory against N) from --rows runs' --json files "
                        "into --png")
    p.add_argument("--png", default=str(REPO / "docs" / "bench-curate-scale.png"), help="where --plot writes")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--processes", type=int, default=2, help="img2dataset processes (build_bbst runs one task per CPU)")
    p.add_argument("--threads", type=int, default=16, help="download threads per build_bbst task / img2dataset process")
    p.add_argument("--rows-per-partition", type=int, default=250)
    p.add_argument("--corpus", default=str(Path(tempfile.gettempdir()) / "bbst-bench-corpus"))
    p.add_argument("--i2d", default="/tmp/i2d-venv/bin/img2dataset", help="img2dataset executable ('' to skip)")
    p.add_argument("--memory-rows", type=int, default=0,
                   help="also run build_bbst on a list padded with this many failing URLs (memory vs list length)")
    p.add_argument("--dedup-rows", type=int, default=0,
                   help="only measure the dedup phase over this many synthetic metadata rows (driver peak memory)")
    p.add_argument("--semantic-rows", type=int, default=0,
                   help="only measure the semantic dedup pass over this many synthetic embeddings (5 %% planted "
                        "near copies)")
    p.add_argument("--semantic-dim", type=int, default=512, help="embedding dimension for --semantic-rows")
    p.add_argument("--semantic-probes", type=int, default=2,
                   help="clusters each embedding is compared in (as many as there are clusters: exhaustive)")
    p.add_argument("--timeline", action="store_true",
                   help="one build_bbst run of --images N only: when each start-up step, process and first task "
                        "happens, and how long the processes take to go after the driver")
    p.add_argument("--keep", action="store_true", help="keep the working folder (URL list and the runs' logs)")
    p.add_argument("--ray-address", default="",
                   help="attach build_bbst to this running Ray (`ray start --head` first) instead of starting a local "
                        "one: the figures of a cluster, where Ray is up before the build (its processes are then "
                        "not in the build's process tree, so peak memory is the driver and nothing else)")
    p.add_argument("--dedup-driver", help=argparse.SUPPRESS)
    p.add_argument("--semantic-driver", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plot:
        plot_scale_curve([json.loads(Path(f).read_text()) for f in args.plot], Path(args.png))
        return {}
    if args.rows:
        args.images = args.rows
        args.min_side = args.min_side or 256
        args.shard_samples = args.shard_samples or 1000
        args.corpus = f"{args.corpus}-small"
    args.min_side = args.min_side or 1024
    if args.dedup_driver:
        dedup_driver(args.dedup_driver)
        return {}
    if args.semantic_driver:
        semantic_driver(args.semantic_driver, args.semantic_probes)
        return {}
    if args.dedup_rows or args.semantic_rows:
        work = Path(tempfile.mkdtemp(prefix="bbst-dedup-", dir=str(REPO / ".scratch") if (REPO / ".scratch").is_dir()
                                     else None))
        t0 = time.monotonic()
        if args.dedup_rows:
            make_dedup_rows(work, args.dedup_rows)
        else:
            make_semantic_rows(work, args.semantic_rows, args.semantic_dim)
        print(f"generated {args.dedup_rows or args.semantic_rows} staged rows in {time.monotonic() - t0:.0f}s under "
              f"{work}", flush=True)
        env = dict(os.environ, RAY_DISABLE_USAGE_STATS="1")
        env.pop("RAY_ADDRESS", None)
        which = ["--dedup-driver", str(work)] if args.dedup_rows else \
            ["--semantic-driver", str(work), "--semantic-probes", str(args.semantic_probes)]
        out = subprocess.run([sys.executable, __file__, *which], env=env, check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(result, indent=2))
        shutil.rmtree(work, ignore_errors=True)
        return result
    global FLOOR_MIN_SIDE
    FLOOR_MIN_SIDE = args.min_side

    root = Path(args.corpus)
    t0 = time.monotonic()
    items = build_corpus(root, args.images, args.min_side)
    sizes = [s for _, s, _ in items]
    print(f"corpus: {len(items)} JPEGs, {sum(sizes) / 2**20:.0f} MiB, {min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} MB "
          f"each (mean {sum(sizes) / len(sizes) / 1e6:.2f} MB), built/reused in {time.monotonic() - t0:.0f}s",
          flush=True)
    q: mp.Queue = mp.Queue()
    server = mp.Process(target=_serve, args=(str(root), q), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{q.get(timeout=30)}"
    work = Path(tempfile.mkdtemp(prefix="bbst-bench-"))
    urls = work / "urls.parquet"
    pq.write_table(pa.table({"url": [f"{base}/{n}" for n, _, _ in items], "source": [s for _, _, s in items]}), urls)

    results: list[dict] = []
    load_before = os.getloadavg()
    t_run = time.time()
    try:
        if args.timeline:
            for t, event in timeline_bbst(urls, work / "timeline", args):
                print(f"{t:7.2f}s  {event}", flush=True)
            return {}
        if args.rows:  # the floor of 50,000 small files says little and costs minutes of both cores
            floor = {"images_per_s": float("nan")}
        else:
            floor = machine_floor(root, [n for n, _, _ in items])
            print(f"floor: {floor['images_per_s']:.1f} images/s ({floor['kept_images']} >= {args.min_side} px)",
                  flush=True)
        for r in range(args.rounds):
            tools = [("build_bbst", run_bbst)]
            tools += [("img2dataset", run_i2d)] if args.i2d else []
            if r % 2:
                tools.reverse()  # alternate the order so neither tool always runs on a warmer machine
            for name, fn in tools:
                res = fn(urls, work / f"{name}-{r}", args)
                # everything needed is in `res`: outputs left on disk would make the next run reclaim page cache
                shutil.rmtree(work / f"{name}-{r}", ignore_errors=True)
                res["round"] = r
                results.append(res)
                if res.get("phase_seconds"):
                    print(f"round {r} {name} phases (s): {res['phase_seconds']}", flush=True)
                if "driver_io_run_bytes" in res:
                    run_io = res.get("driver_io_run_bytes") or 0
                    print(f"round {r} {name}: driver read+write {res['driver_io_bytes'] / 2**20:.1f} MiB in all = "
                          f"{res['driver_io_fraction']:.2%} of {res['shard_bytes'] / 2**20:.0f} MiB of shards; "
                          f"{run_io / 2**20:.2f} MiB = {run_io / max(res['shard_bytes'], 1):.2%} during the run "
                          f"(interpreter and library start-up excluded)", flush=True)
                print(f"round {r} {name}: wall {res['wall_s']:.1f}s, ok {res['ok']}, start-up {res['startup_s']:.1f}s, "
                      f"{res['images_per_s_wall']:.1f} images/s (wall), {res['images_per_s_processing']:.1f} "
                      f"images/s (processing), peak PSS {res['peak_pss_mb']:.0f} MiB, driver peak RSS "
                      f"{res['driver_peak_rss_mb']:.0f} MiB, first shard after {res['first_shard_s']}s", flush=True)
                print(f"round {r} {name}: peak USS {res['peak_uss_mb']:.0f} MiB; "
                      f"PSS at the peak by process kind (MiB): {res['pss_at_peak_mb']}; "
                      f"each kind's own peak: {res['kind_peak_pss_mb']}", flush=True)
        mem = None
        if args.memory_rows:
            padded = work / "urls-padded.parquet"
            extra = [f"{base}/missing-{i}.jpg" for i in range(args.memory_rows)]
            pq.write_table(pa.table({"url": [f"{base}/{n}" for n, _, _ in items] + extra,
                                     "source": [s for _, _, s in items] + ["flickr"] * len(extra)}), padded)
            mem = run_bbst(padded, work / "build_bbst-padded", args)
            shutil.rmtree(work / "build_bbst-padded", ignore_errors=True)
            print(f"memory check: {len(items) + len(extra)} rows -> peak PSS {mem['peak_pss_mb']:.0f} MiB", flush=True)
    finally:
        server.terminate()
        if args.keep:
            print(f"logs of every run: {work}/*.log", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)

    def best(tool: str) -> dict:
        rs = [r for r in results if r["tool"].startswith(tool)]
        return max(rs, key=lambda r: r["images_per_s_processing"]) if rs else {}

    ours, theirs = best("build_bbst"), best("img2dataset")
    report = {"floor_images_per_s": floor["images_per_s"], "rounds": [
        {k: v for k, v in r.items() if k not in ("kept", "deduped")} for r in results]}
    print("\n== summary (best round per tool) ==")
    if ours and theirs:
        print(f"build_bbst: {ours['images_per_s_wall'] / theirs['images_per_s_wall']:.2f}x img2dataset with "
              f"start-up, {ours['images_per_s_processing'] / theirs['images_per_s_processing']:.2f}x processing; "
              f"driver bytes {(ours.get('driver_io_run_bytes') or 0) / max(ours['shard_bytes'], 1):.2%} of the kept "
              f"bytes during the run ({ours['driver_io_fraction']:.2%} counting the interpreter's start-up)")
    print(f"floor (read+sha256+full decode, {os.cpu_count()} procs): {floor['images_per_s']:.1f} images/s")
    for r in (ours, theirs):
        if r:
            print(f"{r['tool']:>12}: wall {r['wall_s']:.1f}s | {r['images_per_s_wall']:.1f} images/s with start-up | "
                  f"{r['images_per_s_processing']:.1f} without | start-up {r['startup_s']:.1f}s | "
                  f"peak PSS {r['peak_pss_mb']:.0f} MiB | kept {r['ok']}")
    if ours and theirs:
        same = all(r["kept"] | r["deduped"] == theirs["kept"] for r in results)
        report.update(same_kept_set_modulo_dedup=same, deduplicated_by_bbst=len(ours["deduped"]), ratio_wall=ours["images_per_s_wall"] / theirs["images_per_s_wall"],
                      ratio_processing=ours["images_per_s_processing"] / theirs["images_per_s_processing"])
        print(f"same kept set in every run (ours + what our dedup removed == img2dataset's): {same}; "
              f"{len(ours['kept'])} vs {len(theirs['kept'])}, {len(ours['deduped'])} removed by our dedup "
              f"(img2dataset has none); only ours {len(ours['kept'] - theirs['kept'])}, "
              f"only img2dataset {len(theirs['kept'] - ours['kept'] - ours['deduped'])}")
        report["ratio_after_ramp"] = ours["images_per_s_after_ramp"] / theirs["images_per_s_processing"]
        print(f"ratio build_bbst / img2dataset: {report['ratio_wall']:.2f}x with start-up, "
              f"{report['ratio_processing']:.2f}x without, {report['ratio_after_ramp']:.2f}x without start-up "
              f"and without the ramp-up until the first units came back ({ours['ramp_s']:.1f}s)")
    if ours:
        report["fraction_of_floor"] = ours["images_per_s_processing"] / floor["images_per_s"]
        report["fraction_of_floor_after_ramp"] = ours["images_per_s_after_ramp"] / floor["images_per_s"]
        print(f"build_bbst / floor: {report['fraction_of_floor']:.0%} (processing rate), "
              f"{report['fraction_of_floor_after_ramp']:.0%} after the ramp-up")
    if mem:
        report["memory_check"] = {"rows": args.images + args.memory_rows, "peak_pss_mb": mem["peak_pss_mb"],
                                  "baseline_peak_pss_mb": ours["peak_pss_mb"]}
    report.update(rows=len(items), corpus_bytes=sum(sizes), min_side=args.min_side, shard_samples=args.shard_samples,
                  started=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t_run)),
                  load_average_before=load_before, load_average_after=os.getloadavg())
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


def plot_scale_curve(runs: list[dict], png: Path) -> None:
    """Throughput and memory of both tools against the number of rows, from ``--rows`` runs' figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(runs, key=lambda r: r["rows"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = ((("images_per_s_wall", ""), ("images_per_s_processing", ", processing")),
              "images/s: wall (start-up included) and processing"), \
        ((("peak_pss_mb", ""),), "peak PSS of the process tree (MiB)"), \
        ((("driver_peak_rss_mb", ""),), "driver (root process) peak RSS (MiB)")
    for ax, (fields, title) in zip(axes, panels):
        for tool, colour, marker in (("build_bbst", "C0", "o"), ("img2dataset", "C1", "s")):
            for (field, suffix), line in zip(fields, ("-", ":")):
                pts = [(r["rows"], rr[field]) for r in runs for rr in r["rounds"]
                       if rr["tool"] == tool and rr.get(field) is not None]
                if pts:
                    ax.plot(*zip(*pts), line, color=colour, marker=marker, label=tool + suffix)
        ax.set_xscale("log")
        ax.set_xlabel("rows in the URL list")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
