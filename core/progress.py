"""Progress of a long phase: a live bar on a terminal, a timed line otherwise; errors grouped by status.

Both forms show the same figures: done/total, percent, rate, ETA, success ratio and the most common failure
statuses with one example message each. Also the driver's own I/O counter, which shows that no image byte
passes through it.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping

log = logging.getLogger("bbst.progress")


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressMeter:
    """Accumulates per-row outcomes of one phase and shows them.

    ``stream`` is where the bar goes (stderr by default); when it is a terminal the bar is redrawn in place at
    most every ``redraw_s`` seconds, else one log line is written every ``interval_s`` seconds (negative: never).
    Feed it either rows (``update(statuses, errors)``) or ready counts (``add(n, statuses=..., examples=...)``).
    """

    def __init__(self, total: int | None = None, interval_s: float = 10.0, top_errors: int = 3,
                 label: str = "download", unit: str = "rows", stream=None, tty: bool | None = None,
                 redraw_s: float = 0.2) -> None:
        self.total = total
        self.interval_s = interval_s
        self.top_errors = top_errors
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.redraw_s = redraw_s
        self.start = time.monotonic()
        self._last_log = self.start
        self._last_draw = 0.0
        self._drawn = False
        self.rows = 0
        self.ok = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    # -- input -------------------------------------------------------------------------------------------
    def update(self, statuses: Iterable[str], errors: Iterable[str | None] | None = None) -> None:
        statuses = list(statuses)
        examples: dict[str, str] = {}
        for status, err in zip(statuses, errors if errors is not None else [None] * len(statuses)):
            if status != "ok" and err and status not in examples:
                examples[status] = str(err)
        self.add(len(statuses), collections.Counter(statuses), examples)

    def add(self, n: int, statuses: Mapping[str, int] | None = None, examples: Mapping[str, str] | None = None,
            ) -> None:
        self.rows += n
        if statuses is None:
            statuses = {"ok": n}
        self.statuses.update(statuses)
        self.ok = self.statuses.get("ok", 0)
        for s, e in (examples or {}).items():
            self.examples.setdefault(s, e)
        self._show()

    def _show(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if final or now - self._last_draw >= self.redraw_s:
                self._last_draw = now
                self.stream.write("\r\x1b[K" + self.bar())
                self.stream.flush()
                self._drawn = True
        elif self.interval_s >= 0 and (now - self._last_log >= self.interval_s):
            self._last_log = now
            log.info(self.line())

    def close(self) -> None:
        """Finish the phase: the final bar (with a newline) on a terminal, the final line otherwise."""
        if self.tty:
            self._show(final=True)
            self.stream.write("\n")
            self.stream.flush()
        else:
            log.info(self.line())

    # -- figures -----------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def rate(self) -> float:
        return self.rows / self.elapsed()

    def eta(self) -> float | None:
        if self.total is None or not self.rows:
            return None
        return max(self.total - self.rows, 0) / self.rate()

    def percent(self) -> float | None:
        return None if not self.total else 100.0 * self.rows / self.total

    def top(self) -> str:
        """Failure statuses by count, each with one example message: ``too_small x12 (short side 763)``."""
        failures = [(s, c) for s, c in self.statuses.most_common() if s != "ok" and c]
        parts = []
        for s, c in failures[: self.top_errors]:
            example = self.examples.get(s)
            parts.append(f"{s} x{c}" + (f" (e.g. {example[:60]})" if example else ""))
        return ", ".join(parts) or "none"

    def line(self) -> str:
        done = f"{self.rows}/{self.total}" if self.total is not None else str(self.rows)
        pct = f" ({self.percent():.0f}%)" if self.percent() is not None else ""
        ratio = self.ok / self.rows if self.rows else 0.0
        return (f"[{self.label}] {self.unit} {done}{pct} | {self.rate():.1f} {self.unit}/s | "
                f"elapsed {_duration(self.elapsed())} | ETA {_duration(self.eta())} | ok {ratio:.1%} | "
                f"top errors: {self.top()}")

    def bar(self, width: int = 24) -> str:
        pct = self.percent()
        filled = int(width * min(pct, 100.0) / 100) if pct is not None else 0
        gauge = "#" * filled + "-" * (width - filled)
        done = f"{self.rows}/{self.total}" if self.total is not None else str(self.rows)
        head = f"{self.label:>10} [{gauge}] {pct:3.0f}% " if pct is not None else f"{self.label:>10} "
        ratio = self.ok / self.rows if self.rows else 0.0
        text = (f"{head}{done} {self.unit} | {self.rate():.1f}/s | ETA {_duration(self.eta())} | "
                f"ok {ratio:.0%} | {self.top()}")
        return text[:200]


def driver_io_bytes() -> int | None:
    """This process's read + write syscall bytes so far (Linux), to show that the driver moves no image bytes."""
    try:
        with open("/proc/self/io") as f:
            counters = dict(line.split(": ") for line in f.read().splitlines())
        return int(counters["rchar"]) + int(counters["wchar"])
    except (OSError, KeyError, ValueError):
        return None
