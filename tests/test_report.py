"""The HTML run report: sections, inline histograms and thumbnails; rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from curate import schema, synthetic
from curate.report import render_report


def _inputs(with_scores: bool):
    n = 12
    statuses = ["ok"] * 8 + ["too_small", "download_error", "duplicate", "corrupt"]
    meta = pa.table({
        "key": [schema.make_key(0, i) for i in range(n)],
        "status": statuses,
        "original_width": [1200 + 10 * i for i in range(10)] + [None, None],
        "original_height": [1024 + 5 * i for i in range(10)] + [None, None],
        "subset": ["style", "content"] * 4 + [None] * 4,
        "score": [0.1 * i for i in range(8)] + [None] * 4 if with_scores else [None] * n,
    })
    counts = {s: statuses.count(s) for s in schema.STATUSES}
    summary = {"out": "/tmp/x<y>", "rows_in": n, "counts_by_status": counts, "counts_by_subset": {"style": 4,
               "content": 4}, "shards": 2, "duration_seconds": 1.5, "images_per_second": 5.3,
               "scoring": "scored with a.ckpt" if with_scores else "scoring skipped: no classifier given"}
    thumbs = {sub: [(schema.make_key(0, i), synthetic.encode(synthetic.make_image(i % 2, 300, 200, seed=i)))
                    for i in range(3)] for sub in ("style", "content")}
    return summary, meta, thumbs


def _data_images(html: str) -> list[Image.Image]:
    out = []
    for mime, b64 in re.findall(r'src="data:(image/\w+);base64,([^"]+)"', html):
        out.append(Image.open(io.BytesIO(base64.b64decode(b64))))
    return out


def test_report_has_counts_histograms_and_thumbnails():
    summary, meta, thumbs = _inputs(with_scores=True)
    html = render_report(summary, meta, thumbs)
    assert "/tmp/x&lt;y&gt;" in html  # escaped
    for status in schema.STATUSES:
        assert f"<td>{status}</td>" in html
    images = _data_images(html)
    # two resolution histograms + one score histogram + 3 thumbnails per subset
    assert len(images) == 3 + 6
    assert all(im.size[0] > 0 for im in images)
    assert 'id="thumbs-style"' in html.replace("'", '"') and 'id="thumbs-content"' in html.replace("'", '"')


def test_report_without_scores_says_so():
    summary, meta, _ = _inputs(with_scores=False)
    html = render_report(summary, meta, {})
    assert "classifier stage was skipped" in html
    assert len(_data_images(html)) == 2
    assert html.count("no samples") == 2


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path: Path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium")
    summary, meta, thumbs = _inputs(with_scores=True)
    page_file = tmp_path / "report.html"
    page_file.write_text(render_report(summary, meta, thumbs))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(page_file.as_uri())
        # every inline image decoded by the browser (naturalWidth is 0 for a broken image)
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 9 and all(w > 0 for w in widths)
        rows = page.eval_on_selector_all("#status-counts tr", "els => els.length")
        assert rows == len(schema.STATUSES) + 2
        browser.close()
