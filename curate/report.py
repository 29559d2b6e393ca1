"""Self-contained HTML report of a curation run: what was kept, what was rejected and why, and where it came from.

One file, no network: histograms are inline PNGs (matplotlib, headless) and every sample image is an inline JPEG.
Sections: a DEMO banner when the scores come from the demo classifier; counts by status and subset; a per-source
breakdown; the resolution histogram with the ``min_side`` line; aspect-ratio and file-size distributions; the
score histogram with the split thresholds; kept samples per subset across their score range; rejected examples by
reason (images where the build still had the bytes, else the URL and the message); ``summary.json``.

With the semantic pass, a section lists its account and example pairs (both images when the build renders the
report, while the duplicates' bytes are still staged).

Every figure comes from ``summary.json`` and the metadata rows (``meta/*.parquet``); a column the rows lack
(``source``, ``score``, ``num_bytes``, ...) drops its figure with a note instead of failing the report.
``python -m curate.report DIR`` rebuilds ``DIR/report.html`` of a finished output from those files and the shards.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections import Counter
from typing import Any

import pyarrow as pa

from core import schema

PER_REASON = 4  # rejected examples shown per status
# rejections made after the bytes were downloaded and checked: the build holds their bytes in staging until it ends
BYTES_DOWNLOADED = ("duplicate", "near_duplicate", "score_error", "score_filtered")
PREVIEW_SIZE = 1024  # long side of the embedded rendition a thumbnail opens to (the grid shows it scaled down)

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 2rem 2rem;color:#222;max-width:1280px}
h1{font-size:1.5rem;margin-top:1.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
nav{font-size:.85rem;margin:.5rem 0 1rem}nav a{margin-right:.8rem}
table{border-collapse:collapse;font-size:.9rem}td,th{padding:.25rem .75rem;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}td.url{max-width:32rem;overflow-wrap:anywhere}
.banner{background:#fff3cd;border:2px solid #e0a800;color:#5c4400;padding:.8rem 1rem;margin:1rem 0;font-weight:600;
  border-radius:4px}
.plots{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.thumbs{display:flex;flex-wrap:wrap;gap:.6rem}.thumbs figure{margin:0;font-size:.75rem;text-align:center;width:160px}
.thumbs img{height:128px;max-width:160px;object-fit:contain;border:1px solid #ccc;cursor:zoom-in;background:#f6f6f6}
.thumbs figcaption{overflow-wrap:anywhere}.note{color:#666}.err{color:#8a1c1c}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:10;cursor:zoom-out;
  align-items:center;justify-content:center;flex-direction:column;color:#eee;font-size:.9rem}
#lightbox.open{display:flex}#lightbox img{max-width:95vw;max-height:88vh;object-fit:contain;background:#fff}
#lightbox a{color:#9cf}
"""

_JS = """
(function(){
  const box=document.getElementById('lightbox'), img=box.querySelector('img'), cap=box.querySelector('p');
  document.querySelectorAll('.thumbs img').forEach(el=>el.addEventListener('click',()=>{
    img.src=el.src; cap.innerHTML=el.closest('figure').querySelector('figcaption').innerHTML;
    box.classList.add('open');}));
  box.addEventListener('click',e=>{if(e.target.tagName!=='A')box.classList.remove('open');});
  document.addEventListener('keydown',e=>{if(e.key==='Escape')box.classList.remove('open');});
})();
"""


# --------------------------------------------------------------------------------------------------- helpers
def _col(meta: pa.Table, name: str) -> list | None:
    """A column as a list, or None when the rows lack it."""
    return meta[name].to_pylist() if name in meta.column_names else None


def _finite(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


_COLORS = {"kept": "#4a7bb7", "rejected": "#e08a3c", "style": "#8e5ab7", "content": "#4f9a64",
           "score_filtered": "#9aa5b1"}


def _histogram_png(series: dict[str, list[float]], title: str, xlabel: str, bins: int | list[float] = 30,
                   lines: list[tuple[float, str]] = (), log_x: bool = False) -> str | None:
    """Stacked histogram of ``{label: values}`` with labelled vertical ``lines``, as a base64 PNG; None if empty."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(5.6, 3.2), dpi=80)
    lo = max(min(min(v) for v in series.values()), 1e-9)
    hi = max(max(v) for v in series.values())
    if log_x and hi / lo > 20:  # a log axis only where the values span orders of magnitude
        bins = list(np.geomspace(lo, hi * 1.0001, 31))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.hist(list(series.values()), bins=bins, stacked=True, label=list(series),
            color=[_COLORS.get(k, "#b0b0b0") for k in series])
    merged: dict[float, list[str]] = {}
    for x, label in lines:
        merged.setdefault(x, []).append(label)
    for i, (x, labels) in enumerate(sorted(merged.items())):
        ax.axvline(x, color="#c0392b", linestyle="--", linewidth=1.5)
        right = x > sum(ax.get_xlim()) / 2  # labels of lines in the right half go to their left, inside the axes
        ax.annotate(", ".join(labels), xy=(x, 1), xycoords=("data", "axes fraction"),
                    xytext=(-3 if right else 3, -12 - 11 * i), textcoords="offset points", color="#c0392b",
                    fontsize=8, ha="right" if right else "left")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _preview(data: bytes, size: int = PREVIEW_SIZE) -> str | None:
    """Embedded JPEG rendition (long side <= ``size``) of an image's bytes; None when they do not decode."""
    from core.images import thumbnail

    try:
        jpeg = thumbnail(data, size, quality=82)
    except Exception:  # noqa: BLE001 - a sample that fails to render must not break the report
        return None
    return base64.b64encode(jpeg).decode()


def _img(b64: str | None, alt: str, mime: str = "image/png", cls: str = "") -> str:
    if b64 is None:
        return f'<p class="note">{html.escape(alt)}: no data</p>'
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:{mime};base64,{b64}">'


def _size(row: dict) -> str | None:
    """``W×H`` of a row (original header size, else stored size); None when unknown."""
    w, h = row.get("original_width") or row.get("width"), row.get("original_height") or row.get("height")
    return f"{int(w)}×{int(h)}" if _finite(w) and _finite(h) and w and h else None


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def error_pattern(message: str | None) -> str:
    """An error message with its numbers and quoted parts replaced, so that messages of one kind group together."""
    if not message:
        return ""
    text = re.sub(r"https?://\S+", "URL", str(message))
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def _thresholds(summary: dict) -> dict[str, float]:
    th = summary.get("split_thresholds") or {}
    return {k: v for k, v in th.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _limit(summary: dict, limits: dict | None, name: str) -> float | None:
    """A check limit (``min_side``, ``max_aspect_ratio``) from ``limits`` or the config recorded in the summary."""
    if limits and limits.get(name) is not None:
        return limits[name]
    return ((summary.get("config") or {}).get("check") or {}).get(name)


def is_demo(summary: dict) -> bool:
    return bool(summary.get("demo") or (summary.get("classifier") or {}).get("demo"))


# --------------------------------------------------------------------------------------------------- picking
def select_examples(meta: pa.Table, per_subset: int = 8, per_reason: int = PER_REASON) -> dict[str, list[int]]:
    """Row indices whose image bytes the report embeds: ``{subset or status: [row, ...]}``.

    Kept samples are spread evenly over each subset's score range (lowest to highest), so the page shows the
    borderline images as well as the obvious ones. Rejected rows are picked per status among those whose bytes
    the build still holds (``_ref_path`` set: duplicates, score-filtered, ...), smallest keys first.
    """
    status = meta["status"].to_pylist()
    subset = _col(meta, "subset") or [None] * meta.num_rows
    score = _col(meta, "score") or [None] * meta.num_rows
    refs = _col(meta, "_ref_path") or [None] * meta.num_rows
    out: dict[str, list[int]] = {}
    for sub in schema.SUBSETS:
        idx = [i for i, (st, s) in enumerate(zip(status, subset)) if st == "ok" and s == sub]
        if not idx or per_subset <= 0:
            continue
        idx.sort(key=lambda i: (score[i] if _finite(score[i]) else -1.0, i))
        if len(idx) > per_subset:
            step = (len(idx) - 1) / max(1, per_subset - 1)
            idx = sorted({idx[round(j * step)] for j in range(per_subset)}, key=idx.index)
        out[sub] = idx
    for st in schema.STATUSES:
        if st == "ok" or per_reason <= 0:
            continue
        idx = [i for i, (s, r) in enumerate(zip(status, refs)) if s == st and r]
        if idx:
            out[st] = idx[:per_reason]
    return out


# --------------------------------------------------------------------------------------------------- sections
class _Rows:
    """Column lists of the metadata (no per-row dicts: a run may have millions of rows) and rows by key."""

    NAMES = ("key", "url", "source", "status", "error", "original_width", "original_height", "width", "height",
             "num_bytes", "score", "subset")

    def __init__(self, meta: pa.Table) -> None:
        self.n = meta.num_rows
        self.cols = {name: _col(meta, name) for name in self.NAMES}
        self.status = self.cols["status"] or ["ok"] * self.n
        self._by_key: dict[str, int] | None = None

    def get(self, name: str, i: int) -> Any:
        col = self.cols.get(name)
        return col[i] if col is not None else None

    def row(self, i: int) -> dict:
        return {name: col[i] for name, col in self.cols.items() if col is not None}

    def by_key(self, key: str) -> dict:
        if self._by_key is None:
            self._by_key = {str(k): i for i, k in enumerate(self.cols["key"] or [])}
        i = self._by_key.get(key)
        return self.row(i) if i is not None else {"key": key}


def _caption(row: dict) -> str:
    bits = [html.escape(str(row.get("key", "")))]
    size = _size(row)
    if size:
        bits.append(f"<span class='res'>{size}</span>")
    if _finite(row.get("score")):
        bits.append(f"<span class='score'>score {row['score']:.3f}</span>")
    if row.get("status") not in (None, "ok") and row.get("error"):
        bits.append(f"<span class='err'>{html.escape(str(row['error']))}</span>")
    if row.get("url"):
        url = html.escape(str(row["url"]), quote=True)
        bits.append(f"<a href='{url}' target='_blank' rel='noreferrer noopener'>original</a>")
    return "<br>".join(bits)


def _figures(items: list[tuple[str, bytes]], rows: _Rows) -> list[str]:
    parts = []
    for key, data in items:
        row = rows.by_key(key)
        parts.append(f"<figure data-key='{html.escape(key)}'>{_img(_preview(data), key, 'image/jpeg')}"
                     f"<figcaption>{_caption(row)}</figcaption></figure>")
    return parts


def _sources_section(rows: _Rows) -> list[str]:
    parts = ["<h2 id='sources-h'>By source</h2><div id='sources'>"]
    sources = rows.cols["source"]
    if sources is None or all(s is None for s in sources):
        parts.append("<p class='note'>The URL list has no source column (reader.source_column), so there is "
                     "nothing to break down by.</p></div>")
        return parts
    groups: dict[str, list[dict]] = {}
    for i, src in enumerate(sources):
        groups.setdefault(src or "(none)", []).append(
            {"status": rows.status[i], "subset": rows.get("subset", i), "score": rows.get("score", i),
             "original_width": rows.get("original_width", i), "original_height": rows.get("original_height", i)})
    parts.append("<table id='source-table'><tr><th>source</th><th class='n'>rows</th><th class='n'>kept</th>"
                 "<th class='n'>kept %</th><th class='n'>style</th><th class='n'>content</th>"
                 "<th class='n'>median short side</th><th class='n'>median score</th><th>top rejection</th></tr>")
    for name, grp in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        kept = [r for r in grp if r["status"] == "ok"]
        shorts = sorted(int(min(r["original_width"], r["original_height"])) for r in grp
                        if _finite(r.get("original_width")) and _finite(r.get("original_height"))
                        and r["original_width"] and r["original_height"])
        scores = sorted(r["score"] for r in kept if _finite(r.get("score")))
        rejected = Counter(r["status"] for r in grp if r["status"] != "ok").most_common(1)
        top = f"{rejected[0][0]} ({rejected[0][1]})" if rejected else "-"
        parts.append(
            f"<tr><td>{html.escape(str(name))}</td><td class='n'>{len(grp)}</td><td class='n'>{len(kept)}</td>"
            f"<td class='n'>{_pct(len(kept), len(grp))}</td>"
            f"<td class='n'>{sum(r.get('subset') == 'style' for r in kept)}</td>"
            f"<td class='n'>{sum(r.get('subset') == 'content' for r in kept)}</td>"
            f"<td class='n'>{shorts[len(shorts) // 2] if shorts else '-'}</td>"
            f"<td class='n'>{f'{scores[len(scores) // 2]:.3f}' if scores else '-'}</td><td>{top}</td></tr>")
    parts.append("</table></div>")
    return parts


def _rejected_section(summary: dict, rows: _Rows, images: dict[str, list[tuple[str, bytes]]],
                      per_reason: int) -> list[str]:
    parts = ["<h2 id='rejected-h'>Rejected examples by reason</h2><div id='rejected'>"]
    counts = {s: n for s, n in summary.get("counts_by_status", {}).items() if s != "ok" and n}
    if not counts:
        parts.append("<p class='note'>Nothing was rejected.</p></div>")
        return parts
    by_status: dict[str, list[int]] = {}
    for i, st in enumerate(rows.status):
        if st != "ok":
            by_status.setdefault(st, []).append(i)
    errors = rows.cols["error"] or [None] * rows.n
    for st in sorted(counts, key=lambda s: -counts[s]):
        idx = by_status.get(st, [])
        of_status = [{"error": errors[i]} for i in idx]
        parts.append(f"<section class='reason' id='rejected-{st}'><h3>{st}: {counts[st]} rows "
                     f"({_pct(counts[st], summary.get('rows_in', 0))})</h3>")
        patterns = Counter(error_pattern(r.get("error")) for r in of_status if r.get("error"))
        if patterns:
            example = {}
            for r in of_status:
                example.setdefault(error_pattern(r.get("error")), r.get("error"))
            parts.append("<table class='patterns'><tr><th class='n'>rows</th><th>message (one example)</th></tr>")
            for pat, n in patterns.most_common(5):
                parts.append(f"<tr><td class='n'>{n}</td><td>{html.escape(str(example[pat]))}</td></tr>")
            parts.append("</table>")
        items = images.get(st, [])
        if items:
            parts.append(f"<div class='thumbs' id='thumbs-{st}'>")
            parts.extend(_figures(items, rows))
            parts.append("</div>")
        else:
            shown = [rows.row(i) for i in idx[:per_reason]]
            parts.append("<table class='examples'><tr><th>key</th><th>URL</th><th>size</th><th>message</th></tr>")
            for r in shown:
                size = _size(r) or "-"
                parts.append(f"<tr><td>{html.escape(str(r.get('key', '')))}</td>"
                             f"<td class='url'>{html.escape(str(r.get('url') or '-'))}</td><td>{size}</td>"
                             f"<td>{html.escape(str(r.get('error') or ''))}</td></tr>")
            parts.append("</table>")
            if of_status and st in BYTES_DOWNLOADED:
                parts.append("<p class='note'>No image: these rows were downloaded but are not part of the output; "
                             "the report a build writes shows them (from its staging), a rebuilt report cannot.</p>")
            elif of_status:
                parts.append("<p class='note'>No image: the bytes of these rows were never kept "
                             "(rejected from the header or the download).</p>")
        parts.append("</section>")
    parts.append("</div>")
    return parts


def _semantic_section(summary: dict, rows: _Rows, images: dict[str, bytes]) -> list[str]:
    """The semantic pass's account and its example pairs (duplicate beside the image it duplicates)."""
    sem = summary.get("semantic_dedup")
    if not sem:
        return []
    parts = ["<h2 id='semantic-h'>Semantic duplicates</h2><div id='semantic'>",
             (f"<p>{sem.get('semantic_duplicates', 0)} images marked <code>semantic_duplicate</code>: their "
             f"<code>{html.escape(str(sem.get('embedding')))}</code> embedding has a cosine similarity of at least "
             f"{sem.get('threshold')} with a kept image of smaller key ({sem.get('similar_pairs', 0)} similar pairs "
             f"within {sem.get('clusters')} clusters, each image compared in its {sem.get('probes')} nearest). "
             "Example pairs below, least similar first: they show what the threshold lets through.</p>")]
    examples = sem.get("examples") or []
    if not examples:
        parts.append("<p class='note'>No semantic duplicates.</p></div>")
        return parts
    for ex in examples:
        dup, kept = str(ex["key"]), str(ex["duplicate_of"])
        figs = []
        for key, role in ((dup, "duplicate"), (kept, "kept")):
            data = images.get(key)
            picture = _img(_preview(data), key, "image/jpeg") if data else "<p class='note'>image not kept</p>"
            figs.append(f"<figure data-key='{html.escape(key)}'>{picture}<figcaption>{role}<br>"
                        f"{_caption(rows.by_key(key))}</figcaption></figure>")
        parts.append(f"<div class='thumbs pair' data-similarity='{ex['similarity']}'>{''.join(figs)}"
                     f"<p>cosine {ex['similarity']:.4f}</p></div>")
    if not images:
        parts.append("<p class='note'>Images of the pairs are shown when the build writes the report (the duplicates' "
                     "bytes are not part of the output).</p>")
    parts.append("</div>")
    return parts


# --------------------------------------------------------------------------------------------------- page
def render_report(summary: dict, meta: pa.Table, thumbnails: dict[str, list[tuple[str, bytes]]],
                  limits: dict | None = None, per_reason: int = PER_REASON,
                  pair_images: dict[str, bytes] | None = None) -> str:
    """HTML for ``summary`` (summary.json), ``meta`` (every row) and ``thumbnails`` ``{group: [(key, bytes)]}``.

    A group is a subset (kept samples) or a status (rejected samples whose bytes exist); :func:`select_examples`
    picks them. ``limits`` holds the check limits drawn on the histograms (``min_side``, ``max_aspect_ratio``);
    without it they are read from ``summary["config"]["check"]`` when the build recorded its config there.
    ``pair_images`` ``{key: bytes}`` holds the images of the semantic-duplicate example pairs.
    """
    rows = _Rows(meta)
    status = rows.status
    total = summary.get("rows_in", rows.n)
    counts = summary.get("counts_by_status") or dict(Counter(status))
    widths, heights = _col(meta, "original_width"), _col(meta, "original_height")
    dims = [(w, h, s) for w, h, s in zip(widths or [], heights or [], status) if _finite(w) and _finite(h) and w and h]
    min_side = _limit(summary, limits, "min_side")
    max_aspect = _limit(summary, limits, "max_aspect_ratio")

    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>bbst curation report</title>"
            f"<style>{_CSS}</style></head><body>")
    parts = [head, "<h1>bbst curation report</h1>"]
    if is_demo(summary):
        parts.append("<div class='banner' id='demo-banner' role='alert'>DEMO: these scores and the style/content "
                     "split come from a DEMO classifier (random-init tiny backbones fitted on generated images). "
                     "They show how the pipeline works, not which images are stylistic. Train a real classifier "
                     "(bbst label, bbst train-classifier) and rebuild with --classifier.</div>")
    parts.append("<nav>" + " ".join(f"<a href='#{a}'>{t}</a>" for a, t in (
        ("counts-h", "counts"), ("sources-h", "sources"), ("resolution-h", "resolution"),
        ("aspect-size-h", "aspect & size"), ("scores-h", "scores"), ("samples-h", "kept samples"),
        ("rejected-h", "rejected"), *((("semantic-h", "semantic duplicates"),) if summary.get("semantic_dedup")
                                      else ()), ("summary-h", "summary.json"))) + "</nav>")
    ips = summary.get("images_per_second")
    parts.append(f"<p id='intro'>Output <code>{html.escape(str(summary.get('out', '')))}</code>: {total} input rows, "
                 f"{counts.get('ok', 0)} kept ({_pct(counts.get('ok', 0), total)}) in {summary.get('shards', 0)} "
                 f"shards; {summary.get('duration_seconds', 0):.1f}s processing"
                 f"{f', {ips} images/s' if ips is not None else ''}. "
                 f"{html.escape(str(summary.get('scoring', '')))}.</p>")

    # counts
    parts.append("<h2 id='counts-h'>Counts</h2><div class='plots'>")
    parts.append("<table id='status-counts'><tr><th>status</th><th class='n'>rows</th><th class='n'>share</th></tr>")
    for s in schema.STATUSES:
        n = counts.get(s, 0)
        parts.append(f"<tr><td>{s}</td><td class='n'>{n}</td><td class='n'>{_pct(n, total)}</td></tr>")
    parts.append(f"<tr><th>total</th><th class='n'>{total}</th><th></th></tr></table>")
    parts.append("<table id='subset-counts'><tr><th>subset</th><th class='n'>images</th></tr>")
    for s in schema.SUBSETS:
        parts.append(f"<tr><td>{s}</td><td class='n'>{(summary.get('counts_by_subset') or {}).get(s, 0)}</td></tr>")
    parts.append("</table></div>")

    parts += _sources_section(rows)

    # resolution, with the min-side line
    parts.append("<h2 id='resolution-h'>Resolution</h2><div class='plots' id='resolution'>")
    if dims:
        kept = [min(w, h) for w, h, s in dims if s == "ok"]
        other = [min(w, h) for w, h, s in dims if s != "ok"]
        lines = [(min_side, f"min_side {min_side}")] if min_side else []
        parts.append(_img(_histogram_png({"kept": kept, "rejected": other}, "short side (readable headers)",
                                         "pixels", lines=lines), "short side histogram"))
        if not min_side:
            parts.append("<p class='note'>min_side unknown (not recorded with this output): no line drawn.</p>")
    else:
        parts.append("<p class='note'>No image sizes recorded.</p>")
    parts.append("</div>")

    # aspect ratio and file size
    parts.append("<h2 id='aspect-size-h'>Aspect ratio and size</h2><div class='plots' id='aspect-size'>")
    if dims:
        ratios = {"kept": [max(w, h) / min(w, h) for w, h, s in dims if s == "ok"],
                  "rejected": [max(w, h) / min(w, h) for w, h, s in dims if s != "ok"]}
        lines = [(max_aspect, f"max {max_aspect:g}")] if max_aspect else []
        parts.append(_img(_histogram_png(ratios, "aspect ratio (long / short side)", "ratio", lines=lines),
                          "aspect ratio histogram"))
        mp = {"kept": [w * h / 1e6 for w, h, s in dims if s == "ok"],
              "rejected": [w * h / 1e6 for w, h, s in dims if s != "ok"]}
        parts.append(_img(_histogram_png(mp, "pixels", "megapixels", log_x=True), "megapixel histogram"))
    num_bytes = _col(meta, "num_bytes")
    if num_bytes is not None and any(num_bytes):
        sizes = {"kept": [b / 1e6 for b, s in zip(num_bytes, status) if b and s == "ok"],
                 "rejected": [b / 1e6 for b, s in zip(num_bytes, status) if b and s != "ok"]}
        parts.append(_img(_histogram_png(sizes, "downloaded file size", "MB", log_x=True), "file size histogram"))
    elif not dims:
        parts.append("<p class='note'>No sizes recorded.</p>")
    parts.append("</div>")

    # scores, with the split thresholds
    parts.append("<h2 id='scores-h'>Scores</h2><div class='plots' id='scores'>")
    scores = _col(meta, "score")
    subsets = _col(meta, "subset") or [None] * rows.n
    if scores is not None and any(_finite(v) for v in scores):
        series: dict[str, list[float]] = {}
        for v, st, sub in zip(scores, status, subsets):
            if _finite(v):
                series.setdefault(sub if st == "ok" and sub else ("kept" if st == "ok" else st), []).append(v)
        th = _thresholds(summary)
        lines = []
        if "style_min_score" in th:
            lines.append((th["style_min_score"], f"style ≥ {th['style_min_score']:.3f}"))
        if "content_max_score" in th:
            lines.append((th["content_max_score"], f"content ≤ {th['content_max_score']:.3f}"))
        parts.append(_img(_histogram_png(series, "stylistic score", "P(stylistic)", bins=[i / 40 for i in range(41)],
                                         lines=lines), "score histogram"))
        if not lines:
            parts.append("<p class='note'>No split thresholds recorded with this output: no lines drawn.</p>")
    else:
        parts.append("<p class='note'>No scores: the classifier stage was skipped.</p>")
    parts.append("</div>")

    # kept samples
    parts.append("<h2 id='samples-h'>Kept samples</h2><p class='note'>Spread over each subset's score range, "
                 "lowest first. Click an image for a larger view.</p>")
    for subset in schema.SUBSETS:
        items = thumbnails.get(subset, [])
        parts.append(f"<h3>{subset}</h3><div class='thumbs' id='thumbs-{subset}'>")
        if not items:
            parts.append("<p class='note'>no samples</p>")
        parts.extend(_figures(items, rows))
        parts.append("</div>")

    parts += _rejected_section({**summary, "counts_by_status": counts, "rows_in": total}, rows, thumbnails,
                               per_reason)
    parts += _semantic_section(summary, rows, pair_images or {})

    parts.append("<h2 id='summary-h'>summary.json</h2><pre id='summary-json'>"
                 + html.escape(json.dumps(summary, indent=2, default=str)) + "</pre>")
    parts.append("<div id='lightbox' role='dialog' aria-label='full-size view'><img alt='full size'><p></p></div>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------- from disk
def report_from_output(directory: str, per_subset: int = 8, storage_options: dict | None = None,
                       limits: dict | None = None) -> str:
    """The report of a finished output ``directory``: summary.json, meta/*.parquet and the shards' images.

    Rejected rows show as tables only (their bytes are not part of the output).
    """
    import fsspec
    import pyarrow.parquet as pq

    from core.shards import index_shard_by_key, read_member

    fs, root = fsspec.core.url_to_fs(directory, **(storage_options or {}))
    root = root.rstrip("/")
    with fs.open(f"{root}/{schema.SUMMARY_FILE}", "rb") as f:
        summary = json.load(f)
    tables = []
    for name in sorted(fs.ls(f"{root}/{schema.META_DIR}", detail=False)):
        if name.endswith(".parquet"):
            with fs.open(name, "rb") as f:
                tables.append(pq.read_table(f))
    meta = pa.concat_tables(tables, promote_options="permissive").sort_by("key")
    picks = select_examples(meta, per_subset=per_subset, per_reason=0)
    shard_col = _col(meta, "shard") or [None] * meta.num_rows
    keys = meta["key"].to_pylist()
    images: dict[str, list[tuple[str, bytes]]] = {}
    index: dict[str, dict] = {}
    for group, idx in picks.items():
        for i in idx:
            shard = shard_col[i]
            if not shard:
                continue
            if shard not in index:
                index[shard] = index_shard_by_key(f"{root}/{schema.SHARDS_DIR}/{shard}", fs)
            sample = index[shard].get(keys[i])
            found = sample.image() if sample else None
            if found:
                images.setdefault(group, []).append((keys[i], read_member(found[1], fs)))
    return render_report(summary, meta, images, limits=limits)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m curate.report",
                                description="Rebuild DIR/report.html of a finished bbst build output.")
    p.add_argument("directory", metavar="DIR", help="build output (local or fsspec URL)")
    p.add_argument("--thumbnails", type=int, default=8, help="kept samples per subset (default: 8)")
    p.add_argument("--min-side", type=int, help="draw this min_side line (default: from summary.json's config)")
    args = p.parse_args(argv)
    from core.atomic import atomic_write

    page = report_from_output(args.directory, per_subset=args.thumbnails, limits={"min_side": args.min_side})
    target = f"{args.directory.rstrip('/')}/{schema.REPORT_FILE}"
    atomic_write(target, lambda f: f.write(page.encode()))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
