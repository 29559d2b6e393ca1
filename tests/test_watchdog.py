"""core/watchdog.py: what a command started ends with it, even when the command is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


def _gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes of ``procs`` still running (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_sigkill_of_the_command_ends_what_it_started(tmp_path):
    code = ("import subprocess, sys, time\n"
            "from core.watchdog import guard_descendants\n"
            "guard_descendants()\n"
            # a child, and a grandchild whose parent exits at once (it is orphaned before the command dies)
            "subprocess.Popen(['sleep', '300'])\n"
            "subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 1'])\n"
            "time.sleep(0.3)\n"
            "print('ready', flush=True)\n"
            "time.sleep(300)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert cmd.stdout.readline().strip() == "ready"
        started = [p for p in psutil.Process(cmd.pid).children(recursive=True) if "watchdog" not in " ".join(_cmdline(p))]
        assert sorted(" ".join(_cmdline(p)) for p in started if p.name() == "sleep") == [
            "sleep 1", "sleep 300", "sleep 300"], started
        time.sleep(2.0)  # sh has exited: its `sleep 300` is an orphan, no longer below the command
    finally:
        os.kill(cmd.pid, signal.SIGKILL)
        cmd.wait(30)
    assert _gone(started, 10) == []


@pytest.mark.slow
@pytest.mark.ray
def test_kill_9_of_a_build_leaves_no_local_ray_and_a_rerun_finishes(tmp_path):
    """``bbst build`` starts a local Ray; SIGKILL of the driver ends all of it within seconds (Ray alone leaves its
    agents running for about a minute); the same command then finishes from where the killed run stopped."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pipelines.cli", "build", "--out", str(out)]
    driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            for p in psutil.Process(driver.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
            names = set()
            for p in seen.values():
                try:
                    names.add(p.name())
                except psutil.Error:
                    continue
            if "raylet" in names and any(n.startswith("ray::") for n in names):
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the build ended before its Ray was up"
        time.sleep(1.0)
        for p in psutil.Process(driver.pid).children(recursive=True):
            seen.setdefault(p.pid, p)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    ray_procs = [p for p in seen.values() if "watchdog" not in " ".join(_cmdline(p))]
    assert len(ray_procs) >= 3, ray_procs
    left = _gone(ray_procs, 15)
    assert left == [], [(p.pid, _cmdline(p)) for p in left]
    rerun = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "summary.json").is_file() and (out / "manifest.json").is_file()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


STOP = """
import subprocess, sys, psutil
from core.watchdog import stop_descendants
sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
child, grandchild_parent, spared = (subprocess.Popen(sleep), subprocess.Popen(["sh", "-c", "sleep 60 & wait"]),
                                    subprocess.Popen(sleep))
import time; time.sleep(0.3)
procs = [psutil.Process(p.pid) for p in (child, grandchild_parent, spared)]
procs += psutil.Process(grandchild_parent.pid).children()
stop_descendants(spare={spared.pid})
print(*[p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs])
spared.kill()
"""


def test_stop_descendants_kills_children_and_grandchildren_at_once_but_the_spared():
    # in a process of its own: it stops every descendant of the process that calls it
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-c", STOP], check=False, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.split() == ["False", "False", "True", "False"], result.stderr
    assert time.monotonic() - t0 < 30
