// Labeling page: keyboard-first binary decisions, prefetching, undo/edit of the last ten decisions, grid view.
// A decision is shown as done only after the server answered (it commits to SQLite before answering), so a
// label the page moved past is never lost.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  annotator: localStorage.getItem("bbst.annotator") || "",
  progress: null,
  examples: null,
  session: null,
  queue: [],          // prefetched items {key, score, reason, model_version, img}
  current: null,
  busy: false,
  fetching: null,
  recent: [],
  mode: "focus",
  grid: [], cursor: 0,
  timings: [],        // key press -> next image painted, ms (read by the benchmark)
  frameTimings: [],   // key press -> start of the frame that paints it, ms
};
window.bbst = state;

function imageUrl(key, size) { return `/api/image?key=${encodeURIComponent(key)}&size=${size}`; }

function status(msg) { $("status").textContent = msg || ""; }

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", ...opts };
  if (opts.json !== undefined) {
    init.method = init.method || "POST";
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, init);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

// names are compared after NFKC, trimming and case-folding (the server applies the same rule)
function normalizeName(name) { return name.normalize("NFKC").trim().replace(/\s+/g, " ").toLowerCase(); }

// ------------------------------------------------------------------ progress counter
function showProgress(p) {
  if (!p) return;
  state.progress = p;
  const el = $("progress");
  const you = p.labelled_by_you === undefined ? "" : ` (${p.labelled_by_you} by you)`;
  let next;
  if (p.per_class_needed > 0) next = `first model after ${p.per_class_needed} more of the rarer class`;
  else next = p.to_next_retrain > 0 ? `${p.to_next_retrain} to the next retrain` : "retrain due";
  el.replaceChildren(
    Object.assign(document.createElement("span"), { id: "progress-labelled", textContent: `${p.labelled} labelled${you}` }),
    document.createTextNode(" · "),
    Object.assign(document.createElement("span"), { id: "progress-left", textContent: `${p.left_in_pool} left in pool` }),
    document.createTextNode(" · "),
    Object.assign(document.createElement("span"), { id: "progress-next", textContent: next }));
  el.dataset.labelled = p.labelled;
  el.dataset.left = p.left_in_pool;
  el.dataset.toNext = p.to_next_retrain;
  // the model line follows the rounds as they come
  const model = $("model");
  model.textContent = p.model_version ? `round ${p.round} · model ${p.model_version}`
    : "no model yet: suggestions from an untrained model";
  model.dataset.round = p.round;
}

// ------------------------------------------------------------------ key overlay
function toggleKeys(open) {
  const o = $("keys-overlay");
  o.hidden = open === undefined ? !o.hidden : !open;
}

function renderKeys(keymap) {
  const rows = keymap.map((k) => {
    const tr = document.createElement("tr");
    const key = document.createElement("td"); key.append(Object.assign(document.createElement("kbd"), { textContent: k.key }));
    tr.append(key, Object.assign(document.createElement("td"), { textContent: k.focus }),
      Object.assign(document.createElement("td"), { textContent: k.grid }));
    return tr;
  });
  $("keys-table").replaceChildren(...rows);
}

function fmtScore(s) { return s === null || s === undefined ? "no score yet" : `score ${s.toFixed(3)}`; }

// ------------------------------------------------------------------ prefetch
function prefetch(item) {
  const img = new Image();
  img.alt = item.key;
  img.src = imageUrl(item.key, "view");
  // decode() resolves once the pixels are ready, so swapping the element in later paints immediately
  item.ready = img.decode().catch(() => null);
  item.img = img;
  return item;
}

async function fill(min) {
  if (!state.annotator) return;
  const want = state.session ? state.session.batch_size : 8;
  if (state.queue.length >= (min ?? Math.ceil(want / 2))) return;
  if (state.fetching) return state.fetching;
  const exclude = state.queue.map((i) => i.key).concat(state.current ? [state.current.key] : []);
  state.fetching = api("/api/next", { json: { annotator: state.annotator, n: want, exclude } })
    .then((r) => {
      showProgress(r.progress);
      for (const it of r.items) {
        if (!state.queue.some((q) => q.key === it.key) && !(state.current && state.current.key === it.key)) {
          state.queue.push(prefetch(it));
        }
      }
      $("model").textContent = r.model_version ? `round ${r.round} · model ${r.model_version}` : "no model yet";
      if (state.session && r.round !== state.session.round) refreshSession();  // new round: new examples
    })
    .catch((e) => status(`could not load images: ${e.message}`))
    .finally(() => { state.fetching = null; });
  return state.fetching;
}

// ------------------------------------------------------------------ focus view
async function showNext() {
  if (!state.queue.length) await fill(1);
  const item = state.queue.shift() || null;
  state.current = item;
  const viewer = $("viewer");
  if (!item) {
    viewer.replaceChildren(Object.assign(document.createElement("p"), { className: "muted",
      textContent: state.annotator ? "Nothing left to label in this pool." : "Enter your name to start." }));
    $("score").textContent = ""; $("item-key").textContent = "";
    document.body.dataset.currentKey = "";
    return;
  }
  await item.ready;
  viewer.replaceChildren(item.img);
  $("score").textContent = fmtScore(item.score);
  $("item-key").textContent = item.key;
  document.body.dataset.currentKey = item.key;
  fill();  // top up in the background
}

async function decide(label) {
  if (state.busy || !state.current || !state.annotator) return;
  state.busy = true;
  const t0 = performance.now();
  const item = state.current;
  try {
    const r = await api("/api/label", { json: { annotator: state.annotator, key: item.key, label,
      score_shown: item.score ?? null, model_version: item.model_version ?? null, reason: item.reason ?? null } });
    pushRecent({ id: r.id, key: item.key, label });
    showProgress(r.progress);
    noteDecisions(1);
    await showNext();
    // two animation frames: the callback runs once the frame with the new image has been painted
    // (frameTimings: the first frame callback, i.e. the frame that draws the image is being produced)
    requestAnimationFrame(() => {
      state.frameTimings.push(performance.now() - t0);
      requestAnimationFrame(() => state.timings.push(performance.now() - t0));
    });
    status("");
  } catch (e) {
    status(`not saved, try again: ${e.message}`);
  } finally {
    state.busy = false;
  }
}

async function undo() {
  if (state.busy || !state.annotator) return;
  state.busy = true;
  try {
    const r = await api("/api/undo", { json: { annotator: state.annotator } });
    state.recent = state.recent.filter((x) => x.id !== r.undone.id);
    renderRecent();
    showProgress(r.progress);
    if (state.mode === "focus") {
      if (state.current) state.queue.unshift(state.current);
      state.queue.unshift(prefetch(r.item));
      await showNext();
    }
    status(`undone: ${r.undone.key} (${r.undone.label})`);
  } catch (e) {
    status(e.message);
  } finally {
    state.busy = false;
  }
}

function zoom(open) {
  const z = $("zoom");
  if (open === false || !z.hidden) { z.hidden = true; z.replaceChildren(); return; }
  const key = state.mode === "grid" ? (state.grid[state.cursor] || {}).key : (state.current || {}).key;
  if (!key) return;
  const img = new Image();
  img.src = imageUrl(key, "full");  // original bytes, shown at natural size: scroll to pan
  z.replaceChildren(img);
  z.hidden = false;
}

// ------------------------------------------------------------------ last ten decisions
function pushRecent(r) {
  state.recent.unshift(r);
  state.recent = state.recent.slice(0, 10);
  renderRecent();
}

function renderRecent() {
  const ol = $("recent");
  ol.replaceChildren(...state.recent.map((r) => {
    const li = document.createElement("li");
    li.dataset.id = r.id;
    li.title = "click to change this decision";
    const img = new Image(); img.src = imageUrl(r.key, "thumb"); img.alt = r.key;
    const span = document.createElement("span");
    span.className = `lbl-${r.label}`; span.textContent = r.label.replace("_", " ");
    li.append(img, span);
    li.addEventListener("click", () => edit(r));
    return li;
  }));
}

async function edit(r) {
  const next = { stylistic: "not_stylistic", not_stylistic: "skip", skip: "stylistic" }[r.label];
  try {
    const res = await api("/api/edit", { json: { annotator: state.annotator, id: r.id, label: next } });
    r.id = res.id; r.label = next;
    renderRecent();
    status(`changed ${r.key} to ${next.replace("_", " ")}`);
  } catch (e) { status(e.message); }
}

// ------------------------------------------------------------------ grid view
async function loadGrid() {
  const n = 12;
  state.grid = [];
  await fill(n);
  while (state.grid.length < n && state.queue.length) {
    const it = state.queue.shift();
    it.decision = null;
    state.grid.push(it);
  }
  state.cursor = 0;
  renderGrid();
  fill();
}

function renderGrid() {
  $("grid").replaceChildren(...state.grid.map((it, i) => {
    const cell = document.createElement("div");
    cell.className = "cell" + (i === state.cursor ? " cursor" : "") + (it.decision ? ` d-${it.decision}` : "");
    cell.dataset.key = it.key;
    const img = new Image(); img.src = imageUrl(it.key, "thumb"); img.alt = it.key;
    const tag = document.createElement("span"); tag.className = "tag";
    tag.textContent = (it.score == null ? "–" : it.score.toFixed(2)) + (it.decision ? ` · ${it.decision}` : "");
    cell.append(img, tag);
    cell.addEventListener("click", () => { state.cursor = i; gridDecide(
      { null: "stylistic", stylistic: "not_stylistic", not_stylistic: "skip", skip: null }[it.decision], false); });
    return cell;
  }));
}

function gridDecide(label, advance = true) {
  const it = state.grid[state.cursor];
  if (!it) return;
  it.decision = label;
  if (advance) state.cursor = Math.min(state.cursor + 1, state.grid.length - 1);
  renderGrid();
}

async function gridSubmit() {
  if (state.busy) return;
  const decided = state.grid.filter((it) => it.decision);
  const undecided = state.grid.filter((it) => !it.decision).map((it) => it.key);
  state.busy = true;
  try {
    if (decided.length) {
      const items = decided.map((it) => ({ annotator: state.annotator, key: it.key, label: it.decision,
        score_shown: it.score ?? null, model_version: it.model_version ?? null, reason: it.reason ?? null }));
      const r = await api("/api/labels", { json: { annotator: state.annotator, items } });
      decided.forEach((it, i) => pushRecent({ id: r.ids[i], key: it.key, label: it.decision }));
      showProgress(r.progress);
      noteDecisions(decided.length);
    }
    if (undecided.length) await api("/api/release", { json: { annotator: state.annotator, keys: undecided } });
    status(`saved ${decided.length} decisions`);
    await loadGrid();
  } catch (e) {
    status(`not saved, try again: ${e.message}`);
  } finally { state.busy = false; }
}

function setMode(mode) {
  if (mode === state.mode) return;
  state.mode = mode;
  $("mode-focus").classList.toggle("active", mode === "focus");
  $("mode-grid").classList.toggle("active", mode === "grid");
  $("focus-view").hidden = mode !== "focus";
  $("grid-view").hidden = mode !== "grid";
  if (mode === "grid") {
    if (state.current) { state.queue.unshift(state.current); state.current = null; }
    loadGrid();
  } else {
    state.queue = state.grid.concat(state.queue).map((it) => (it.img ? it : prefetch(it)));
    state.grid = [];
    showNext();
  }
}

// ------------------------------------------------------------------ keyboard
document.addEventListener("keydown", (ev) => {
  if (ev.target && ev.target.tagName === "INPUT") return;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const k = ev.key;
  if (k === "?") { toggleKeys(); ev.preventDefault(); return; }
  if (k === "Escape") { zoom(false); toggleKeys(false); return; }
  if (k === "z") { zoom(); ev.preventDefault(); return; }
  if (k === "g") { setMode(state.mode === "focus" ? "grid" : "focus"); return; }
  if (k === "h") { $("guide").hidden = !$("guide").hidden; return; }
  if (state.mode === "focus") {
    if (k === "a") decide("stylistic");
    else if (k === "x") decide("not_stylistic");
    else if (k === " ") decide("skip");
    else if (k === "Backspace" || k === "Delete") undo();
    else return;
  } else {
    const cols = 6;  // matches #grid in label.css
    if (k === "a") gridDecide("stylistic");
    else if (k === "x") gridDecide("not_stylistic");
    else if (k === " ") gridDecide("skip");
    else if (k === "A" || k === "X") {
      state.grid.forEach((it) => { if (!it.decision) it.decision = k === "A" ? "stylistic" : "not_stylistic"; });
      renderGrid();
    } else if (k === "Backspace") gridDecide(null, false);
    else if (k === "Enter") gridSubmit();
    else if (k === "ArrowRight") { state.cursor = Math.min(state.cursor + 1, state.grid.length - 1); renderGrid(); }
    else if (k === "ArrowLeft") { state.cursor = Math.max(state.cursor - 1, 0); renderGrid(); }
    else if (k === "ArrowDown") { state.cursor = Math.min(state.cursor + cols, state.grid.length - 1); renderGrid(); }
    else if (k === "ArrowUp") { state.cursor = Math.max(state.cursor - cols, 0); renderGrid(); }
    else return;
  }
  ev.preventDefault();
});

// ------------------------------------------------------------------ start
function renderExamples(examples) {
  state.examples = examples;
  for (const cls of ["stylistic", "not_stylistic"]) {
    const keys = examples[cls] || [];
    const box = $(`ex-${cls}`);
    box.dataset.count = keys.length;
    if (!keys.length) {
      box.replaceChildren(Object.assign(document.createElement("p"), { className: "muted",
        textContent: "filled from confirmed labels as they come in" }));
      continue;
    }
    box.replaceChildren(...keys.map((key) => {
      const img = new Image(); img.src = imageUrl(key, "thumb"); img.alt = key; img.title = key; return img;
    }));
  }
}

// example panels follow the confirmed labels until each shows four images
let sinceExamples = 0;
function noteDecisions(n) {
  sinceExamples += n;
  const ex = state.examples || {};
  const full = ["stylistic", "not_stylistic"].every((c) => (ex[c] || []).length >= 4);
  if (full || sinceExamples < 3) return;
  sinceExamples = 0;
  api("/api/examples").then(renderExamples).catch(() => null);
}

async function refreshSession() {
  state.session = await api("/api/session");
  const s = state.session;
  renderExamples(s.examples);
  renderKeys(s.keymap);
  showProgress(s.progress);
}

async function start() {
  try {
    await refreshSession();
  } catch (e) { status(`cannot reach the server: ${e.message}`); return; }
  const s = state.session;
  $("guideline").textContent = s.guideline;
  const note = $("pool-note");
  note.textContent = s.pool_note || "";
  note.hidden = !s.pool_note;
  $("annotator").value = state.annotator;
  if (state.annotator) await begin();
  else { showNext(); $("annotator").focus(); }
}

async function begin() {
  try {
    const r = await api(`/api/recent?annotator=${encodeURIComponent(state.annotator)}`);
    state.recent = r.recent.map((x) => ({ id: x.id, key: x.key, label: x.label }));
    renderRecent();
  } catch (e) { status(e.message); return; }
  state.queue = []; state.current = null;
  document.body.dataset.annotator = state.annotator;
  if (state.mode === "grid") await loadGrid(); else await showNext();
}

$("annotator").addEventListener("change", async (ev) => {
  const name = normalizeName(ev.target.value);
  if (!/^[\p{L}\p{N}_][\p{L}\p{N}_ .@+-]*$/u.test(name)) { status("a name is letters, digits, space, . @ + -"); return; }
  ev.target.value = name;
  if (state.queue.length || state.current) {
    const keys = state.queue.map((i) => i.key).concat(state.current ? [state.current.key] : []);
    api("/api/release", { json: { annotator: state.annotator || name, keys } }).catch(() => null);
  }
  state.annotator = name;
  localStorage.setItem("bbst.annotator", name);
  ev.target.blur();
  await begin();
});
for (const id of ["btn-accept", "btn-reject", "btn-skip"]) {
  $(id).addEventListener("click", (ev) => decide(ev.currentTarget.dataset.label));
}
$("btn-undo").addEventListener("click", undo);
$("btn-zoom").addEventListener("click", () => zoom());
$("viewer").addEventListener("click", () => zoom());
$("zoom").addEventListener("click", () => zoom(false));
$("mode-focus").addEventListener("click", () => setMode("focus"));
$("mode-grid").addEventListener("click", () => setMode("grid"));
$("btn-grid-submit").addEventListener("click", gridSubmit);
$("btn-keys").addEventListener("click", () => toggleKeys());
$("keys-overlay").addEventListener("click", (ev) => { if (ev.target === $("keys-overlay")) toggleKeys(false); });
start();
