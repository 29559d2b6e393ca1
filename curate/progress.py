"""Periodic progress lines for long runs: rows done, images/s, success ratio and the most common errors."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable

log = logging.getLogger("bbst.progress")


class ProgressMeter:
    """Accumulates per-row outcomes and logs one summary line at most every ``interval_s`` seconds.

    Fed with the ``status`` and ``error`` columns of each finished batch; cheap enough to call per batch.
    """

    def __init__(self, total: int | None = None, interval_s: float = 10.0, top_errors: int = 3,
                 label: str = "download") -> None:
        self.total = total
        self.interval_s = interval_s
        self.top_errors = top_errors
        self.label = label
        self.start = time.monotonic()
        self._last_log = self.start
        self.rows = 0
        self.ok = 0
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()

    def update(self, statuses: Iterable[str], errors: Iterable[str | None] | None = None) -> None:
        statuses = list(statuses)
        self.rows += len(statuses)
        self.statuses.update(statuses)
        self.ok = self.statuses.get("ok", 0)
        if errors is not None:
            for status, err in zip(statuses, errors):
                if status != "ok" and err:
                    # the first clause of an error names its kind; the rest (URLs, byte counts) varies per row
                    self.errors[f"{status}: {str(err).split(':')[0][:80]}"] += 1
        now = time.monotonic()
        if self.interval_s >= 0 and now - self._last_log >= self.interval_s:
            self._last_log = now
            log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        done = f"{self.rows}/{self.total}" if self.total is not None else str(self.rows)
        ratio = self.ok / self.rows if self.rows else 0.0
        top = ", ".join(f"{k} x{v}" for k, v in self.errors.most_common(self.top_errors)) or "none"
        return (f"[{self.label}] rows {done} | {self.rows / elapsed:.1f} rows/s | {self.ok / elapsed:.1f} images/s"
                f" | success {ratio:.1%} | top errors: {top}")
