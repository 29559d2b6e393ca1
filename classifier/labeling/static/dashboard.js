// Dashboard: label counts, per-round held-out accuracy / ROC-AUC, Cohen's kappa, pool score histogram,
// export and import. Plots are inline SVG built here; no external scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function table(id, head, rows) {
  const t = $(id);
  const tr = (cells, tag) => {
    const r = document.createElement("tr");
    for (const c of cells) {
      const d = document.createElement(tag);
      if (c !== null && typeof c === "object") {  // {text, caveat}: a figure with a small-sample warning
        d.textContent = c.text;
        if (c.caveat) { d.classList.add("caveat"); d.title = c.caveat; d.textContent += " ⚠"; }
      } else d.textContent = c;
      r.append(d);
    }
    return r;
  };
  t.replaceChildren(tr(head, "th"), ...rows.map((r) => tr(r, "td")));
}

const fmt = (v, d = 3) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));

function roundsPlot(rounds) {
  const W = 420, H = 200, L = 40, B = 28, T = 10, R = 10;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "held-out accuracy and ROC-AUC per round" });
  svg.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
             el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  const lo = Math.min(0.5, ...rounds.flatMap((r) => [r.metrics.accuracy, r.metrics.roc_auc]
    .filter((v) => typeof v === "number")));
  const y = (v) => T + (1 - (v - lo) / (1 - lo || 1)) * (H - B - T);
  const n = rounds.length;
  const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i / (n - 1)) * (W - L - R));
  for (const v of [lo, (lo + 1) / 2, 1]) {
    svg.append(el("text", { x: 4, y: y(v) + 4 }, v.toFixed(2)));
  }
  rounds.forEach((r, i) => svg.append(el("text", { x: x(i) - 4, y: H - 10 }, String(r.round))));
  for (const [metric, cls] of [["accuracy", "acc"], ["roc_auc", "auc"]]) {
    const pts = rounds.map((r, i) => [x(i), r.metrics[metric]]).filter(([, v]) => typeof v === "number");
    if (pts.length > 1) svg.append(el("polyline", { class: cls, points: pts.map(([a, v]) => `${a},${y(v)}`).join(" ") }));
    for (const [a, v] of pts) svg.append(el("circle", { cx: a, cy: y(v), r: 3, class: cls, "data-metric": metric }));
  }
  svg.append(el("text", { x: W - 150, y: T + 12, fill: "#81c995" }, "accuracy"),
             el("text", { x: W - 80, y: T + 12, fill: "#8ab4f8" }, "ROC-AUC"));
  $("rounds-plot").replaceChildren(svg);
}

function histPlot(h) {
  const W = 420, H = 180, L = 40, B = 24, T = 10, R = 10;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "histogram of current pool scores" });
  const max = Math.max(1, ...h.counts);
  const bw = (W - L - R) / h.counts.length;
  h.counts.forEach((c, i) => {
    const bh = (c / max) * (H - B - T);
    const r = el("rect", { x: L + i * bw + 1, y: H - B - bh, width: bw - 2, height: bh, class: "bar-rect" });
    r.append(el("title", {}, `${h.edges[i]}–${h.edges[i + 1]}: ${c}`));
    svg.append(r);
  });
  svg.append(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  for (const v of [0, 0.5, 1]) svg.append(el("text", { x: L + v * (W - L - R) - 8, y: H - 8 }, String(v)));
  svg.append(el("text", { x: 2, y: T + 10 }, String(max)));
  if (typeof h.threshold === "number") {
    const tx = L + h.threshold * (W - L - R);
    svg.append(el("line", { x1: tx, y1: T, x2: tx, y2: H - B, class: "thr" }));
  }
  $("hist-plot").replaceChildren(svg);
}

async function refresh() {
  let s;
  try {
    const r = await fetch("/api/stats", { credentials: "same-origin" });
    s = await r.json();
    if (!r.ok) throw new Error(s.error || r.statusText);
  } catch (e) { $("status").textContent = `cannot load stats: ${e.message}`; return; }
  $("status").textContent = s.last_error || "";
  const bl = s.counts.by_label;
  $("summary").textContent = `${s.labels_total} decisions · ${s.pool_size} images · round ${s.round}`;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const anns = Object.entries(s.counts.by_annotator);
  table("counts", ["annotator", "stylistic", "not stylistic", "skip"],
    anns.map(([a, c]) => [a, c.stylistic, c.not_stylistic, c.skip])
      .concat([["all", bl.stylistic, bl.not_stylistic, bl.skip]]));
  const cons = s.counts.consensus;
  $("consensus").textContent = `training labels (consensus): ${cons.stylistic} stylistic, ${cons.not_stylistic} not`;
  $("round-count").textContent = `(${s.rounds.length})`;
  document.body.dataset.rounds = String(s.rounds.length);
  roundsPlot(s.rounds);
  // a figure from fewer than min_held_out held-out labels carries a caveat wherever it is shown
  const few = (n) => (n ?? 0) < s.min_held_out ?
    `from only ${n ?? 0} held-out labels (fewer than ${s.min_held_out}): a rough figure` : null;
  const fig = (v, n) => ({ text: fmt(v), caveat: v === null || v === undefined ? null : few(n) });
  table("rounds", ["round", "labels", "acc.", "ROC-AUC", "acc. random", "ECE", "n val", "model"],
    s.rounds.map((r) => [r.round, r.n_labels, fig(r.metrics.accuracy, r.metrics.n_val),
      fig(r.metrics.roc_auc, r.metrics.n_val),
      r.metrics.accuracy_random == null ? `– (n=${r.metrics.n_val_random ?? 0})` :
        fig(r.metrics.accuracy_random, r.metrics.n_val_random),
      fig(r.metrics.ece_after, r.metrics.n_val), r.metrics.n_val ?? "–", r.model_version]));
  const last = s.rounds.length ? s.rounds[s.rounds.length - 1] : null;
  const caveat = last ? few(last.metrics.n_val) : null;
  $("heldout-caveat").hidden = !caveat;
  $("heldout-caveat").textContent = caveat ? `⚠ The latest round's accuracy, ROC-AUC and ECE come ${caveat}; ` +
    "label more before trusting them." : "";
  const p = s.progress;
  $("progress").textContent = `${p.labelled} labelled · ${p.left_in_pool} left in pool · ` +
    (p.per_class_needed > 0 ? `first model after ${p.per_class_needed} more of the rarer class` :
      `${p.to_next_retrain} to the next retrain`);
  $("retrain").textContent = s.retraining ? "retraining…" :
    (last ? `next round after ${last.n_labels + s.retrain_every} labels` :
      `first round once both classes have ${s.min_per_class} labels and ${s.retrain_every} labels exist`);
  const ag = s.agreement;
  $("kappa").textContent = ag.mean_kappa === null ? `no overlap yet (${ag.items_multi} items with 2+ annotators)` :
    `mean κ = ${fmt(ag.mean_kappa)} over ${ag.items_multi} items; ${ag.items_disagreed} disagreements`;
  table("pairs", ["annotators", "items", "agreement", "κ"],
    ag.pairs.map((p) => [p.annotators.join(" / "), p.n_items, fmt(p.observed_agreement), fmt(p.kappa)]));
  histPlot(s.histogram);
  $("features").textContent = `${s.histogram.n_scored} scored · features cached for ${s.features_cached} of ` +
    `${s.pool_size}` + (s.feature_errors ? ` · ${s.feature_errors} unreadable` : "");
}

async function post(path, body, headers) {
  const r = await fetch(path, { method: "POST", credentials: "same-origin", body, headers });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

$("btn-retrain").addEventListener("click", async () => {
  try { await post("/api/retrain"); $("retrain").textContent = "retraining…"; }
  catch (e) { $("status").textContent = e.message; }
});
$("btn-checkpoint").addEventListener("click", async () => {
  try { const r = await post("/api/export/checkpoint"); $("checkpoint").textContent = `saved ${r.path} · ${r.use}`; }
  catch (e) { $("checkpoint").textContent = e.message; }
});
$("btn-import").addEventListener("click", async () => {
  const f = $("import-file").files[0];
  if (!f) { $("import-result").textContent = "choose a .csv or .parquet file"; return; }
  const format = f.name.toLowerCase().endsWith(".parquet") ? "parquet" : "csv";
  try {
    const type = format === "parquet" ? "application/vnd.apache.parquet" : "text/csv";
    const r = await post(`/api/import?format=${format}`, f, { "Content-Type": type });
    $("import-result").textContent = `imported ${r.imported} decisions`;
    refresh();
  } catch (e) { $("import-result").textContent = e.message; }
});
refresh();
setInterval(refresh, 2000);
