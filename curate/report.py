"""Self-contained HTML report of a curation run: counts by status, resolution and score histograms, thumbnails."""

from __future__ import annotations

import base64
import html
import io
import json
import math

import pyarrow as pa

from curate import schema

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.25rem .75rem;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.thumbs{display:flex;flex-wrap:wrap;gap:.5rem}.thumbs figure{margin:0;font-size:.75rem;text-align:center}
.thumbs img{height:128px;border:1px solid #ccc}.note{color:#666}
"""


def _histogram_png(values: list[float], title: str, xlabel: str, bins: int = 30) -> str | None:
    """Histogram as a base64 PNG (matplotlib, headless); None when there is nothing to plot."""
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.hist(values, bins=bins, color="#4a7bb7")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _thumbnail(data: bytes, size: int = 256) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, cheap even for large images
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # noqa: BLE001 - a thumbnail that fails must not break the report
        return None
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str | None, alt: str, mime: str = "image/png") -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(alt)}: no data</p>'
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def render_report(summary: dict, meta: pa.Table, thumbnails: dict[str, list[tuple[str, bytes]]]) -> str:
    """HTML for ``summary`` (summary.json), ``meta`` (every row) and ``thumbnails`` ``{subset: [(key, bytes)]}``."""
    status = meta["status"].to_pylist()
    ok = [s == "ok" for s in status]
    widths, heights = meta["original_width"].to_pylist(), meta["original_height"].to_pylist()
    short_sides = [min(w, h) for w, h in zip(widths, heights) if w is not None and h is not None]
    kept_short = [min(w, h) for w, h, k in zip(widths, heights, ok) if k and w is not None and h is not None]
    scores = []
    if "score" in meta.column_names:
        scores = [s for s in meta["score"].to_pylist() if s is not None and not math.isnan(s)]
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>bbst curation report</title>"
            f"<style>{_CSS}</style></head><body>")
    intro = (f"<p>Output <code>{html.escape(str(summary.get('out', '')))}</code>: {summary['rows_in']} input rows, "
             f"{summary['counts_by_status'].get('ok', 0)} kept in {summary.get('shards', 0)} shards; "
             f"{summary.get('duration_seconds', 0):.1f}s processing, {summary.get('images_per_second')} images/s. "
             f"{html.escape(str(summary.get('scoring', '')))}.</p>")
    parts = [head, "<h1>bbst curation report</h1>", intro]
    parts.append("<h2>Counts by status</h2><table id='status-counts'><tr><th>status</th><th>rows</th></tr>")
    for s in schema.STATUSES:
        parts.append(f"<tr><td>{s}</td><td class='n'>{summary['counts_by_status'].get(s, 0)}</td></tr>")
    parts.append(f"<tr><th>total</th><th class='n'>{summary['rows_in']}</th></tr></table>")
    parts.append("<h2>Counts by subset</h2><table id='subset-counts'><tr><th>subset</th><th>images</th></tr>")
    for s in schema.SUBSETS:
        parts.append(f"<tr><td>{s}</td><td class='n'>{summary['counts_by_subset'].get(s, 0)}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Resolution</h2><div id='resolution'>")
    parts.append(_img(_histogram_png(short_sides, "short side, all readable headers", "pixels"), "short side (all)"))
    parts.append(_img(_histogram_png(kept_short, "short side, kept images", "pixels"), "short side (kept)"))
    parts.append("</div><h2>Scores</h2><div id='scores'>")
    if scores:
        parts.append(_img(_histogram_png(scores, "stylistic score", "P(stylistic)"), "score histogram"))
    else:
        parts.append("<p class='note'>No scores: the classifier stage was skipped.</p>")
    parts.append("</div>")
    for subset in schema.SUBSETS:
        items = thumbnails.get(subset, [])
        parts.append(f"<h2>Samples: {subset}</h2><div class='thumbs' id='thumbs-{subset}'>")
        if not items:
            parts.append("<p class='note'>no samples</p>")
        for key, data in items:
            parts.append(f"<figure>{_img(_thumbnail(data), key, 'image/jpeg')}"
                         f"<figcaption>{html.escape(key)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>summary.json</h2><pre>" + html.escape(json.dumps(summary, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
