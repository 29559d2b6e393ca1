"""The HTML run report: every section, embedded images with captions, graceful gaps; rendered in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core import schema, synthetic
from curate.report import error_pattern, render_report, report_from_output, select_examples

CHROMIUM = "/usr/bin/chromium"
SECTIONS = ("status-counts", "subset-counts", "sources", "resolution", "aspect-size", "scores", "thumbs-style",
            "thumbs-content", "rejected", "summary-json")


def _inputs(with_scores: bool = True, demo: bool = False, n_ok: int = 10):
    """Metadata of a small run: kept rows of two sources, rejections of several kinds, some with bytes."""
    statuses = (["ok"] * n_ok + ["too_small", "too_small", "too_small", "download_error", "duplicate", "duplicate",
                                 "score_filtered", "corrupt", "bad_aspect"])
    n = len(statuses)
    keys = [schema.make_key(0, i) for i in range(n)]
    widths = [1200 + 40 * i for i in range(n_ok)] + [800, 640, 900, None, 1300, 1320, 1400, 1500, 6000]
    heights = [1024 + 30 * i for i in range(n_ok)] + [600, 480, 700, None, 1100, 1100, 1200, 1024, 1100]
    errors = [None] * n_ok + ["short side 600 < min_side 1024", "short side 480 < min_side 1024",
                              "short side 700 < min_side 1024", "HTTP 404 from http://h/x.jpg",
                              f"duplicate of {keys[0]}", f"duplicate of {keys[1]}", "score 0.45 in neither subset",
                              "image file is truncated", "aspect ratio 5.45 > 4"]
    subset = ["style" if i % 2 == 0 else "content" for i in range(n_ok)] + [None] * (n - n_ok)
    scores = ([0.1 + 0.08 * i if i % 2 == 0 else 0.05 * i for i in range(n_ok)] + [None] * 6 + [0.45, None, None])
    meta = pa.table({
        "key": keys,
        "url": [f"http://example.org/{i}.jpg?a=<b>" for i in range(n)],
        "source": ["behance" if i % 3 else "flickr" for i in range(n)],
        "status": statuses,
        "error": errors,
        "original_width": pa.array(widths, pa.int64()),
        "original_height": pa.array(heights, pa.int64()),
        "num_bytes": pa.array([200_000 + 10_000 * i if w else None for i, w in enumerate(widths)], pa.int64()),
        "subset": subset,
        "score": pa.array(scores if with_scores else [None] * n, pa.float64()),
        "_ref_path": ["staging/a.bin" if s in ("ok", "duplicate", "score_filtered") else None for s in statuses],
    })
    counts = {s: statuses.count(s) for s in schema.STATUSES}
    summary = {"out": "/tmp/x<y>", "rows_in": n, "counts_by_status": counts,
               "counts_by_subset": {"style": subset.count("style"), "content": subset.count("content")},
               "shards": 2, "duration_seconds": 1.5, "images_per_second": 5.3,
               "scoring": "scored with a.ckpt" if with_scores else "scoring skipped: no classifier given",
               "split_thresholds": {"style_min_score": 0.6, "content_max_score": 0.3} if with_scores else {}}
    if demo:
        summary.update(demo=True, classifier={"demo": True, "version": "demo-1"})
    picks = select_examples(meta, per_subset=3, per_reason=2)
    images = {group: [(keys[i], synthetic.encode(synthetic.make_image(i % 2, 300 + 10 * i, 200, seed=i)))
                      for i in idx] for group, idx in picks.items()}
    return summary, meta, images


def _data_images(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b64)))
            for _, b64 in re.findall(r'src="data:(image/\w+);base64,([^"]+)"', page)]


def test_select_examples_spreads_kept_over_scores_and_takes_rejected_with_bytes():
    _, meta, _ = _inputs()
    picks = select_examples(meta, per_subset=3, per_reason=2)
    scores = meta["score"].to_pylist()
    style = picks["style"]
    assert len(style) == 3 and [scores[i] for i in style] == sorted(scores[i] for i in style)
    all_style = sorted(s for s, sub in zip(scores, meta["subset"].to_pylist()) if sub == "style")
    assert scores[style[0]] == all_style[0] and scores[style[-1]] == all_style[-1]  # both ends of the range
    assert set(picks) == {"style", "content", "duplicate", "score_filtered"}  # only rejections with bytes
    assert len(picks["duplicate"]) == 2


def test_error_pattern_groups_messages_of_one_kind():
    assert error_pattern("short side 600 < min_side 1024") == error_pattern("short side 763 < min_side 1024")
    assert error_pattern("HTTP 404 from http://a/b.jpg") == "HTTP N from URL"


def test_report_sections_captions_and_rejections():
    summary, meta, images = _inputs()
    page = render_report(summary, meta, images, limits={"min_side": 1024, "max_aspect_ratio": 4.0})
    assert "/tmp/x&lt;y&gt;" in page and "<b>" not in page.split("<body>")[1].split("<script>")[0]  # escaped
    for section in SECTIONS:
        assert f"id='{section}'" in page or f'id="{section}"' in page, section
    for status in schema.STATUSES:
        assert f"<td>{status}</td>" in page
    assert "demo-banner" not in page
    # 4 histograms (short side, aspect, megapixels, file size) + score + 3+3 kept + 2 duplicates + 1 filtered
    images_in_page = _data_images(page)
    assert len(images_in_page) == 5 + 6 + 3
    # captions: score and resolution under every kept thumbnail
    style_block = page.split("id='thumbs-style'")[1].split("</div>")[0]
    assert style_block.count("<figure") == 3 and style_block.count("class='score'") == 3
    assert style_block.count("class='res'") == 3 and "1200×1024" in style_block
    # rejected by reason: grouped messages, images where the bytes existed, a table where not
    rejected = page.split("id='rejected'")[1]
    assert "too_small: 3 rows" in rejected and "short side 600 &lt; min_side 1024" in rejected
    too_small = rejected.split("id='rejected-too_small'")[1].split("</section>")[0]
    assert "<td class='n'>3</td>" in too_small and "class='examples'" in too_small  # one pattern, 3 rows
    assert "id='thumbs-duplicate'" in rejected and "id='thumbs-score_filtered'" in rejected
    # per-source table
    sources = page.split("id='source-table'")[1].split("</table>")[0]
    assert "<td>behance</td>" in sources and "<td>flickr</td>" in sources
    assert "no split thresholds" not in page.lower() and "min_side unknown" not in page


def test_semantic_duplicates_section_shows_pairs_side_by_side():
    summary, meta, images = _inputs()
    keys = meta["key"].to_pylist()
    summary["semantic_dedup"] = {"threshold": 0.95, "embedding": "content", "clusters": 3, "probes": 2,
                                 "similar_pairs": 3, "semantic_duplicates": 2, "examples": [
                                     {"key": keys[12], "duplicate_of": keys[0], "similarity": 0.9512},
                                     {"key": keys[13], "duplicate_of": keys[1], "similarity": 0.99}]}
    pair_images = {k: synthetic.encode(synthetic.make_image(0, 200, 150, seed=i)) for i, k in
                   enumerate((keys[12], keys[0], keys[13]))}  # keys[1]'s bytes are missing
    page = render_report(summary, meta, images, pair_images=pair_images)
    section = page.split("id='semantic'")[1].split("id='summary-h'")[0]
    assert "2 images marked <code>semantic_duplicate</code>" in section and "at least 0.95" in section
    pairs = section.split("class='thumbs pair'")[1:]
    assert len(pairs) == 2 and "cosine 0.9512" in pairs[0] and "cosine 0.9900" in pairs[1]
    assert pairs[0].count("data:image/jpeg") == 2 and pairs[1].count("data:image/jpeg") == 1
    assert "image not kept" in pairs[1] and f"data-key='{keys[1]}'" in pairs[1]
    assert "href='#semantic-h'" in page
    # without the pass there is no section
    del summary["semantic_dedup"]
    assert "semantic-h" not in render_report(summary, meta, images)


def test_demo_banner_and_graceful_gaps():
    summary, meta, _ = _inputs(with_scores=False, demo=True)
    meta = meta.drop_columns(["source", "num_bytes", "score"])
    page = render_report(summary, meta, {})
    assert "id='demo-banner'" in page and "DEMO" in page.split("id='demo-banner'")[1][:200]
    assert "classifier stage was skipped" in page
    assert "no source column" in page and "min_side unknown" in page
    assert page.count("no samples") == 2
    assert len(_data_images(page)) == 3  # short side, aspect, megapixels; no size, no scores


def _write_output(root: Path) -> Path:
    """A finished output on disk as the build writes it: summary.json, meta/*.parquet, shards/*.tar."""
    summary, meta, _ = _inputs()
    keys, subsets, statuses = meta["key"].to_pylist(), meta["subset"].to_pylist(), meta["status"].to_pylist()
    shard_col = []
    (root / schema.SHARDS_DIR).mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        tars = {sub: stack.enter_context(tarfile.open(root / schema.SHARDS_DIR / schema.shard_name(sub, 0), "w"))
                for sub in schema.SUBSETS}
        for i, (k, sub, st) in enumerate(zip(keys, subsets, statuses)):
            if st != "ok":
                shard_col.append(None)
                continue
            data = synthetic.encode(synthetic.make_image(i % 2, 320, 240, seed=i))
            for name, payload in ((f"{k}.jpg", data), (f"{k}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tars[sub].addfile(info, io.BytesIO(payload))
            shard_col.append(schema.shard_name(sub, 0))
    meta = meta.drop_columns(["_ref_path"]).append_column("shard", pa.array(shard_col, pa.string()))
    (root / schema.META_DIR).mkdir()
    pq.write_table(meta, root / schema.META_DIR / schema.meta_name(0))
    summary["config"] = {"check": {"min_side": 1024, "max_aspect_ratio": 4.0}}
    (root / schema.SUMMARY_FILE).write_text(json.dumps(summary))
    return root


def test_report_from_a_finished_output(tmp_path):
    from curate.report import main

    out = _write_output(tmp_path / "run")
    page = report_from_output(str(out), per_subset=2)
    assert page.count("<figure") == 4 and "min_side unknown" not in page  # limits from summary["config"]
    assert main([str(out), "--thumbnails", "3"]) == 0
    assert (out / schema.REPORT_FILE).read_text().count("<figure") == 6


@pytest.mark.browser
def test_report_in_chromium(tmp_path: Path):
    """Every section renders, every embedded image decodes, a click opens the large view; screenshots kept."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    summary, meta, images = _inputs(demo=True)
    page_file = tmp_path / "report.html"
    page_file.write_text(render_report(summary, meta, images, limits={"min_side": 1024, "max_aspect_ratio": 4.0}))
    shots = Path(os.environ.get("BBST_REPORT_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        assert all(u.startswith(("file:", "data:")) for u in requests), requests  # one self-contained file
        for section in SECTIONS:
            assert page.locator(f"#{section}").count() == 1, section
        assert page.locator("#demo-banner").is_visible()
        widths = page.eval_on_selector_all("img", "els => els.filter(e => e.src).map(e => e.naturalWidth)")
        assert len(widths) == 14 and all(w > 0 for w in widths)
        assert page.locator("#status-counts tr").count() == len(schema.STATUSES) + 2
        assert page.locator("#source-table tr").count() == 3
        page.screenshot(path=str(shots / "report-top.png"))
        page.locator("#scores").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "report-histograms.png"), full_page=True)
        # score and resolution under each kept thumbnail; a click opens the large view, Escape closes it
        assert page.locator("#thumbs-style figcaption .score").count() == 3
        assert page.locator("#lightbox").is_hidden()
        page.locator("#thumbs-content img").first.click()
        assert page.locator("#lightbox").is_visible()
        assert page.locator("#lightbox p .res").count() == 1
        big = page.eval_on_selector("#lightbox img", "e => e.naturalWidth")
        assert big > 0
        page.screenshot(path=str(shots / "report-lightbox.png"))
        page.keyboard.press("Escape")
        assert page.locator("#lightbox").is_hidden()
        page.locator("#rejected").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "report-rejected.png"))
        browser.close()
    for name in ("report-top.png", "report-histograms.png", "report-lightbox.png", "report-rejected.png"):
        assert (shots / name).stat().st_size > 1000
    if shots != tmp_path:
        shutil.copy(page_file, shots / "report.html")
