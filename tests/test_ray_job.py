"""`ray job submit` runs pipelines/build_bbst.py unchanged against a running Ray cluster."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from ray_local import DASHBOARD, job_working_dir, ray_local, submit_job  # noqa: F401 - fixture


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_build_unchanged(ray_local, tmp_path):  # noqa: F811
    if not DASHBOARD["url"]:
        pytest.skip(f"no job API: {DASHBOARD['why_not']}")
    ray_cli = Path(sys.executable).parent / "ray"
    if not ray_cli.exists():
        ray_cli = shutil.which("ray")
    out = tmp_path / "out"
    # the job's driver runs in a copy of the working dir that Ray uploads (honouring .gitignore) and
    # attaches to this cluster through RAY_ADDRESS; the script is not told it runs as a job
    cmd = [str(ray_cli), "job", "submit", "--address", DASHBOARD["url"], "--working-dir", job_working_dir(tmp_path), "--",
           sys.executable, "pipelines/build_bbst.py", "--out", str(out), "--demo-images", "6", "--min-side", "96",
           "--set", "progress_interval_s=0", "--set", "report=false"]
    proc = submit_job(cmd, cwd=tmp_path)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "succeeded" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"] is True and summary["rows_in"] == sum(summary["counts_by_status"].values())
    assert summary["counts_by_status"]["ok"] > 0 and summary["classifier"]["demo"] is True
    assert "bbst build:" in proc.stdout  # the job's own output (the summary) comes back through the job logs
