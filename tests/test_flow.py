"""The pipelined build's order (curate/flow.py) and the two facts it rests on: dedup decisions over a key-order
prefix are final, and a shard plan made one run of partitions at a time equals the plan of one pass."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from core import schema
from core.store import Store
from curate import assemble
from curate.dedup import DedupConfig, apply_decisions, dedup_in_process
from curate.flow import BuildFlow, Step


def _random_rows(rng: random.Random, partitions: int):
    keys, shas, phs = [], [], []
    centres = [rng.getrandbits(64) for _ in range(4)]
    for p in range(partitions):
        for i in range(rng.randint(0, 30)):
            keys.append(schema.make_key(p, i))
            shas.append(rng.choice(["a", "b", "c", None, f"u{p}-{i}", f"v{p}-{i}"]))
            h = rng.choice(centres)
            for _ in range(rng.randint(0, 6)):
                h ^= 1 << rng.randint(0, 63)
            phs.append(None if rng.random() < 0.1 else f"{h:016x}")
    return keys, shas, phs


def _decide(keys, shas, phs, cfg, buckets):
    dups, near = dedup_in_process(keys, shas, phs, cfg, buckets=buckets)
    status, dup_of, _ = apply_decisions(keys, ["ok"] * len(keys), [None] * len(keys), dups, near)
    return dict(zip(keys, zip(status, dup_of)))


def test_dedup_decisions_over_a_prefix_are_those_of_the_whole_run():
    """What lets shards be cut while later partitions download: no later row changes an earlier decision."""
    rng = random.Random(0)
    for _ in range(60):
        keys, shas, phs = _random_rows(rng, rng.randint(1, 6))
        cfg = DedupConfig(exact=rng.random() < 0.8, near=rng.random() < 0.8, phash_distance=rng.randint(0, 8))
        whole = _decide(keys, shas, phs, cfg, rng.randint(1, 4))
        cut = rng.randint(0, len(keys))  # keys are generated in key order
        prefix = _decide(keys[:cut], shas[:cut], phs[:cut], cfg, rng.randint(1, 4))
        assert prefix == {k: whole[k] for k in keys[:cut]}


def _final_partition(store: Store, p: int, rng: random.Random) -> None:
    n = rng.randint(0, 25)
    keys = [schema.make_key(p, i) for i in range(n)]
    store.write_parquet(assemble.final_rel(p), pa.table({
        "key": keys, "status": [rng.choice(["ok", "ok", "ok", "too_small"]) for _ in keys],
        "subset": [rng.choice(["style", "content", None]) for _ in keys],
        "_ref_length": [rng.randint(100, 4000) for _ in keys]}))


def test_plan_in_steps_equals_the_plan_of_one_pass(tmp_path):
    rng = random.Random(1)
    for trial in range(20):
        store = Store(str(tmp_path / f"t{trial}"))
        parts = list(range(rng.randint(1, 8)))
        for p in parts:
            _final_partition(store, p, rng)
        samples, size = rng.randint(1, 9), rng.randint(3000, 30_000)
        whole = assemble.plan_from_final(store, parts, samples, size)
        state, stepped, i = None, [], 0
        while i < len(parts):
            j = rng.randint(i + 1, len(parts))
            state, closed = assemble.plan_step(store, state, parts[i:j], samples, size, last=j == len(parts))
            stepped += closed
            i = j
        assert sorted(stepped, key=lambda s: s["name"]) == whole


def _simulate(partitions: dict[int, int], rng: random.Random, committed=(), to_score=None, hold=False):
    """Run a BuildFlow with events in a random (but causally possible) order; returns the log of steps."""
    flow = BuildFlow(partitions, committed=set(committed), to_score=to_score, hold=hold)
    uncommitted = [p for p in sorted(partitions) if p not in set(committed)]
    pending: list[Step] = list(flow.start())
    log: list[tuple[str, object]] = []
    spec_n = 0
    while uncommitted or pending:
        # downloads finish roughly in key order: the first few uncommitted partitions are the candidates
        choices = [("commit", p) for p in uncommitted[:3]] + [("step", s) for s in pending]
        kind, item = rng.choice(choices)
        if kind == "commit":
            uncommitted.remove(item)
            log.append(("commit", item))
            pending += flow.on_commit(item)
            continue
        pending.remove(item)
        log.append((item.kind, item))
        if item.kind == "wave":
            assert all(p in flow.committed for p in flow.parts[:item.count])  # a wave covers committed rows only
            pending += flow.on_wave(item.count)
        elif item.kind == "score":
            pending += flow.on_scored(item.partition)
        elif item.kind == "finalize":
            pending += flow.on_final(item.partition)
        elif item.kind == "plan":
            closed = [{"name": f"s{spec_n + i}"} for i in range(rng.randint(0, 2))]
            spec_n += len(closed)
            pending += flow.on_planned(closed)
        if not pending and not uncommitted and flow.hold:
            pending += flow.release()
    assert flow.done and flow.all_decided
    return flow, log


@pytest.mark.parametrize("seed", range(25))
def test_flow_reaches_every_step_in_key_order(seed):
    rng = random.Random(seed)
    partitions = {p: rng.randint(1, 100) for p in rng.sample(range(50), rng.randint(1, 12))}
    parts = sorted(partitions)
    committed = parts[:rng.randint(0, len(parts))] if rng.random() < 0.3 else []
    to_score = {p for p in parts if rng.random() < 0.7} if rng.random() < 0.5 else None
    hold = to_score is not None and rng.random() < 0.3
    _, log = _simulate(partitions, rng, committed, to_score, hold)
    waves = [s.count for k, s in log if k == "wave"]
    assert waves == sorted(waves) and waves[-1] == len(parts) and len(set(waves)) == len(waves)
    finalized = [s.partition for k, s in log if k == "finalize"]
    assert sorted(finalized) == parts
    scored = [s.partition for k, s in log if k == "score"]
    assert sorted(scored) == sorted(to_score or [])
    planned = [p for k, s in log if k == "plan" for p in s.partitions]
    assert planned == parts  # each partition once, in key order
    assert [s.last for k, s in log if k == "plan"][-1] is True
    for i, (k, s) in enumerate(log):
        if k == "finalize":  # decided (its wave done) and scored before
            assert any(k2 == "wave" and s2.count > parts.index(s.partition) for k2, s2 in log[:i])
            if to_score and s.partition in to_score:
                assert ("score", Step("score", partition=s.partition)) in log[:i]
    if hold:  # nothing is finalized before every partition is scored
        first_final = next(i for i, (k, _) in enumerate(log) if k == "finalize")
        assert all(i < first_final for i, (k, _) in enumerate(log) if k == "score")


def test_shards_are_written_while_later_partitions_still_download():
    partitions = {p: 100 for p in range(10)}
    flow = BuildFlow(partitions)
    steps = flow.start()
    assert steps == []
    steps = flow.on_commit(0)
    assert steps == [Step("wave", count=1)]
    steps = flow.on_wave(1)
    assert steps == [Step("finalize", partition=0)]
    steps = flow.on_final(0)
    assert steps == [Step("plan", partitions=(0,), last=False)]
    assert flow.on_planned([{"name": "style-000000.tar"}]) == [Step("write", spec={"name": "style-000000.tar"})]
    assert len(flow.committed) == 1  # the first shard goes out with nine partitions still to download


def test_waves_are_spaced_geometrically():
    partitions = {p: 10 for p in range(100)}
    flow = BuildFlow(partitions)
    waves = []
    for p in range(100):
        for step in flow.on_commit(p):
            waves.append(step.count)
            flow.on_wave(step.count)
    assert waves[0] == 1 and waves[-1] == 100
    assert len(waves) < 25  # not one per partition
    read = sum(waves)  # each wave reads its whole prefix
    assert read <= (1 + 1 / 0.25) * 100 + 100


def test_a_wave_that_ends_out_of_turn_is_a_bug():
    flow = BuildFlow({0: 1, 1: 1})
    flow.on_commit(0)
    with pytest.raises(RuntimeError, match="wave"):
        flow.on_wave(2)


def test_already_decided_partitions_go_straight_on():
    flow = BuildFlow({0: 5, 1: 5}, committed={0, 1}, decided=True, to_score={1})
    assert flow.start() == [Step("finalize", partition=0), Step("score", partition=1)]
