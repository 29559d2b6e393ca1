"""Progress display: a live bar on a terminal, timed lines otherwise, errors grouped by status."""

from __future__ import annotations

import io
import logging

from core.progress import ProgressMeter


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_bar_has_percent_rate_eta_and_grouped_errors():
    out = _Tty()
    meter = ProgressMeter(total=10, label="download", stream=out, redraw_s=0)
    meter.update(["ok", "too_small", "too_small", "download_error"],
                 ["", "short side 763", "short side 608", "HTTP 404"])
    meter.close()
    text = out.getvalue()
    assert "\r" in text and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert "40%" in last and "4/10" in last and "/s" in last and "ETA" in last
    # one entry per status with its count and one example, not one per distinct message
    assert "too_small x2 (e.g. short side 763)" in last and "download_error x1" in last
    assert last.index("too_small") < last.index("download_error")


def test_pipe_gives_timed_lines_with_the_same_figures(caplog):
    out = io.StringIO()
    meter = ProgressMeter(total=4, label="shards", unit="shards", stream=out, interval_s=0)
    with caplog.at_level(logging.INFO, logger="bbst.progress"):
        meter.add(2)
        meter.add(2)
        meter.close()
    assert out.getvalue() == ""  # no bar characters in a pipe
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "shards 4/4 (100%)" in lines[-1] and "ETA" in lines[-1]


def test_interval_limits_lines():
    meter = ProgressMeter(total=None, stream=io.StringIO(), interval_s=3600)
    meter.add(5, {"ok": 4, "not_image": 1}, {"not_image": "HTML page"})
    assert meter.top() == "not_image x1 (e.g. HTML page)"
    assert "rows 5 |" in meter.line()
