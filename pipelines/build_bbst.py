"""Build a BBST-style dataset: URL lists -> download -> inspect -> dedup -> score -> split -> WebDataset shards.

Runs on a laptop (``python pipelines/build_bbst.py`` starts a local Ray and, with no arguments, the built-in
demo) and unchanged on a cluster (``ray job submit --working-dir . -- python pipelines/build_bbst.py
--config my.yaml``: ``ray.init()`` attaches to the cluster named by ``RAY_ADDRESS``).

The driver plans and coordinates; Ray workers move the bytes. Every step is a Ray task over the staged files
in ``DIR/_staging`` (see ``curate/staging.py``), and each task's output is a file written atomically, so a rerun
after a SIGKILL at any moment redoes only what is missing. The steps overlap (``curate/flow.py``):

1. *stage*: workers download, check and write each unit of rows (bytes and rows) to the output store;
   a partition is committed when its rows are merged into ``_staging/rows``;
2. *dedup waves*: exact duplicates grouped by the sha256 each download computed, near duplicates by phash bands,
   resolved in key order over the longest committed prefix of partitions (``curate/dedup.py``); the smallest
   key wins, so the decisions over a prefix are final while later partitions still download;
3. *score* (with a classifier; actors that load the model once, started when the first partition is decided),
   *finalize* (decisions, scores, split), *plan* shards in key order, *write* each shard as soon as the plan
   closes it; with the optional semantic pass, the shards wait until every embedding has been compared;
4. per-partition metadata (once none of a partition's rows is in a shard still open), then the manifest, the
   summary and the report.

:func:`process` runs steps 1-3 in one loop over the tasks in flight; the Ray-free steps (input checks,
fingerprint, demo set-up, bucket sizing, the order of the steps) are in ``curate/``.
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
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (also under `ray job submit`): make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import schema
from core.cli import error_boundary, head_start, on_exit, prewarm, run_exit_hooks, setup_logging
from core.config import ConfigError, given_keys
from core.progress import ProgressMeter, driver_io_bytes
from core.schema import STAGING
from core.store import Store
from core.watchdog import guard_descendants, stop_descendants
from curate import assemble, dedup, demo, outputs, staging
from curate.build_config import BuildConfig
from curate.outputs import InputError

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


def _dedup_reduce(store, rel, j, cfg, buckets, *parts):
    from curate.dedup import reduce_bucket

    bands = reduce_bucket(store, rel, j, cfg, buckets, list(parts))
    return bands if buckets > 1 else bands[0]


def _semantic_scatter(store, parts, probes, buckets):
    from curate.semantic import scatter_embeddings

    out = scatter_embeddings(store, parts, probes, buckets)
    return out if buckets > 1 else out[0]


class _ScoreActor:
    def __init__(self, kwargs):
        from classifier.scoring import StyleScorer

        self.scorer = StyleScorer(**kwargs)

    def score(self, store, p, fingerprint, batch_size, decisions):
        return assemble.score_partition(store, p, self.scorer, fingerprint, batch_size, decisions)


# --------------------------------------------------------------------------------------------------- the steps
def scoring_of(cfg: BuildConfig) -> tuple[str, dict | None, str | None]:
    """``(summary line, classifier info, scores fingerprint)`` of a run; a wrong or broken checkpoint fails here,
    before anything is scored."""
    if not cfg.score.classifier:
        return "scoring skipped: no classifier given (set --classifier PATH to score and split by score)", None, None
    from classifier.checkpoint import read_checkpoint_config

    ckpt = cfg.score.classifier
    _, meta = read_checkpoint_config(ckpt)
    info = {"path": str(ckpt), "version": meta["version"], "demo": bool(meta.get("demo")),
            "thresholds": dict(meta["thresholds"])}
    fingerprint = f"{ckpt}:{outputs.file_digest(ckpt)}"
    if cfg.dedup.semantic.enabled:  # the scores of such a run come with the embeddings
        fingerprint += f":embedding={cfg.dedup.semantic.embedding}"
    kind = "DEMO classifier" if info["demo"] else "classifier"
    return f"scored with {kind} {info['version']} ({ckpt})", info, fingerprint


class _Scorers:
    """The classifier's actors (each loads the model once): created before the first download, so the model loads
    while the downloads run and nothing waits for it; one partition per idle actor (a call queues until the actor
    is ready); stopped once everything is scored."""

    def __init__(self, cfg: BuildConfig, store: Store, fingerprint: str, count: int) -> None:
        kwargs = {"checkpoint": cfg.score.classifier, **cfg.score.options}
        if cfg.dedup.semantic.enabled:
            kwargs["embedding"] = cfg.dedup.semantic.embedding
        if cfg.score.device:
            kwargs["device"] = cfg.score.device
        self.cfg, self.store, self.fingerprint, self.kwargs = cfg, store, fingerprint, kwargs
        import ray

        cls = ray.remote(num_cpus=cfg.score.num_cpus, num_gpus=cfg.score.num_gpus)(_ScoreActor)
        self.actors = [cls.remote(kwargs) for _ in range(max(1, min(cfg.score.actors, count)))]
        self.idle = list(self.actors)
        self.queue: collections.deque[int] = collections.deque()

    def submit_ready(self, running: _Running, decisions: str | None) -> None:
        while self.queue and self.idle:
            actor, p = self.idle.pop(), self.queue.popleft()
            running.add(actor.score.remote(self.store, p, self.fingerprint, self.cfg.score.batch_size, decisions),
                        ("score", p, actor))

    def close(self) -> None:
        import ray

        for actor in self.actors:  # their CPUs (or GPUs) are the next steps' now
            ray.kill(actor)
        self.actors, self.idle = [], []


class _Running:
    """Ray tasks in flight, each with what it is for; :meth:`next` hands back the first to finish."""

    def __init__(self) -> None:
        self.refs: dict = {}

    def add(self, ref, what: tuple) -> None:
        self.refs[ref] = what

    def __len__(self) -> int:
        return len(self.refs)

    def next(self) -> tuple[tuple, Any]:
        import ray

        (ref,), _ = ray.wait(list(self.refs), num_returns=1)
        return self.refs.pop(ref), ray.get(ref)


def _dedup_wave(cfg: BuildConfig, store: Store, parts: list[int], partitions: dict[int, int], buckets: int):
    """Exact and near duplicates over the staged rows of ``parts`` (a committed key-order prefix), as Ray tasks
    over the metadata (``curate/dedup.py``); returns the ref of the last task, whose result is the number of near
    duplicates. The decisions go to the wave's own folder, ``dedup.wave_rel(len(parts))``."""
    rel = dedup.wave_rel(len(parts))
    rows = sum(partitions[p] for p in parts)
    per_task = dedup.partitions_per_scatter(rows, len(parts), buckets)
    scatter = _remote(_dedup_scatter, num_returns=buckets, num_cpus=TASK_CPUS)
    scattered = [scatter.remote(store, parts[i:i + per_task], buckets) for i in range(0, len(parts), per_task)]
    scattered = [[r] for r in scattered] if buckets == 1 else scattered
    reduce = _remote(_dedup_reduce, num_returns=buckets, num_cpus=TASK_CPUS)
    banded = [reduce.remote(store, rel, j, cfg.dedup, buckets, *[s[j] for s in scattered]) for j in range(buckets)]
    banded = [[r] for r in banded] if buckets == 1 else banded
    if not cfg.dedup.near:
        return _remote(_count_none, num_cpus=TASK_CPUS).remote(*[b[0] for b in banded])
    edges = _remote(dedup.near_edges_of, num_cpus=TASK_CPUS)
    edge_refs = [edges.remote(cfg.dedup.phash_distance, *[b[j] for b in banded]) for j in range(buckets)]
    return _remote(dedup.resolve_to_store, num_cpus=TASK_CPUS).remote(store, rel, *edge_refs)


def _count_none(*_results) -> int:
    return 0


def process(cfg: BuildConfig, store: Store, partitions: dict[int, int], owned: set[str], t_start: float,
            phases: dict[str, float], stage: bool = True, deduplicate: bool = True,
            ) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Stage, deduplicate, score, split and write the shards and the per-partition metadata of ``partitions``,
    every step as soon as its inputs are final (``curate/flow.py``). Returns ``(manifest entries, partition
    accounts, what the summary reports about scoring and semantic duplicates)``.

    ``stage``: download the units not staged yet (a re-score has its rows already); ``deduplicate``: run the dedup
    waves (a re-score keeps the decisions of the build).
    """
    import ray

    from curate.flow import BuildFlow

    parts = sorted(partitions)
    scoring, classifier, fingerprint = scoring_of(cfg)
    semantic_on = cfg.dedup.semantic.enabled and classifier is not None
    to_score = None
    if classifier is not None:
        to_score = {p for p in parts if assemble.scores_fingerprint(store, p) != fingerprint}
        if len(to_score) < len(parts):
            log.info("resume: %d of %d partitions already scored", len(parts) - len(to_score), len(parts))
    split = cfg.split.with_classifier_thresholds(classifier["thresholds"] if classifier else None)

    # staging: units not staged yet, partitions whose units are all staged but not merged (a kill between the two)
    pending, units_per, todo = staging.plan_units(store, partitions, cfg.ray.unit_rows) if stage else ([], {}, [])
    if len(pending) < len(partitions) and stage:
        log.info("resume: %d of %d partitions already staged", len(partitions) - len(pending), len(partitions))
    left = collections.Counter(u.partition for u in todo)
    units = collections.deque(todo)
    meter = ProgressMeter(total=sum(partitions[p] for p in pending), interval_s=cfg.progress_interval_s,
                          label="download")
    meter.add(sum(partitions[p] for p in pending) - sum(u.stop - u.start for u in todo), {})
    stage_task = _remote(_stage_unit, num_cpus=cfg.ray.stage_num_cpus, memory=_check_memory(cfg), max_retries=2)
    commit = _remote(staging.compact_partition, num_cpus=TASK_CPUS, max_retries=2)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1) // cfg.ray.stage_num_cpus))

    dedup_done = not deduplicate or assemble.dedup_done(store)
    decisions = assemble.decisions_rel(store) if dedup_done and deduplicate else None  # the last wave's folder
    if deduplicate and dedup_done:
        log.info("resume: dedup decisions already made")
    flow = BuildFlow(partitions, committed=set(parts) - set(pending), decided=dedup_done, to_score=to_score,
                     hold=semantic_on)
    buckets = dedup.bucket_count(sum(partitions.values()), cfg.ray.dedup_buckets)
    scorers = _Scorers(cfg, store, fingerprint, len(to_score)) if to_score else None
    final = _remote(assemble.finalize_partition, num_cpus=TASK_CPUS)
    plan = _remote(assemble.plan_step, num_cpus=TASK_CPUS)
    write = _remote(assemble.write_planned_shard, num_cpus=cfg.shards.num_cpus, max_retries=2)
    meta = _remote(assemble.write_partition_meta, num_cpus=TASK_CPUS)
    shard_meter = ProgressMeter(interval_s=cfg.progress_interval_s, label="shards", unit="shards")
    running = _Running()
    specs: list[dict] = []
    entries: list[dict] = []
    accounts: dict[int, dict] = {}
    plan_state: dict | None = None
    unmeta: list[int] = []  # planned partitions whose metadata is not submitted yet
    marks = {"committed": 0, "written": 0, "units_left": len(todo)}

    def start(steps) -> None:
        for step in steps:
            if step.kind == "wave":
                ref = _dedup_wave(cfg, store, parts[:step.count], partitions, buckets)
                running.add(ref, ("wave", step.count, time.monotonic()))
            elif step.kind == "score":
                scorers.queue.append(step.partition)
            elif step.kind == "finalize":
                running.add(final.remote(store, step.partition, split, decisions), ("final", step.partition))
            elif step.kind == "plan":
                running.add(plan.remote(store, plan_state, list(step.partitions), cfg.shards.target_samples,
                                        cfg.shards.target_bytes, step.last), ("plan", step.partitions))
            else:
                specs.append(step.spec)
                running.add(write.remote(store, step.spec), ("write", step.spec["name"]))
        if scorers is not None:
            scorers.submit_ready(running, decisions)

    def drain(steps) -> None:
        nonlocal plan_state, decisions
        start(steps)
        while True:
            while units and sum(1 for w in running.refs.values() if w[0] == "unit") < window:
                unit = units.popleft()
                running.add(stage_task.remote(store, cfg.download, cfg.check, unit), ("unit", unit))
            if not running:
                return
            what, result = running.next()
            kind, steps = what[0], []
            if kind == "unit":
                unit = what[1]
                phases.setdefault("until_first_rows", time.monotonic() - t_start)
                meter.add(result["rows"], result["statuses"], result["examples"])
                left[unit.partition] -= 1
                marks["units_left"] -= 1
                if left[unit.partition] == 0:
                    running.add(commit.remote(store, unit.partition, units_per[unit.partition]),
                                ("commit", unit.partition))
            elif kind == "commit":
                marks["committed"] += 1
                _kill_hook("BBST_KILL_AFTER_PARTITIONS", marks["committed"])
                steps = flow.on_commit(what[1])
            elif kind == "wave":
                phases["dedup"] = phases.get("dedup", 0.0) + time.monotonic() - what[2]
                decisions = dedup.wave_rel(what[1])  # covers every partition decided so far
                steps = flow.on_wave(what[1])
                if flow.all_decided:
                    store.write_json(f"{schema.DEDUP_DIR}/done.json",
                                     {"buckets": buckets, "near_duplicates": result, "decisions": decisions})
            elif kind == "score":
                scorers.idle.append(what[2])
                steps = flow.on_scored(what[1])
                if not flow.to_score and not scorers.queue:
                    scorers.close()
            elif kind == "final":
                steps = flow.on_final(what[1])
            elif kind == "plan":
                plan_state, closed = result
                steps = flow.on_planned(closed)
                unmeta.extend(what[1])  # (the flow may have handed out the next plan step already)
            elif kind == "meta":
                accounts[what[1]] = result
            else:  # a shard
                entries.append(result)
                phases.setdefault("until_first_shard", time.monotonic() - t_start)
                shard_meter.add(1)
                if not result.get("reused"):
                    marks["written"] += 1
                    _kill_hook("BBST_KILL_AFTER_SHARDS", marks["written"])
            if kind == "unit" and not marks["units_left"]:
                meter.close()
                phases["read_download_check"] = time.monotonic() - t_start
            start(steps)
            if kind == "plan":
                submit_metadata()

    def submit_metadata() -> None:
        """The metadata of each planned partition none of whose rows is in a shard still open (it names the shard
        of every row), with the specs of the shards that hold its rows."""
        still_open = {p for shard in plan_state["open"].values() for p in shard["parts"]}
        ready = [p for p in unmeta if p not in still_open]
        unmeta[:] = [p for p in unmeta if p in still_open]
        for p in ready:
            mine = [s for s in specs if p in s["partitions"]]
            running.add(meta.remote(store, p, mine), ("meta", p))

    pre_commits = [p for p in pending if left[p] == 0]  # every unit staged before a kill, only the merge is missing
    for p in pre_commits:
        running.add(commit.remote(store, p, units_per[p]), ("commit", p))
    if not todo:
        meter.close()
        phases["read_download_check"] = time.monotonic() - t_start
    drain(flow.start())
    semantic = None
    if semantic_on:  # compares the embeddings of every scored row: the shards wait for it
        t = time.monotonic()
        semantic = semantic_phase(cfg, store, partitions)
        phases["semantic_dedup"] = time.monotonic() - t
        drain(flow.release())
    if scorers is not None:
        scorers.close()
    if not flow.done:
        raise RuntimeError("the build stopped before every partition was planned")  # a bug, not an input problem
    shard_meter.close()
    reused = sum(1 for e in entries if e.get("reused"))
    if reused:
        log.info("resume: %d of %d shards already complete (checksums verified)", reused, len(specs))
    log.info("%d dedup waves; %d shards", flow.waves, len(specs))
    if unmeta or len(accounts) != len(parts):
        raise RuntimeError("the build stopped before every partition's metadata was written")  # a bug
    phases["after_downloads"] = time.monotonic() - t_start - phases["read_download_check"]
    outputs.remove_stale_shards(store, {s["name"] for s in specs}, owned)
    entries = sorted(({k: v for k, v in e.items() if k not in ("keys_digest", "reused")} for e in entries),
                     key=lambda e: e["url"])
    extra = {"classifier": classifier, **({"semantic_dedup": semantic} if semantic else {}),
             "scoring": scoring, "split_thresholds": {"style_min_score": split.style_threshold(),
                                                      "content_max_score": split.content_threshold()},
             "dedup_waves": flow.waves}
    return entries, [accounts[p] for p in parts], extra


def _check_memory(cfg: BuildConfig) -> int:
    """What one download+check task declares: a check decodes one image at a time, and its peak (from
    check.max_decode_mb) lets Ray place no more checks than fit a node."""
    import ray

    memory = cfg.check.peak_memory_bytes()
    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if largest and memory > largest:  # a request no node can meet would wait forever
        log.warning("check.max_decode_mb=%s needs %.0f MiB per check, more than the largest node's memory "
                    "(%.0f MiB): declaring that instead", cfg.check.max_decode_mb, memory / 2**20, largest / 2**20)
        memory = int(largest)
    return memory


def semantic_phase(cfg: BuildConfig, store: Store, partitions: dict[int, int]) -> dict | None:
    """Semantic duplicates among the scored rows (``curate/semantic.py``): k-means on a sample, the embeddings
    scattered to their nearest clusters, similar pairs per bucket of clusters, resolved in key order."""
    import ray

    from curate import semantic

    sem = cfg.dedup.semantic
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
        running = _Running()
        for j in todo:
            running.add(pairs.remote(store, j, sem.threshold, *[s[j] for s in scattered]), ("pairs", j))
        for done in range(1, len(todo) + 1):
            running.next()
            _kill_hook("BBST_KILL_AFTER_SEMANTIC_BUCKETS", done)
    return ray.get(_remote(semantic.resolve_to_store, num_cpus=TASK_CPUS).remote(store, buckets, sem, clusters))


def finish(cfg: BuildConfig, store: Store, record: outputs.RunRecord, partitions: dict[int, int], t_start: float,
           startup: float, extra: dict | None, phases: dict[str, float], owned: set[str], stage: bool = True,
           deduplicate: bool = True, io_start: int | None = None) -> dict:
    """Every step of :func:`process`, then the manifest, the summary, the report and the complete run record."""
    entries, accounts, info = process(cfg, store, partitions, owned, t_start, phases, stage, deduplicate)
    scoring, classifier = info.pop("scoring"), info["classifier"]
    t = time.monotonic()
    io_now = driver_io_bytes()
    if io_start is not None and io_now is not None:
        # what the driver itself read and wrote during the run (files, sockets, pipes), start-up imports excluded
        extra = {**(extra or {}), "driver_io_bytes": io_now - io_start}
    extra = {**(extra or {}), **info, "phase_seconds": {k: round(v, 3) for k, v in phases.items()}}
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
    log.debug("published in %.2f s", time.monotonic() - t)
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
    owned = set(previous.files if previous else [])
    return finish(cfg, store, record, partitions, t_start, startup, extra, {},
                  {f.rsplit("/", 1)[-1] for f in owned if f.startswith(schema.SHARDS_DIR + "/")}, io_start=io_start)


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
    return finish(cfg, store, record, partitions, t_start, startup, {"rescored_from": len(sources)}, {}, set(),
                  stage=False, deduplicate=False)


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

# Environment of the processes of a local Ray this driver starts (an attached cluster keeps its own; a value the
# user set wins). Usage statistics and Ray's metrics are off: nothing here reads them, and their exporters cost
# the agents memory and CPU. Two malloc arenas per process instead of glibc's 8 per core: each of a worker's
# download threads would otherwise get an arena of its own that keeps the freed image buffers (~25 MiB less
# per build at the peak).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0", "MALLOC_ARENA_MAX": "2"}

_local_ray: dict[str, Any] = {}  # the watchdog of the local Ray this driver started ("watchdog"), if any


def _check_cluster_answers(address: str, timeout: float = 10.0) -> None:
    """Refuse a ``RAY_ADDRESS`` of the form ``host:port`` (a GCS address) that accepts no connection: ``ray.init``
    would retry it for many minutes. Other forms (``auto``, ``ray://...``) are left to Ray."""
    import re
    import socket

    match = re.fullmatch(r"\[?([\w.:-]+?)\]?:(\d+)", address.strip())
    if not match or "://" in address:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({exc.strerror or exc})",
                         hint="start it first (ray start --head), or unset RAY_ADDRESS to run on a local Ray"
                         ) from None


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
        for key, value in RAY_ENV.items():  # read by the processes ray.init starts: set before it
            os.environ.setdefault(key, value)
        _local_ray["watchdog"] = guard_descendants()
    on_exit(_stop_ray)  # however the command ends: `python pipelines/build_bbst.py` or `bbst build`
    t = time.monotonic()
    try:
        ray.init(include_dashboard=False, logging_level=logging.INFO if verbose else logging.ERROR,
                 log_to_driver=verbose, configure_logging=True)
    except ConnectionError as exc:  # RAY_ADDRESS names a cluster that does not answer, or refuses this driver
        if not os.environ.get("RAY_ADDRESS"):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}: cannot attach to that Ray cluster ({reason})",
                         hint="start it first (ray start --head), or unset RAY_ADDRESS to run on a local Ray"
                         ) from None
    log.debug("start-up: ray.init took %.2f s", time.monotonic() - t)


def run(args: argparse.Namespace) -> dict:
    t0 = time.monotonic()
    cfg = load_cli_config(args)
    outputs.check_inputs(cfg, args.rescore)  # every input error before Ray starts
    if os.environ.get("RAY_ADDRESS"):
        _check_cluster_answers(os.environ["RAY_ADDRESS"])
    if args.rescore:
        _init_ray(args.ray_logs)
        summary = run_rescore(cfg, args.rescore, startup=time.monotonic() - t0)
    elif cfg.urls is None:
        summary = run_demo(cfg, explicit_out=args.out is not None or "out" in given_keys(args.config, args.sets), t0=t0,
                           ray_logs=args.ray_logs)
    else:
        store = Store(cfg.out, cfg.storage_options)
        claimed = outputs.claim(store, outputs.build_fingerprint(cfg))  # before anything is staged, and before Ray
        log.debug("start-up: inputs checked and output claimed after %.2f s", time.monotonic() - t0)
        staged = None
        if claimed[1] is None or claimed[1].state != "complete":
            # the URL list is cut into input partitions while Ray starts; run_build finds them staged
            staged = head_start(staging.stage_list, store, cfg.urls, cfg.reader, cfg.storage_options)
        _init_ray(args.ray_logs)
        if staged is not None:
            staged()  # a list error (no rows, no URL column) is raised here, as run_build would raise it
            log.debug("start-up: URL list staged after %.2f s", time.monotonic() - t0)
        summary = run_build(cfg, startup=time.monotonic() - t0, claimed=claimed)
    print(assemble.summary_text(summary), flush=True)
    log.debug("run ended after %.2f s", time.monotonic() - t0)
    return summary


@error_boundary("build")
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run(args)


def _stop_ray() -> None:
    """Stop a local Ray this driver started, or disconnect from the cluster it attached to."""
    import ray

    if _local_ray:
        # ray.shutdown stops a local Ray's processes one kind after another, each with a SIGTERM and up to a
        # second's wait (~1.3 s in all); nothing of it outlives the driver, so all of them go at once
        t = time.monotonic()
        stop_descendants(spare={_local_ray["watchdog"].pid})  # the watchdog leaves when this process ends
        log.debug("stopped the local Ray in %.2f s", time.monotonic() - t)
    elif ray.is_initialized():
        stopper = threading.Thread(target=ray.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=15)


def _exit_cleanly(code: int) -> None:
    """Exit with ``code`` even if a library left a non-daemon thread behind: a run never hangs after it ends.

    Ray goes first (``_stop_ray``, an exit hook that ``bbst build`` runs too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    run_exit_hooks()
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
