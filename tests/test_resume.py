"""Kill-and-resume: SIGKILL the build mid-run (staging, then shard writing), rerun, compare with a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_local import ray_local  # noqa: F401 - session fixture
from test_build_bbst import check_invariants, read_meta

from core import schema
from curate.demo import demo_corpus
from pipelines import build_bbst

REPO = Path(__file__).resolve().parents[1]
# timing columns differ between runs by nature; everything else must be identical
VOLATILE = {"download_seconds", "elapsed", "fetch_seconds"}


def _args(urls: Path, out: Path) -> list[str]:
    return ["--urls", str(urls), "--out", str(out), "--min-side", "64", "--allow-private-network",
            "--set", "reader.rows_per_partition=5", "--set", "shards.target_samples=4",
            "--set", "progress_interval_s=0", "--set", "download.timeout=3"]


def _run_killed(args: list[str], env_hook: str, n: int, gcs_address: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{env_hook: str(n)}, RAY_ADDRESS=gcs_address,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "build_bbst.py"), *args], check=False, env=env,
                          capture_output=True, text=True, timeout=240)


def _comparable(out: Path) -> list[dict]:
    rows = read_meta(out).to_pylist()
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def _shard_contents(out: Path) -> dict[str, list[str]]:
    res = {}
    for tar in sorted((out / schema.SHARDS_DIR).glob("*.tar")):
        with tarfile.open(tar) as tf:
            res[tar.name] = sorted(m.name for m in tf.getmembers())
    return res


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume-corpus")
    with demo_corpus(tmp, n_images=18, min_side=64, seed=3) as urls:
        yield urls


@pytest.fixture(scope="module")
def clean_run(corpus, tmp_path_factory, ray_local):  # noqa: F811
    out = tmp_path_factory.mktemp("clean") / "out"
    summary = build_bbst.main(_args(corpus, out))
    check_invariants(out)
    return out, summary


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("hook,n", [("BBST_KILL_AFTER_PARTITIONS", 2), ("BBST_KILL_AFTER_SHARDS", 1)])
def test_sigkill_then_rerun_equals_uninterrupted_run(corpus, clean_run, tmp_path, ray_local, hook, n):  # noqa: F811
    clean_out, clean_summary = clean_run
    out = tmp_path / "out"
    proc = _run_killed(_args(corpus, out), hook, n, ray_local)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    staging = out / schema.STAGING
    assert not (out / schema.SUMMARY_FILE).exists()
    committed = list((staging / "rows").glob("part-*.parquet"))
    assert len(committed) >= n
    # only complete files are visible under their final names
    for tar in (out / schema.SHARDS_DIR).glob("*.tar") if (out / schema.SHARDS_DIR).exists() else []:
        with tarfile.open(tar) as tf:
            tf.getmembers()
    for part in committed:
        pq.read_table(part)

    summary = build_bbst.main(_args(corpus, out))
    check_invariants(out)
    assert _comparable(out) == _comparable(clean_out)
    assert _shard_contents(out) == _shard_contents(clean_out)
    for key in ("rows_in", "counts_by_status", "counts_by_subset", "shards", "shard_bytes"):
        assert summary[key] == clean_summary[key], key
