// MemoryTransit bank page: vanilla JS, no dependencies. Everything it shows comes from the
// JSON API of the server that served it (GET /codec, /stats, /slots, /slots/{i},
// /evictions/next; POST /read; DELETE /slots/{i}). With API keys on, the key the person types
// is sent in the X-API-Key header and kept in sessionStorage (this tab only), never in a URL.
"use strict";

const ROOT = document.body.dataset.root || "";
const KEY_STORE = "memorytransit-api-key";
const REFRESH_MS = 1000;
const MAX_PAGE = 100; // never more slots than this on the page at once

const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  codec: null, // GET /codec: {model, d, m, shape, kind}
  order: "slot",
  offset: 0,
  limit: 48,
  signature: null, // of the last /stats whose slots are drawn
  views: new Map(), // slot -> {last_write, view}: GET /slots/{i}, refetched when rewritten
  page: [], // the SlotSummary rows shown
  nextEvict: null,
  selected: null,
  timer: null,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (state.key) headers["X-API-Key"] = state.key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(ROOT + path, {
    method,
    headers,
    cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || response.statusText);
  }
  return data;
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ drawing items

// One value in [0, 1] -> a grey level 0..255 (what the browser test compares against).
function grey(v) {
  return Math.round(Math.min(1, Math.max(0, v)) * 255);
}

function itemSize() {
  const shape = state.codec.shape;
  return shape.length === 2 ? [shape[0], shape[1]] : [1, state.codec.d];
}

// Draws values (d numbers) on the canvas at one canvas pixel per value: grey levels for image
// codecs; for other codecs a strip scaled to its own min..max.
function drawItem(canvas, values) {
  const [h, w] = itemSize();
  canvas.width = w;
  canvas.height = h;
  let lo = 0;
  let span = 1;
  if (state.codec.kind !== "image") {
    lo = Math.min(...values);
    span = Math.max(...values) - lo || 1;
  }
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const g = grey((values[i] - lo) / span);
    img.data[4 * i] = g;
    img.data[4 * i + 1] = g;
    img.data[4 * i + 2] = g;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  canvas.classList.toggle("strip", h === 1);
}

// Text memories (the text-memory issue): when GET /slots/{i} carries the stored text, show it;
// until then a text codec's slot shows its number and counters only.
function slotText(view) {
  return view && typeof view.text === "string" ? view.text : "";
}

// ------------------------------------------------------------------ stats

function fmtBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function fmtSeconds(s) {
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function showStats(s) {
  $("stat-used").textContent = `${s.used} / ${s.capacity}`;
  $("used-bar").style.width = `${(100 * s.used) / Math.max(1, s.capacity)}%`;
  $("stat-hits").textContent = s.hits;
  $("stat-misses").textContent = s.misses;
  const queries = s.hits + s.misses;
  $("stat-hit-rate").textContent = queries ? `${((100 * s.hits) / queries).toFixed(1)} %` : "–";
  $("stat-reads").textContent = s.reads;
  $("stat-writes").textContent = s.writes;
  $("stat-evictions").textContent = s.evictions;
  $("stat-dtype").textContent = `${s.bank_dtype}, ${s.m} of ${s.d} (×${s.bytes_ratio.toFixed(1)})`;
  $("stat-bytes").textContent = fmtBytes(s.bank_bytes);
  const snap = s.last_snapshot;
  $("stat-snapshot").textContent = snap
    ? `LSN ${snap.lsn}, ${fmtBytes(snap.bytes)}, ${new Date(snap.time * 1000).toLocaleTimeString()}`
    : "none yet";
  const rec = s.recovery;
  const from = rec.snapshot ? rec.snapshot.split("/").pop() : "empty bank";
  const warnings = rec.warnings.length ? `, ${rec.warnings.length} warning(s)` : "";
  $("stat-recovery").textContent = `${from} + ${rec.replayed} WAL records${warnings}`;
  $("stat-uptime").textContent = fmtSeconds(s.uptime_s);
}

// ------------------------------------------------------------------ slots

function cellFor(slot) {
  let cell = document.querySelector(`figure.slot[data-slot="${slot}"]`);
  if (!cell) {
    cell = document.createElement("figure");
    cell.className = "slot";
    cell.dataset.slot = slot;
    const canvas = document.createElement("canvas");
    canvas.className = "recon";
    canvas.dataset.slot = slot;
    const caption = document.createElement("figcaption");
    cell.append(canvas, caption);
    cell.addEventListener("click", () => select(slot));
  }
  return cell;
}

async function slotView(summary) {
  const known = state.views.get(summary.slot);
  if (known && known.last_write === summary.last_write) return known.view;
  const view = await api(`/slots/${summary.slot}`);
  state.views.set(summary.slot, { last_write: view.last_write, view });
  return view;
}

function caption(cell, s) {
  const seen = s.last_access ? `read @${s.last_access}` : "never read";
  const text = slotText((state.views.get(s.slot) || {}).view);
  cell.querySelector("figcaption").innerHTML = "";
  const b = document.createElement("b");
  b.textContent = `#${s.slot}`;
  cell.querySelector("figcaption").append(b, ` · ${s.count}×`, document.createElement("br"), seen);
  if (text) cell.title = text;
}

async function refreshSlots() {
  const order = state.order;
  const [page, evict] = await Promise.all([
    api(`/slots?offset=${state.offset}&limit=${state.limit}&order=${order}`),
    api("/evictions/next?n=1"),
  ]);
  if (page.total > 0 && state.offset >= page.total) {
    state.offset = Math.max(0, Math.floor((page.total - 1) / state.limit) * state.limit);
    return refreshSlots();
  }
  state.page = page.slots;
  state.nextEvict = evict;
  const grid = $("grid");
  const cells = page.slots.map((s) => cellFor(s.slot));
  grid.replaceChildren(...cells);
  const target = evict.slots[0];
  page.slots.forEach((s, i) => {
    caption(cells[i], s);
    cells[i].classList.toggle("next-evict", evict.next !== null && s.slot === target);
    cells[i].classList.toggle("selected", s.slot === state.selected);
  });
  const last = page.offset + page.slots.length;
  $("page-info").textContent = page.total
    ? `${page.offset + 1}–${last} of ${page.total}`
    : "the bank is empty";
  $("prev-page").disabled = page.offset === 0;
  $("next-page").disabled = last >= page.total;
  $("next-eviction").textContent = evict.next
    ? `next write evicts slot ${evict.next.slot} (count ${evict.next.count}, last touched @${Math.max(
        evict.next.last_write,
        evict.next.last_access,
      )}): least frequently used, then least recently`
    : `next write takes free slot ${target}`;
  // reconstructions: fetched only for slots written since they were last drawn
  await Promise.all(
    page.slots.map(async (s, i) => {
      const canvas = cells[i].querySelector("canvas");
      if (canvas.dataset.drawn === String(s.last_write)) return;
      const view = await slotView(s);
      if (state.codec.kind === "text") {
        canvas.hidden = true; // no picture of an embedding; the text when the bank has it
      } else {
        drawItem(canvas, view.reconstruction);
      }
      caption(cells[i], s);
      canvas.dataset.drawn = String(s.last_write);
    }),
  );
  grid.dataset.tick = String(page.tick);
  setStatus("slots-status", "");
  if (state.selected !== null) await showDetail(state.selected, false);
}

// ------------------------------------------------------------------ one slot

function select(slot) {
  state.selected = slot;
  document.querySelectorAll("figure.slot").forEach((c) => {
    c.classList.toggle("selected", Number(c.dataset.slot) === slot);
  });
  setStatus("detail-status", "");
  showDetail(slot, true);
}

async function showDetail(slot, fetchNew) {
  const panel = $("detail-panel");
  panel.hidden = false;
  $("detail-slot").textContent = slot;
  try {
    const known = state.views.get(slot);
    const view = fetchNew || !known ? await api(`/slots/${slot}`) : known.view;
    state.views.set(slot, { last_write: view.last_write, view });
    if (state.codec.kind !== "text") drawItem($("detail-canvas"), view.reconstruction);
    $("detail-canvas").hidden = state.codec.kind === "text";
    $("detail-text").textContent = slotText(view);
    const summary = state.page.find((s) => s.slot === slot) || view;
    $("detail-counters").textContent =
      `count ${summary.count}, written @${summary.last_write}, ` +
      (summary.last_access ? `last read @${summary.last_access}` : "never read");
  } catch (e) {
    if (e.status === 404) {
      state.selected = null;
      panel.hidden = true;
    } else {
      setStatus("detail-status", e.message, true);
    }
  }
}

async function deleteSelected() {
  const slot = state.selected;
  if (slot === null) return;
  setStatus("detail-status", `deleting slot ${slot}…`);
  try {
    const out = await api(`/slots/${slot}`, { method: "DELETE" });
    state.views.delete(slot);
    state.selected = null;
    $("detail-panel").hidden = true;
    setStatus("slots-status", `deleted slot ${out.slot}; ${out.used} slots used`);
    state.signature = null; // redraw now
    await tick();
  } catch (e) {
    setStatus("detail-status", `delete refused: ${e.message}`, true);
  }
}

function useAsQuery() {
  const known = state.views.get(state.selected);
  if (!known) return;
  $("numbers").value = known.view.reconstruction.map((v) => v.toFixed(4)).join(", ");
  $("source-numbers").checked = true;
}

// ------------------------------------------------------------------ query

const pad = { drawing: false, last: null };

function clearDrawing() {
  const ctx = $("draw").getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, $("draw").width, $("draw").height);
}

function padPoint(event) {
  const canvas = $("draw");
  const r = canvas.getBoundingClientRect();
  return [
    ((event.clientX - r.left) * canvas.width) / r.width,
    ((event.clientY - r.top) * canvas.height) / r.height,
  ];
}

function stroke(from, to) {
  const canvas = $("draw");
  const ctx = canvas.getContext("2d");
  const [, w] = itemSize();
  ctx.strokeStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = (canvas.width / w) * (w <= 8 ? 1.3 : 2.4);
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...to);
  ctx.stroke();
}

function setupPad() {
  const canvas = $("draw");
  clearDrawing();
  canvas.addEventListener("pointerdown", (e) => {
    pad.drawing = true;
    pad.last = padPoint(e);
    stroke(pad.last, pad.last);
    $("source-draw").checked = true;
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!pad.drawing) return;
    const p = padPoint(e);
    stroke(pad.last, p);
    pad.last = p;
  });
  for (const ev of ["pointerup", "pointerleave"]) {
    canvas.addEventListener(ev, () => {
      pad.drawing = false;
    });
  }
}

// The drawing (or an uploaded image), averaged down to the item's shape, as values in [0, 1].
function drawingValues() {
  const [h, w] = itemSize();
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const ctx = small.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage($("draw"), 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const values = [];
  for (let i = 0; i < w * h; i++) {
    values.push((data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / (3 * 255));
  }
  return values;
}

async function uploadImage(file) {
  const bitmap = await createImageBitmap(file);
  const canvas = $("draw");
  const ctx = canvas.getContext("2d");
  clearDrawing();
  const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
  const [w, h] = [bitmap.width * scale, bitmap.height * scale];
  ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  $("source-draw").checked = true;
}

function parseNumbers(text) {
  const parts = text.replace(/[[\]]/g, " ").split(/[\s,;]+/).filter((t) => t.length);
  const values = parts.map(Number);
  const bad = parts.findIndex((t, i) => !Number.isFinite(values[i]));
  if (bad >= 0) throw new Error(`not a number: ${parts[bad].slice(0, 20)}`);
  return values;
}

async function search() {
  let query;
  try {
    query = $("source-numbers").checked ? parseNumbers($("numbers").value) : drawingValues();
  } catch (e) {
    setStatus("query-status", e.message, true);
    return;
  }
  if (query.length !== state.codec.d) {
    setStatus("query-status", `expected ${state.codec.d} numbers, got ${query.length}`, true);
    return;
  }
  const topK = Math.max(1, Math.min(20, Number($("top-k").value) || 1));
  setStatus("query-status", "searching…");
  try {
    const out = await api("/read", {
      method: "POST",
      body: { queries: [query], top_k: topK, reconstruct: true },
    });
    const hits = out.results[0];
    const sent = $("query-image");
    sent.hidden = state.codec.kind === "text";
    if (!sent.hidden) drawItem(sent, query); // what was sent, at the item's own size
    const list = $("hits");
    list.replaceChildren(
      ...hits.map((hit, rank) => {
        const li = document.createElement("li");
        li.className = "hit";
        li.dataset.slot = hit.slot;
        li.dataset.rank = rank;
        const row = document.createElement("div");
        const canvas = document.createElement("canvas");
        canvas.className = "recon";
        if (state.codec.kind !== "text") drawItem(canvas, hit.reconstruction);
        else canvas.hidden = true;
        const label = document.createElement("span");
        label.innerHTML = "";
        const b = document.createElement("b");
        b.textContent = `slot ${hit.slot}`;
        // a rescored hit (MT_RESCORE): score = cosine with its reconstruction, code = stage 1
        const code =
          hit.code_score !== undefined && Math.abs(hit.code_score - hit.score) >= 5e-5
            ? ` (code ${hit.code_score.toFixed(4)})`
            : "";
        label.append(b, ` score ${hit.score.toFixed(4)}${code} · count ${hit.count}`);
        row.append(canvas, label);
        li.append(row);
        li.addEventListener("click", () => select(hit.slot));
        return li;
      }),
    );
    list.dataset.searches = String(Number(list.dataset.searches || 0) + 1);
    setStatus("query-status", hits.length ? `${hits.length} hit(s), best first` : "no hit (miss)");
    state.signature = null; // the read moved counts: redraw now
    await tick();
  } catch (e) {
    setStatus("query-status", e.message, true);
  }
}

// ------------------------------------------------------------------ keys and the loop

function needKey(message) {
  $("auth").hidden = false;
  $("main").hidden = true;
  $("auth-message").textContent = message;
  $("auth-key").focus();
}

function showKeyState() {
  $("key-state").textContent = state.key ? "(with an API key)" : "";
  $("forget-key").hidden = !state.key;
}

// One refresh: the codec once, /stats every time, the slots when /stats says they changed.
// Returns false when polling must stop (the server wants a key).
async function refresh() {
  try {
    if (!state.codec) {
      state.codec = await api("/codec");
      const c = state.codec;
      $("codec").textContent = `${c.model}: d=${c.d} (${c.shape.join("×")}), m=${c.m}, ${c.kind}`;
      $("main").hidden = false;
      $("auth").hidden = true;
      showKeyState();
    }
    const stats = await api("/stats");
    showStats(stats);
    setStatus("stats-status", "");
    const signature = [stats.used, stats.writes, stats.reads, stats.evictions].join("/");
    if (signature !== state.signature) {
      await refreshSlots();
      state.signature = signature;
    }
  } catch (e) {
    if (e.status === 401) {
      state.codec = null;
      needKey(state.key ? `The server refused this key (${e.message}).` : "This server needs an API key.");
      return false;
    }
    setStatus("stats-status", `cannot reach the server: ${e.message}`, true);
  }
  return true;
}

// The live loop: one refresh at a time; a tick asked for during one runs right after it.
const loop = { busy: false, again: false };

async function tick() {
  if (loop.busy) {
    loop.again = true;
    return;
  }
  loop.busy = true;
  clearTimeout(state.timer);
  let go = true;
  try {
    do {
      loop.again = false;
      go = await refresh();
    } while (go && loop.again);
  } finally {
    loop.busy = false;
  }
  if (go) state.timer = setTimeout(tick, REFRESH_MS);
}

function setKey(key) {
  state.key = key;
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  state.codec = null;
  state.signature = null;
  state.views.clear();
  $("grid").replaceChildren();
}

function setup() {
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey($("auth-key").value.trim());
    $("auth-key").value = "";
    tick();
  });
  $("forget-key").addEventListener("click", () => {
    setKey("");
    tick();
  });
  $("order").addEventListener("change", () => {
    state.order = $("order").value;
    state.offset = 0;
    state.signature = null;
    tick();
  });
  $("page-size").addEventListener("change", () => {
    state.limit = Math.min(MAX_PAGE, Number($("page-size").value));
    state.offset = 0;
    state.signature = null;
    tick();
  });
  $("prev-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    state.signature = null;
    tick();
  });
  $("next-page").addEventListener("click", () => {
    state.offset += state.limit;
    state.signature = null;
    tick();
  });
  $("detail-delete").addEventListener("click", deleteSelected);
  $("detail-query").addEventListener("click", useAsQuery);
  $("search").addEventListener("click", search);
  $("numbers").addEventListener("input", () => {
    $("source-numbers").checked = true;
  });
  $("draw-clear").addEventListener("click", clearDrawing);
  $("upload").addEventListener("change", (e) => {
    if (e.target.files.length) uploadImage(e.target.files[0]);
  });
  setupPad();
  tick();
}

setup();
