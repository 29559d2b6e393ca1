"""Build a BBST-style dataset: URL lists -> download -> inspect -> dedup -> score -> split -> WebDataset shards.

Runs on a laptop (``python pipelines/build_bbst.py`` starts a local Ray and, with no arguments, the built-in
demo) and unchanged on a cluster (``ray job submit --working-dir . -- python pipelines/build_bbst.py
--config my.yaml``: ``ray.init()`` attaches to the cluster named by ``RAY_ADDRESS``).

The driver plans and coordinates; Ray workers move the bytes. Every phase is a set of Ray tasks over the
staged files in ``DIR/_staging`` (see ``curate/staging.py``), and each task's output is a file written
atomically, so a rerun after a SIGKILL at any moment redoes only what is missing:

1. *stage*: workers download, check and write each unit of rows (bytes and rows) to the output store;
   a partition is committed when its rows are merged into ``_staging/rows``;
2. *dedup*: exact duplicates grouped by sha256, near duplicates by phash bands, resolved in key order
   (``curate/dedup.py``); the smallest key wins;
3. *score* (with a classifier; actors that load the model once), *split*, *plan* shards by key order,
   *write* shards in parallel tasks, then per-partition metadata, the manifest, the summary and the report.

One helper, :func:`as_completed`, submits a phase's tasks with a window and hands back each result as it finishes;
the Ray-free steps (input checks, fingerprint, demo set-up, bucket sizing) are in ``curate/``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import schema
from core.cli import error_boundary, prewarm, setup_logging
from core.config import ConfigError, given_keys
from core.progress import ProgressMeter, driver_io_bytes
from core.schema import STAGING
from core.store import Store
from core.watchdog import guard_descendants
from curate import assemble, dedup, demo, outputs, staging
from curate.build_config import BuildConfig

log = logging.getLogger("bbst.build")

# CPUs of every metadata task (compaction, dedup, finalize, plan, partition metadata, report). A whole CPU: Ray
# starts one worker process per task running at once, and a new worker costs about a second of CPU (interpreter,
# Ray, pyarrow) that a fraction of a CPU per task would pay on every node again; with one CPU per task, tasks
# run on the workers Ray started with the node.
TASK_CPUS = 1


# --------------------------------------------------------------------------------------------------- test hook
def _kill_hook(env: str, count: int) -> None:
    """TEST ONLY (tests/test_resume.py): SIGKILL this process once ``count`` reaches the number in ``env``.

    Unset in every real run; the resume tests set ``BBST_KILL_AFTER_PARTITIONS``, ``BBST_KILL_AFTER_SHARDS`` or
    ``BBST_KILL_AFTER_SEMANTIC_BUCKETS`` to kill the driver at a known point and check that a rerun finishes the
    same dataset.
    """
    limit = os.environ.get(env)
    if limit and count >= int(limit):
        log.warning("%s=%s reached: killing the run to test resume", env, limit)
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- scheduling
_END = object()


def as_completed(submit: Callable[[Any], Any], items: Iterable, window: int = 0,
                 urgent: list | None = None) -> Iterator[tuple[Any, Any]]:
    """Submit ``submit(item)`` (a Ray task) for every item, at most ``window`` in flight (0 = all at once), and yield
    ``(item, result)`` as each finishes: the one scheduling loop of every phase.

    Items the caller appends to ``urgent`` while iterating (follow-up work such as a partition's commit) are
    submitted next, ahead of the remaining ``items``.
    """
    import ray

    items, urgent = iter(items), urgent if urgent is not None else []
    inflight: dict = {}
    more = True
    while True:
        while urgent:
            item = urgent.pop(0)
            inflight[submit(item)] = item
        while more and (not window or len(inflight) < window):
            item = next(items, _END)
            if item is _END:
                more = False
            else:
                inflight[submit(item)] = item
        if not inflight:
            return
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        yield inflight.pop(ref), ray.get(ref)


# --------------------------------------------------------------------------------------------------- Ray work
def _remote(fn, **options):
    import ray

    return ray.remote(**options)(fn)


# Thin wrappers: each runs one Ray-free function of curate/ on a worker; only small results come back.
def _stage_unit(store, download_cfg, check_cfg, unit):
    return staging.cached_processor(store, download_cfg, check_cfg)(unit)


def _dedup_scatter(store, parts, buckets):
    from curate.dedup import scatter_partitions

    out = scatter_partitions(store, parts, buckets)
    return out if buckets > 1 else out[0]


def _dedup_reduce(store, j, cfg, buckets, *parts):
    from curate.dedup import reduce_bucket

    bands = reduce_bucket(store, j, cfg, buckets, list(parts))
    return bands if buckets > 1 else bands[0]


def _semantic_scatter(store, parts, probes, buckets):
    from curate.semantic import scatter_embeddings

    out = scatter_embeddings(store, parts, probes, buckets)
    return out if buckets > 1 else out[0]


class _ScoreActor:
    def __init__(self, kwargs):
        from classifier.scoring import StyleScorer

        self.scorer = StyleScorer(**kwargs)

    def score(self, store, p, fingerprint, batch_size):
        return assemble.score_partition(store, p, self.scorer, fingerprint, batch_size)


# --------------------------------------------------------------------------------------------------- phases
def stage_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> dict[str, Any]:
    """Phase 1: download, check and stage every pending unit on the workers; commit partitions as they finish."""
    import ray

    pending, units_per, todo = staging.plan_units(store, partitions, cfg.ray.unit_rows)
    if len(pending) < len(partitions):
        log.info("resume: %d of %d partitions already staged", len(partitions) - len(pending), len(partitions))
    left = collections.Counter(u.partition for u in todo)  # units of each pending partition still to stage
    meter = ProgressMeter(total=sum(partitions[p] for p in pending), interval_s=cfg.progress_interval_s,
                          label="download")
    meter.add(sum(partitions[p] for p in pending) - sum(u.stop - u.start for u in todo), {})
    # a check decodes one image at a time; declaring its peak (from check.max_decode_mb) lets Ray place no more
    # checks than fit a node
    memory = cfg.check.peak_memory_bytes()
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if largest and memory > largest:  # a request no node can meet would wait forever
        log.warning("check.max_decode_mb=%s needs %.0f MiB per check, more than the largest node's memory "
                    "(%.0f MiB): declaring that instead", cfg.check.max_decode_mb, memory / 2**20, largest / 2**20)
        memory = int(largest)
    # plain tasks on the workers Ray started with the node (an actor pool ran the same units ~20 % slower)
    stage = _remote(_stage_unit, num_cpus=cfg.ray.stage_num_cpus, memory=memory, max_retries=2)
    commit = _remote(staging.compact_partition, num_cpus=TASK_CPUS, max_retries=2)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1) // cfg.ray.stage_num_cpus))

    def submit(item):  # a unit to stage, or a partition (its number) whose units are all staged: commit it
        if isinstance(item, int):
            return commit.remote(store, item, units_per[item])
        return stage.remote(store, cfg.download, cfg.check, item)

    commits = [p for p in pending if left[p] == 0]  # every unit staged before a kill, only the merge is missing
    kept_bytes, first_result, committed = 0, None, 0
    for item, result in as_completed(submit, todo, window, urgent=commits):
        if isinstance(item, int):
            committed += 1
            _kill_hook("BBST_KILL_AFTER_PARTITIONS", committed)
            continue
        first_result = first_result or time.monotonic()
        kept_bytes += result["kept_bytes"]
        meter.add(result["rows"], result["statuses"], result["examples"])
        left[item.partition] -= 1
        if left[item.partition] == 0:
            commits.append(item.partition)
    meter.close()
    return {"first_result": first_result, "kept_bytes": kept_bytes}


def dedup_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> None:
    """Phase 2: exact and near duplicates over every staged row, as Ray tasks over the metadata."""
    import ray

    if assemble.dedup_done(store):
        log.info("resume: dedup decisions already made")
        return
    rows, parts = sum(partitions.values()), sorted(partitions)
    buckets = dedup.bucket_count(rows, cfg.ray.dedup_buckets)
    per_task = dedup.partitions_per_scatter(rows, len(parts), buckets)
    scatter = _remote(_dedup_scatter, num_returns=buckets, num_cpus=TASK_CPUS)
    scattered = [scatter.remote(store, parts[i:i + per_task], buckets) for i in range(0, len(parts), per_task)]
    scattered = [[r] for r in scattered] if buckets == 1 else scattered
    reduce = _remote(_dedup_reduce, num_returns=buckets, num_cpus=TASK_CPUS)
    banded = [reduce.remote(store, j, cfg.dedup, buckets, *[s[j] for s in scattered]) for j in range(buckets)]
    banded = [[r] for r in banded] if buckets == 1 else banded
    if cfg.dedup.near:
        edges = _remote(dedup.near_edges_of, num_cpus=TASK_CPUS)
        edge_refs = [edges.remote(cfg.dedup.phash_distance, *[b[j] for b in banded]) for j in range(buckets)]
        near = ray.get(_remote(dedup.resolve_to_store, num_cpus=TASK_CPUS).remote(store, *edge_refs))
    else:
        ray.get([b[0] for b in banded])
        near = 0
    store.write_json(f"{schema.DEDUP_DIR}/done.json", {"buckets": buckets, "near_duplicates": near})


def score_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> tuple[str, dict | None]:
    """Phase 3a: score ok rows (actors load the classifier once); partitions already scored are skipped."""
    if not cfg.score.classifier:
        msg = "scoring skipped: no classifier given (set --classifier PATH to score and split by score)"
        log.info(msg)
        return msg, None
    import ray

    from classifier.checkpoint import read_checkpoint_config

    ckpt = cfg.score.classifier
    _, meta = read_checkpoint_config(ckpt)  # a wrong or broken checkpoint fails here, before any actor starts
    info = {"path": str(ckpt), "version": meta["version"], "demo": bool(meta.get("demo")),
            "thresholds": dict(meta["thresholds"])}
    fingerprint = f"{ckpt}:{outputs.file_digest(ckpt)}"
    if cfg.dedup.semantic.enabled:  # the scores of such a run come with the embeddings
        fingerprint += f":embedding={cfg.dedup.semantic.embedding}"
    todo = [p for p in sorted(partitions) if assemble.scores_fingerprint(store, p) != fingerprint]
    if len(todo) < len(partitions):
        log.info("resume: %d of %d partitions already scored", len(partitions) - len(todo), len(partitions))
    if todo:
        kwargs = {"checkpoint": ckpt, **cfg.score.options}
        if cfg.dedup.semantic.enabled:
            kwargs["embedding"] = cfg.dedup.semantic.embedding
        if cfg.score.device:
            kwargs["device"] = cfg.score.device
        cls = ray.remote(num_cpus=cfg.score.num_cpus, num_gpus=cfg.score.num_gpus)(_ScoreActor)
        idle = [cls.remote(kwargs) for _ in range(max(1, min(cfg.score.actors, len(todo))))]
        actors, busy = list(idle), {}

        def submit(p):  # one partition per idle actor: the window is the number of actors
            busy[p] = idle.pop()
            return busy[p].score.remote(store, p, fingerprint, cfg.score.batch_size)

        meter = ProgressMeter(total=len(todo), interval_s=cfg.progress_interval_s, label="score", unit="partitions")
        for p, _ in as_completed(submit, todo, window=len(actors)):
            idle.append(busy.pop(p))
            meter.add(1)
        meter.close()
        for actor in actors:  # their CPUs are the next phases' now
            ray.kill(actor)
    kind = "DEMO classifier" if info["demo"] else "classifier"
    return f"scored with {kind} {info['version']} ({ckpt})", info


def semantic_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> dict | None:
    """Phase 3b: semantic duplicates among the scored rows (``curate/semantic.py``): k-means on a sample, the
    embeddings scattered to their nearest clusters, similar pairs per bucket of clusters, resolved in key order."""
    import ray

    from curate import semantic

    sem = cfg.dedup.semantic
    if not sem.enabled:
        return None
    if semantic.semantic_done(store):
        log.info("resume: semantic duplicates already decided")
        return store.read_json(semantic.done_rel())
    parts, total = sorted(partitions), sum(partitions.values())
    clusters = ray.get(_remote(semantic.train_centroids, num_cpus=TASK_CPUS).remote(store, parts, sem, total))
    buckets = dedup.bucket_count(total, cfg.ray.dedup_buckets, cap=clusters)
    todo = [j for j in range(buckets) if not store.exists(semantic.pairs_rel(j))]  # buckets done before a kill
    if todo:
        per_task = dedup.partitions_per_scatter(total, len(parts), buckets)
        scatter = _remote(_semantic_scatter, num_returns=buckets, num_cpus=TASK_CPUS)
        scattered = [scatter.remote(store, parts[i:i + per_task], sem.probes, buckets)
                     for i in range(0, len(parts), per_task)]
        scattered = [[s] for s in scattered] if buckets == 1 else scattered
        pairs = _remote(semantic.bucket_to_store, num_cpus=TASK_CPUS)
        for done, _ in enumerate(as_completed(lambda j: pairs.remote(store, j, sem.threshold,
                                                                     *[s[j] for s in scattered]), todo), 1):
            _kill_hook("BBST_KILL_AFTER_SEMANTIC_BUCKETS", done)
    return ray.get(_remote(semantic.resolve_to_store, num_cpus=TASK_CPUS).remote(store, buckets, sem, clusters))


def shard_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int], split,
                owned: set[str]) -> tuple[list[dict], list[dict]]:
    """Phase 3c: split each partition, plan shards by key order, write them in parallel tasks, then the
    per-partition metadata; returns ``(manifest entries, partition accounts)``."""
    import ray

    parts = sorted(partitions)
    final = _remote(assemble.finalize_partition, num_cpus=TASK_CPUS)
    ray.get([final.remote(store, p, split) for p in parts])
    specs = ray.get(_remote(assemble.plan_from_final, num_cpus=TASK_CPUS).remote(
        store, parts, cfg.shards.target_samples, cfg.shards.target_bytes))
    write = _remote(assemble.write_planned_shard, num_cpus=cfg.shards.num_cpus, max_retries=2)
    meter = ProgressMeter(total=len(specs), interval_s=cfg.progress_interval_s, label="shards", unit="shards")
    entries: list = [None] * len(specs)
    written = 0
    for (i, _), entry in as_completed(lambda item: write.remote(store, item[1]), enumerate(specs)):
        entries[i] = entry
        meter.add(1)
        written += 0 if entry.get("reused") else 1
        _kill_hook("BBST_KILL_AFTER_SHARDS", written)
    meter.close()
    reused = sum(1 for e in entries if e.get("reused"))
    if reused:
        log.info("resume: %d of %d shards already complete (checksums verified)", reused, len(specs))
    outputs.remove_stale_shards(store, {s["name"] for s in specs}, owned)
    meta = _remote(assemble.write_partition_meta, num_cpus=TASK_CPUS)
    accounts = ray.get([meta.remote(store, p, specs) for p in parts])
    entries = [{k: v for k, v in e.items() if k not in ("keys_digest", "reused")} for e in entries]
    return entries, accounts


def finish(cfg: BuildConfig, store: Store, record: outputs.RunRecord, partitions: dict[int, int], t_start: float,
           startup: float, extra: dict | None, phases: dict[str, float], owned: set[str],
           io_start: int | None = None) -> dict:
    """Score, split, shards, metadata, manifest, summary, report; then the complete run record."""
    t = time.monotonic()
    scoring, classifier = score_phase(cfg, store, partitions)
    split = cfg.split.with_classifier_thresholds(classifier["thresholds"] if classifier else None)
    phases["score"], t = time.monotonic() - t, time.monotonic()
    semantic = semantic_phase(cfg, store, partitions) if classifier else None  # compares the scorer's embeddings
    if semantic is not None:
        phases["semantic_dedup"], t = time.monotonic() - t, time.monotonic()
    entries, accounts = shard_phase(cfg, store, partitions, split, owned)
    phases["shards_meta"] = time.monotonic() - t
    io_now = driver_io_bytes()
    if io_start is not None and io_now is not None:
        # what the driver itself read and wrote during the run (files, sockets, pipes), start-up imports excluded
        extra = {**(extra or {}), "driver_io_bytes": io_now - io_start}
    extra = {**(extra or {}), "classifier": classifier, **({"semantic_dedup": semantic} if semantic else {}),
             "split_thresholds": {"style_min_score": split.style_threshold(),
                                  "content_max_score": split.content_threshold()},
             "phase_seconds": {k: round(v, 3) for k, v in phases.items()}}
    summary, files = assemble.publish(store, entries, accounts, partitions, t_start, startup, scoring, extra,
                                      embeddings=cfg.dedup.semantic.enabled and classifier is not None)
    if cfg.report:
        import ray

        try:
            limits = {"min_side": cfg.check.min_side, "max_aspect_ratio": cfg.check.max_aspect_ratio}
            report = _remote(assemble.write_report, num_cpus=TASK_CPUS)
            ray.get(report.remote(store, summary, cfg.report_thumbnails, limits))
            files.append(schema.REPORT_FILE)
        except Exception:  # the report is a convenience; the dataset is already complete
            log.exception("could not write %s", schema.REPORT_FILE)
    outputs.complete(store, record, files)
    if not cfg.keep_staging:
        store.rm(STAGING, recursive=True)
    return summary


# --------------------------------------------------------------------------------------------------- runs
def run_build(cfg: BuildConfig, startup: float = 0.0, extra: dict | None = None,
              claimed: tuple[outputs.RunRecord, outputs.RunRecord | None] | None = None) -> dict:
    """The whole build for ``cfg`` (inputs checked, output claimed) on the already initialised Ray."""
    store = Store(cfg.out, cfg.storage_options)
    record, previous = claimed or outputs.claim(store, outputs.build_fingerprint(cfg))
    if previous is not None and previous.state == "complete" and store.exists(schema.SUMMARY_FILE):
        log.info("%s already holds this build (same URL list and settings): nothing to do", cfg.out)
        return store.read_json(schema.SUMMARY_FILE)
    t_start, io_start = time.monotonic(), driver_io_bytes()
    partitions = staging.stage_list(store, cfg.urls, cfg.reader, cfg.storage_options)
    log.info("URL list: %d rows in %d partitions", sum(partitions.values()), len(partitions))
    staged = stage_phase(cfg, store, partitions)
    phases = {"read_download_check": time.monotonic() - t_start}
    if staged["first_result"] is not None:
        phases["until_first_rows"] = staged["first_result"] - t_start  # included in read_download_check
    t = time.monotonic()
    dedup_phase(cfg, store, partitions)
    phases["dedup"] = time.monotonic() - t
    owned = set(previous.files if previous else [])
    return finish(cfg, store, record, partitions, t_start, startup, extra, phases,
                  {f.rsplit("/", 1)[-1] for f in owned if f.startswith(schema.SHARDS_DIR + "/")}, io_start)


def run_rescore(cfg: BuildConfig, directory: str, startup: float = 0.0) -> dict:
    """Re-score the samples of a finished output ``directory`` from its shards (no download) and re-shard."""
    import ray

    store = Store(directory, cfg.storage_options)
    t_start = time.monotonic()
    # duplicates stay as the build decided them: the samples left in the shards are re-scored, nothing more
    cfg = dataclasses.replace(cfg, dedup=dataclasses.replace(cfg.dedup, semantic=dataclasses.replace(
        cfg.dedup.semantic, enabled=False)))
    record, sources, partitions = assemble.begin_rescore(store, directory, cfg.score.classifier, cfg.score.options)
    if not store.exists(STAGING, "partitions.json"):
        ray.get([_remote(assemble.index_old_shard_to_store, num_cpus=TASK_CPUS).remote(store, n) for n in sources])
        rels = [assemble.rescore_index_rel(n) for n in sources]
        ray.get([_remote(assemble.rescore_partition, num_cpus=TASK_CPUS).remote(store, p, rels)
                 for p in sorted(partitions)])
        assemble.mark_rescore_staged(store, partitions)
    return finish(cfg, store, record, partitions, t_start, startup, {"rescored_from": len(sources)}, {}, set())


def run_demo(cfg: BuildConfig, explicit_out: bool, t0: float, ray_logs: bool = False) -> dict:
    """The built-in demo (``curate/demo.py``): a generated corpus served on loopback, a DEMO classifier fitted on
    its known labels, then the build into ./bbst-demo (or --out)."""
    from classifier.demo import build_demo_classifier

    t_setup = time.monotonic()
    with demo.demo_build(cfg, explicit_out) as (demo_cfg, record, fit_classifier):
        if fit_classifier:
            images, labels = demo.classifier_examples(demo_cfg.urls)
            build_demo_classifier(images, labels, demo_cfg.score.classifier)
        setup = time.monotonic() - t_setup  # corpus and demo classifier: the demo's inputs, not start-up
        _init_ray(ray_logs)
        return run_build(demo_cfg, startup=time.monotonic() - t0 - setup, claimed=(record, None),
                         extra={"demo": True, "demo_setup_seconds": round(setup, 3)})


# --------------------------------------------------------------------------------------------------- CLI
EXAMPLES = (
    ("bbst build", "the built-in demo: generated images served on loopback -> ./bbst-demo (report.html inside)"),
    ("bbst build --urls urls.csv --out ./bbst-out --min-side 512",
     "your URL list (CSV/TSV, Parquet, JSONL or text; file, folder, glob or s3://...) -> shards in ./bbst-out"),
    ("bbst build --urls links.csv --out ./bbst-out --set reader.url_column=link",
     "a list whose URL column has another name; any option is one --set away"),
    ("bbst build --config my.yaml --set download.threads=32",
     "every option from a YAML file (python -m curate.build_config prints one with every default)"),
    ("bbst build --rescore ./bbst-out --classifier runs/clf/checkpoint",
     "re-score and re-split a finished output with a new classifier, without downloading again"),
)


def build_parser() -> argparse.ArgumentParser:
    from core.cli import ConfigFlags, add_config_file_flags, make_parser

    p = make_parser("build", __doc__.split("\n")[0], EXAMPLES)
    add_config_file_flags(p, "BuildConfig (see pipelines/configs/build_bbst.example.yaml)", "download.timeout=5")
    flags = ConfigFlags(BuildConfig)
    flags.add(p, "urls", metavar="URLS")
    p.add_argument("--images", metavar="DIR_OR_GLOB",
                   help="build from image files instead of a URL list: a folder tree or glob, local or fsspec "
                        "(default: none)")
    flags.add(p, "out", metavar="DIR")
    flags.add(p, "check.min_side", "--min-side", metavar="N")
    flags.add(p, "download.allow_private_network", "--allow-private-network")
    flags.add(p, "score.classifier", "--classifier", metavar="CKPT")
    p.add_argument("--rescore", metavar="DIR",
                   help="re-score the shards of an existing output DIR with --classifier, no download (default: off)")
    flags.add(p, "demo_images", metavar="N")
    p.add_argument("--ray-logs", action="store_true",
                   help="show Ray's own log lines, warnings and worker output (default: off)")
    p.set_defaults(config_flags=flags)
    return p


def load_cli_config(args: argparse.Namespace) -> BuildConfig:
    """Defaults <- ``--config`` YAML <- named flags <- ``--set`` pairs; unknown keys are errors."""
    from core.cli import load_args

    extra, origins = None, None
    if args.images is not None:
        if args.urls is not None:
            raise ConfigError("--images and --urls: pass one of them")
        extra, origins = {"urls": args.images, "reader": {"format": "images"}}, {"urls": "--images"}
    return load_args(BuildConfig, args, args.config_flags, extra=extra, extra_origins=origins)


# modules the driver's first steps import (reading the URL list: pyarrow imports pandas on its first array)
PRELOAD = ("pandas", "pyarrow.compute", "pyarrow.parquet", "curate.reader")


def _init_ray(verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray's start-up mostly waits on the processes it launches: import what the first phase needs meanwhile
    prewarm(PRELOAD)
    # attaches to the cluster when RAY_ADDRESS is set (ray job submit), else starts a local Ray, which then ends
    # with this driver even when it is killed (guarded before ray.init: its start-up can take a while)
    if not os.environ.get("RAY_ADDRESS"):
        guard_descendants()
    ray.init(include_dashboard=False, logging_level=logging.INFO if verbose else logging.ERROR,
             log_to_driver=verbose, configure_logging=True)


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    cfg = load_cli_config(args)
    outputs.check_inputs(cfg, args.rescore)  # every input error before Ray starts
    if args.rescore:
        _init_ray(args.ray_logs)
        summary = run_rescore(cfg, args.rescore, startup=time.monotonic() - t0)
    elif cfg.urls is None:
        summary = run_demo(cfg, explicit_out=args.out is not None or "out" in given_keys(args.config, args.sets), t0=t0,
                           ray_logs=args.ray_logs)
    else:
        store = Store(cfg.out, cfg.storage_options)
        claimed = outputs.claim(store, outputs.build_fingerprint(cfg))  # before anything is staged, and before Ray
        _init_ray(args.ray_logs)
        summary = run_build(cfg, startup=time.monotonic() - t0, claimed=claimed)
    print(assemble.summary_text(summary), flush=True)
    return summary


@error_boundary("build")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run(args)


def _exit_cleanly(code: int) -> None:
    """Exit with ``code`` even if a library left a non-daemon thread behind: a run never hangs after it ends.

    Ray is shut down first: for a local Ray this process started, that stops its processes (the raylet stops
    its workers and agents; skipping it would leave the agents running).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            stopper = threading.Thread(target=ray.shutdown, daemon=True)
            stopper.start()
            stopper.join(timeout=15)
    os._exit(code)


if __name__ == "__main__":
    import traceback

    try:
        result = main()
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except SystemExit as stop:  # argparse's usage errors and --help
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - a bug: keep its traceback, then exit
        traceback.print_exc()
        code = 1
    _exit_cleanly(code)
