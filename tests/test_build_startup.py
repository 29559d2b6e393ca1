"""How a build starts: the URL list read while Ray starts, and the environment of a local Ray (Ray itself faked)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from core import cli
from curate.outputs import InputError
from pipelines import build_bbst


@pytest.fixture
def start(tmp_path, monkeypatch):
    """``run(args)`` of a build with ``ray.init`` and the build itself recorded instead of run."""
    seen: dict = {"guarded": False}

    def init(**kwargs):
        seen.update(init=kwargs, env=dict(os.environ))

    def guard():
        seen["guarded"] = True

    def run_build(cfg, startup=0.0, extra=None, claimed=None):
        seen["staged"] = (tmp_path / "out" / "_staging" / "partitions.json").exists()
        return {}

    monkeypatch.setattr(os, "environ", os.environ.copy())  # what the build sets for Ray stays in this test
    for key in build_bbst.RAY_ENV:
        os.environ.pop(key, None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(build_bbst, "prewarm", lambda modules: None)
    monkeypatch.setattr(build_bbst, "guard_descendants", guard)
    monkeypatch.setattr(build_bbst, "_local_ray", {})
    monkeypatch.setattr(cli, "_EXIT_HOOKS", [])  # the stop of the faked Ray is registered, never run
    monkeypatch.setattr(build_bbst, "run_build", run_build)
    monkeypatch.setattr(build_bbst.assemble, "summary_text", lambda summary: "")

    def go(rows: int = 5) -> dict:
        urls = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": pa.array([f"http://127.0.0.1:9/{i}.jpg" for i in range(rows)],
                                                 pa.string())}), urls)
        build_bbst.run(build_bbst.build_parser().parse_args(["--urls", str(urls), "--out", str(tmp_path / "out")]))
        return seen

    return go


def test_local_ray_starts_guarded_without_metrics_usage_stats_dashboard_or_extra_arenas(start):
    seen = start()
    assert seen["init"]["include_dashboard"] is False
    assert {k: seen["env"][k] for k in build_bbst.RAY_ENV} == {
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0", "MALLOC_ARENA_MAX": "2"}
    assert seen["guarded"]  # its processes end with the driver, however it ends


def test_the_stop_of_a_started_ray_is_an_exit_hook(start):
    start()
    assert len(cli._EXIT_HOOKS) == 1  # its stop: `bbst build` (exit_with) and the script both run it


def test_url_list_is_staged_while_ray_starts(start):
    assert start()["staged"]  # run_build finds the input partitions written


def test_a_list_error_found_while_ray_starts_is_raised(start):
    with pytest.raises(InputError, match="no rows"):
        start(rows=0)


def test_user_values_win(start):
    os.environ["MALLOC_ARENA_MAX"] = "4"
    assert start()["env"]["MALLOC_ARENA_MAX"] == "4"


def test_an_attached_cluster_keeps_its_own_environment(start):
    import socket

    with socket.socket() as gcs:  # something answers at the address (the build checks that before ray.init)
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs.getsockname()[1]}"
        seen = start()
    assert not set(build_bbst.RAY_ENV) & set(seen["env"])
    assert not seen["guarded"]  # not this driver's processes: at exit it only disconnects
