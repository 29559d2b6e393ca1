"""A local Ray shared by every test that needs one (Ray start-up costs seconds, so it is started once)."""

from __future__ import annotations

import importlib.util

import pytest
from loopback import free_port

# set by ray_local when the shared Ray runs a dashboard (its job-submission API): "http://127.0.0.1:PORT"
DASHBOARD: dict[str, str | None] = {"url": None, "why_not": None}


@pytest.fixture(scope="session")
def ray_local():
    """A new local Ray (``address="local"``: never an existing cluster) once per test session; yields the GCS address so subprocesses can attach.

    With ``ray[default]`` installed the dashboard runs too (bound to loopback), so ``ray job submit`` can be
    tested against this same cluster; without it the job test skips and every other test is unaffected.
    """
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        with_dashboard = importlib.util.find_spec("aiohttp_cors") is not None  # a ray[default] dependency
        if with_dashboard:
            ctx = ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                           dashboard_port=free_port(), log_to_driver=False)
            url = ctx.dashboard_url
            DASHBOARD["url"] = f"http://{url}" if url else None
            if not url:
                DASHBOARD["why_not"] = "the Ray dashboard did not start (see the Ray logs)"
        else:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            DASHBOARD["why_not"] = "ray[default] (the dashboard and its job API) is not installed"
    yield ray.get_runtime_context().gcs_address
    # no shutdown here: another module may hold the same session-scoped Ray; Ray shuts down at exit


def job_working_dir(dest) -> str:
    """A copy of the project's sources for ``ray job submit --working-dir``, unique to this test run.

    Ray stores an uploaded working dir in the cluster under the hash of its contents and skips the upload when a
    package of that hash is known; on a machine that has already run these tests, a cluster can then hand its
    nodes a package reference it never received. A marker file with a fresh id gives every run its own hash.
    """
    import shutil
    import uuid
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    root = Path(dest) / "job-src"
    for name in ("curate", "classifier", "train", "pipelines"):
        shutil.copytree(repo / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(repo / "pyproject.toml", root / "pyproject.toml")
    (root / ".bbst-test-run").write_text(uuid.uuid4().hex)
    return str(root)


def submit_job(cmd: list[str], cwd, timeout: float = 480, tries: int = 20):
    """Run a ``ray job submit`` command; while the cluster's dashboard agent is still starting (a busy machine),
    the job API answers "No available agent" and the submission is repeated."""
    import subprocess
    import time

    for _ in range(tries):
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if "No available agent" not in proc.stderr + proc.stdout:
            break
        time.sleep(2)
    return proc
