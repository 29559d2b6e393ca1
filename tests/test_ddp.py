"""Multi-process training on CPU: two torchrun ranks over gloo, and the same function under Ray Train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray_local import ray_local  # noqa: F401 - session fixture

from train.checkpoint import latest_checkpoint, load_checkpoint
from train.demo_shards import write_demo_shards

REPO = Path(__file__).resolve().parent.parent
# uneven shards: per-epoch slot totals differ (5..7 samples), so balance must drop a remainder to stay in step
CONTENT = [3, 3, 2, 4]


def _config(tmp_path: Path, name: str, **sections) -> Path:
    root = write_demo_shards(tmp_path / "shards", {"content": CONTENT, "style": [3, 3, 3]}, size=(96, 96))
    cfg = {
        "data": {"root": str(root), "crop_size": 64, "short_side_min": 64, "short_side_max": 96},
        "loader": {"batch_size": 2, "num_workers": 1, "open_shards": 2, "shuffle_buffer": 2, "seed": 5},
        "model": {"name": "neat_tiny", "kwargs": {}},
        "schedule": {"max_steps": 4},
        "logging": {"dir": str(tmp_path / name), "log_every": 1, "image_every": 0},
        "checkpoint": {"every": 4, "keep": 0},
        "threads": 1,
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check_two_rank_run(run_dir: Path, steps: int) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    per_rank: list[list[tuple[int, str]]] = [[], []]
    for r in records:
        assert len(r["content_keys"]) == 2  # both ranks logged a batch at every step
        for rank in range(2):
            assert len(r["content_keys"][rank]) == 2  # equal, full batches on both ranks
            per_rank[rank] += [(int(r["epoch"]), k) for k in r["content_keys"][rank]]
    # within an epoch no sample is seen by both ranks (or twice by one)
    both = per_rank[0] + per_rank[1]
    assert len(both) == len(set(both))
    assert {e for e, _ in both} == {0, 1}  # the run crossed an epoch boundary without a hang
    ck = load_checkpoint(latest_checkpoint(str(run_dir / "checkpoints")))
    assert ck["world_size"] == 2 and [s["rank"] for s in ck["loader"]] == [0, 1]


def _check_epochs(run_dir: Path) -> list[tuple[int, str]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(int(r["epoch"]), k) for r in records for rank in r["content_keys"] for k in rank]


@pytest.mark.slow
def test_two_rank_torchrun_ddp_on_cpu(tmp_path):
    cfg = _config(tmp_path, "ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "pipelines" / "train_model.py"), "--config", str(cfg), "--launcher", "torchrun",
                           "--log-level", "WARNING"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_two_rank_run(tmp_path / "ddp", 4)

    # elastic: the two-rank run continues on one process; the rest of its epoch is dealt to the new layout
    from pipelines.train_model import main

    run = tmp_path / "ddp"
    before = _check_epochs(run)
    main(["--resume", str(run), "--set", "schedule.max_steps=7", "--log-level", "WARNING"])
    after = [(int(r["epoch"]), k) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["step"] > 4 for k in r["content_keys"][0]]
    epoch = max(e for e, _ in before)
    assert not {k for e, k in after if e == epoch} & {k for e, k in before if e == epoch}  # no repeats


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_runs_the_same_training_function(tmp_path, ray_local):  # noqa: F811
    from pipelines.train_model import main

    # one worker keeps Ray's start-up inside the test budget; the two-rank path is covered by torchrun above
    cfg = _config(tmp_path, "ray", distributed={"num_workers": 1, "use_gpu": False}, schedule={"max_steps": 2})
    result = main(["--config", str(cfg), "--launcher", "ray", "--log-level", "WARNING"])
    assert result["error"] is None
    records = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    ck = load_checkpoint(latest_checkpoint(str(tmp_path / "ray" / "checkpoints")))
    assert ck["step"] == 2 and ck["world_size"] == 1 and ck["config"]["distributed"]["num_workers"] == 1
