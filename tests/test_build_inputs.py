"""Every bad input of a build is one line naming its flag, exit code 2, before Ray starts; foreign folders survive."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core import synthetic
from core.store import Store
from curate import outputs
from curate.build_config import BuildConfig
from pipelines import build_bbst

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def urls(tmp_path) -> Path:
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"]}), path)
    return path


def _error(argv: list[str], capsys) -> str:
    code = build_bbst.main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.startswith("bbst build: error: ")
    return err


def test_bad_inputs_name_their_flag(tmp_path, urls, capsys, monkeypatch):
    monkeypatch.setattr(build_bbst, "_init_ray", lambda *a: pytest.fail("an input error must be found before Ray"))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    (tmp_path / "nolists").mkdir()
    cases = [
        (["--urls", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "o1")], "--urls"),
        (["--urls", str(tmp_path / "nolists"), "--out", str(tmp_path / "o2")], "--urls"),
        (["--urls", str(urls), "--out", str(afile)], "--out"),
        (["--urls", str(urls), "--out", str(tmp_path / "o3"), "--classifier", str(tmp_path / "nope")], "--classifier"),
        (["--urls", str(urls), "--out", str(tmp_path / "o4"), "--min-side", "-5"], "--min-side"),
        (["--urls", str(urls), "--out", str(tmp_path / "o5"), "--set", "ray.unit_rows=0"], "unit_rows"),
        (["--urls", str(urls), "--out", str(tmp_path / "o6"), "--set", "shards.target_samples=0"], "target_samples"),
        (["--rescore", str(tmp_path / "nolists"), "--classifier", str(urls)], "--rescore"),
    ]
    for argv, flag in cases:
        err = _error(argv, capsys)
        assert flag in err.splitlines()[0], (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    for name in ("o1", "o2", "o3", "o4", "o5", "o6"):
        assert not (tmp_path / name).exists(), "nothing is written for a refused run"


def test_a_folder_of_images_given_to_urls_suggests_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(build_bbst, "_init_ray", lambda *a: pytest.fail("an input error must be found before Ray"))
    photos = tmp_path / "photos"
    photos.mkdir()
    synthetic.photo_like(40, 30, seed=1).save(photos / "a.jpg")
    synthetic.photo_like(40, 30, seed=2).save(photos / "b.png")
    err = _error(["--urls", str(photos), "--out", str(tmp_path / "o")], capsys)
    first, hint = err.strip().splitlines()
    assert first.startswith(f"bbst build: error: --urls {photos}: 2 image files, not a URL list"), err
    assert hint == f"  hint: to build from image files on disk, pass --images {photos} instead of --urls"
    err = _error(["--urls", str(photos / "a.jpg"), "--out", str(tmp_path / "o")], capsys)
    assert "a.jpg: an image file, not a URL list" in err and "--images" in err
    assert not (tmp_path / "o").exists()


def test_foreign_folder_is_refused_and_kept(tmp_path, urls, capsys):
    user = tmp_path / "user"
    (user / "shards").mkdir(parents=True)
    (user / "shards" / "mine.tar").write_bytes(b"mine")
    (user / "notes.txt").write_text("keep me")
    err = _error(["--urls", str(urls), "--out", str(user)], capsys)
    assert "--out" in err and "not a bbst output" in err
    assert (user / "shards" / "mine.tar").read_bytes() == b"mine" and (user / "notes.txt").exists()
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "shards"]
    err = _error(["--out", str(user), "--demo-images", "2"], capsys)  # the demo refuses it too
    assert "not a bbst output" in err


def test_resume_after_the_list_changed_is_refused(tmp_path, urls, capsys):
    out = tmp_path / "out"
    cfg = BuildConfig(urls=str(urls), out=str(out))
    outputs.claim(Store(str(out)), outputs.build_fingerprint(cfg))  # what a killed run leaves behind
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/b.jpg", "http://127.0.0.1:9/c.jpg"]}), urls)
    err = _error(["--urls", str(urls), "--out", str(out)], capsys)
    assert "unfinished build" in err and "urls.parquet" in err and "changed" in err
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/d.jpg"]}), other)
    err = _error(["--urls", str(other), "--out", str(out)], capsys)
    assert "urls.parquet" in err and "other.parquet" in err


@pytest.mark.parametrize("make", ["missing_urls", "out_is_file"])
def test_script_exits_in_seconds_without_traceback(tmp_path, urls, make):
    out = tmp_path / "out"
    if make == "out_is_file":
        out.write_text("x")
        argv = ["--urls", str(urls), "--out", str(out)]
    else:
        argv = ["--urls", str(tmp_path / "missing.csv"), "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "build_bbst.py"), *argv], check=False,
                          capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bbst build: error: ") and "Traceback" not in proc.stderr
    assert ("--urls" if make == "missing_urls" else "--out") in lines[0]


def _run_script_watching_descendants(argv: list[str], env_extra: dict[str, str] | None = None,
                                     ) -> tuple[subprocess.CompletedProcess, list[str], dict[str, dict]]:
    """Run the build script with ``argv``; returns its result, the descendants still alive 10 s after it exited
    (none expected) and the environment of each process name seen while it ran."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env_extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "build_bbst.py"), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # every descendant seen while it runs (Ray's agents leave the process tree if their raylet is killed,
    # and rename themselves, so only watching the tree finds them)
    seen: dict[int, psutil.Process] = {}
    environs: dict[str, dict] = {}
    root = psutil.Process(proc.pid)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            for child in root.children(recursive=True):
                seen.setdefault(child.pid, child)
                with contextlib.suppress(psutil.Error):
                    env = child.environ()
                    if env:  # a process caught while it starts can show an empty environment: look again later
                        environs.setdefault(child.name(), env)
        except psutil.Error:
            pass
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=30)

    def alive() -> list[str]:
        found = []
        for p in seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(f"{p.pid} {p.name()}")
            except psutil.Error:
                pass
        return found

    wait = time.monotonic() + 10
    while alive() and time.monotonic() < wait:
        time.sleep(0.2)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), alive(), environs


def test_script_run_leaves_no_ray_process_behind(tmp_path):
    """A finished command-line build exits, and every process of the local Ray it started goes with it; Ray's
    processes run with the build's settings (a value the user set wins)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(synthetic.encode(synthetic.photo_like(96, 80, seed=i), "JPEG"))
    out = tmp_path / "out"
    result, alive, environs = _run_script_watching_descendants(
        ["--images", str(images), "--out", str(out), "--min-side", "64", "--set", "report=false"],
        env_extra={"MALLOC_ARENA_MAX": "3"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "summary.json").exists() and "ok=3" in result.stdout
    assert len(environs) >= 3  # GCS, raylet, workers, agents...
    assert not alive
    raylet = environs["raylet"]  # and what it starts: workers and agents inherit its environment
    assert (raylet["RAY_USAGE_STATS_ENABLED"], raylet["RAY_enable_metrics_collection"], raylet["MALLOC_ARENA_MAX"]) \
        == ("0", "0", "3")


def test_list_error_found_while_ray_starts_is_one_line_and_leaves_no_process(tmp_path):
    """The URL list is read while Ray starts: its errors (here: no rows) are still one line, exit code 2, and the
    local Ray started meanwhile goes with the command."""
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), empty)
    result, alive, _ = _run_script_watching_descendants(["--urls", str(empty), "--out", str(tmp_path / "out")])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("bbst build: error: --urls ") and "no rows" in lines[0]
    assert not alive


def test_a_ray_address_where_no_cluster_answers_is_one_line_before_anything_is_written(tmp_path):
    """``ray.init`` retries an unreachable RAY_ADDRESS for many minutes; the build says so at once instead."""
    from loopback import free_port

    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\n")
    address = f"127.0.0.1:{free_port()}"
    t = time.monotonic()
    result = subprocess.run([sys.executable, str(Path(build_bbst.__file__)), "--urls", str(urls), "--out",
                             str(tmp_path / "out")], check=False, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RAY_ADDRESS": address,
                                 "PYTHONPATH": str(Path(build_bbst.__file__).resolve().parents[1])})
    assert time.monotonic() - t < 60
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"bbst build: error: RAY_ADDRESS={address}: no Ray cluster answers there")
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
