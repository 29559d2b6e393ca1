"""How a build starts and stops: Ray's options for a local Ray, the URL list read while Ray starts, the stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from pipelines import build_bbst

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` recorded instead of run; returns the calls (kwargs and the environment Ray would inherit)."""
    calls: list[dict] = []

    def init(**kwargs):
        calls.append({"kwargs": kwargs, "env": dict(build_bbst.os.environ)})

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(build_bbst, "prewarm", lambda modules: None)
    monkeypatch.setattr(build_bbst, "guard_descendants", lambda: "watchdog")
    monkeypatch.setattr(build_bbst, "_local_ray", {})
    for key in build_bbst.RAY_ENV:
        monkeypatch.delenv(key, raising=False)
    return calls


def test_local_ray_starts_without_metrics_usage_stats_dashboard_or_extra_arenas(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    build_bbst._init_ray()
    (call,) = fake_ray
    assert call["kwargs"]["include_dashboard"] is False
    assert {k: call["env"][k] for k in build_bbst.RAY_ENV} == {
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0", "MALLOC_ARENA_MAX": "2"}
    assert build_bbst._local_ray == {"watchdog": "watchdog"}  # guarded, and stopped at exit as a local Ray


def test_user_settings_win_and_an_attached_cluster_keeps_its_own(fake_ray, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_enable_metrics_collection", "1")
    build_bbst._init_ray()
    assert fake_ray[0]["env"]["RAY_enable_metrics_collection"] == "1"

    monkeypatch.setattr(build_bbst, "_local_ray", {})
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED", raising=False)
    build_bbst._init_ray()
    assert "RAY_USAGE_STATS_ENABLED" not in fake_ray[1]["env"]
    assert build_bbst._local_ray == {}  # not ours to stop: ray.shutdown only disconnects


def test_head_start_returns_the_result_or_raises_the_error():
    assert build_bbst._head_start(sum, [1, 2, 3])() == 6

    def fail():
        raise ValueError("no rows")

    wait = build_bbst._head_start(fail)
    with pytest.raises(ValueError, match="no rows"):
        wait()


def test_url_list_is_staged_while_ray_starts(tmp_path, monkeypatch):
    """run() cuts the list into partitions before ray.init returns; run_build then finds them staged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(5)]}), urls)
    out = tmp_path / "out"
    seen = {}

    def run_build(cfg, startup=0.0, extra=None, claimed=None):
        seen["partitions"] = (out / "_staging" / "partitions.json").read_text()
        return {"rows_in": 5}

    monkeypatch.setattr(build_bbst, "_init_ray", lambda verbose=False: None)
    monkeypatch.setattr(build_bbst, "run_build", run_build)
    monkeypatch.setattr(build_bbst.assemble, "summary_text", lambda summary: "")
    args = build_bbst.build_parser().parse_args(["--urls", str(urls), "--out", str(out)])
    build_bbst.run(args)
    assert json.loads(seen["partitions"]) == {"0": 5}


STOP_SCRIPT = """
import subprocess, sys, psutil
from pipelines import build_bbst
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
ray_process, watchdog = subprocess.Popen(sleep), subprocess.Popen(sleep)
ray_ps, watchdog_ps = psutil.Process(ray_process.pid), psutil.Process(watchdog.pid)
build_bbst._local_ray["watchdog"] = watchdog
build_bbst._stop_local_ray()
alive = [p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in (ray_ps, watchdog_ps)]
print(*alive)
watchdog.kill()
"""


def test_stop_kills_every_descendant_but_the_watchdog():
    # in a process of its own: the stop takes every descendant, and this test process has others (a session Ray)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", STOP_SCRIPT], check=False, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.stdout.split() == ["False", "True"], result.stderr  # killed (a zombie at most); the watchdog spared
