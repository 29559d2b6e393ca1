"""End the processes a command started when the command dies, even by SIGKILL.

A local Ray started by ``ray.init()`` shares the driver's fate only in part: the kernel stops the raylet and the GCS
with it, but the raylet's agents first try to report the death to the (dead) GCS and linger for about a minute.
:func:`guard_descendants` starts a small watchdog process holding the read end of a pipe from the command. It notes
the command's descendants as they come and go; when the pipe closes (the command exited or was killed: the
kernel closes its end either way), it stops every noted process still running (SIGTERM, then SIGKILL), so
nothing the command started outlives it. The watchdog runs in its own session, out of reach of the terminal's
Ctrl-C, and never signals a process whose pid was reused by something else (start times are compared).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

POLL_S = 0.5  # how often the watchdog notes the command's descendants
GRACE_S = 2.0  # how long noted processes get to exit after SIGTERM before SIGKILL


def guard_descendants() -> subprocess.Popen:
    """Start the watchdog over this process's descendants; it acts when this process ends, however it ends."""
    return subprocess.Popen([sys.executable, "-m", "core.watchdog", str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            close_fds=True, env={**os.environ, "PYTHONPATH": _import_path()})


def stop_descendants(spare: Iterable[int] = ()) -> None:
    """SIGKILL every descendant of this process at once (but the pids in ``spare``) and wait until none runs.

    For the end of a command whose processes keep no state worth a graceful exit (a local Ray: its state is in the
    GCS's memory, its object store an unlinked file), this takes milliseconds where stopping them one kind after
    another with SIGTERM and a grace period takes seconds. A killed process whose parent was killed too waits as a
    zombie until init reaps it: that counts as stopped.
    """
    import psutil

    spare = set(spare)
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if p.pid not in spare]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue
    deadline = time.monotonic() + 5
    while any(_running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)


def _running(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _import_path() -> str:
    """The folder this package is imported from, ahead of any PYTHONPATH (so the watchdog runs this code)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def _note(parent, noted: dict[int, tuple]) -> None:
    import psutil

    try:
        children = parent.children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        if child.pid == os.getpid():
            continue
        try:
            noted.setdefault(child.pid, (child, child.create_time()))
        except psutil.Error:
            continue


def _stop(noted: dict[int, tuple]) -> None:
    import psutil

    alive = []
    for proc, started in noted.values():
        try:
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                proc.terminate()
                alive.append(proc)
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            continue


def watch(pid: int) -> None:
    """The watchdog's loop: note ``pid``'s descendants until stdin closes, then stop the ones still running."""
    import psutil

    closed = threading.Event()

    def wait_for_eof() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    noted: dict[int, tuple] = {}
    try:
        parent = psutil.Process(pid)
    except psutil.Error:
        return
    while not closed.wait(POLL_S):
        _note(parent, noted)
    time.sleep(0.1)  # what the command's own shutdown stops need not be signalled
    _stop(noted)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
