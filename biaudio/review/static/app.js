// BiAudio QA review page. No framework, no network beyond this server: the page must work on an
// offline laptop and be auditable in one read. Every decision is POSTed and the server commits it
// to SQLite before answering, so the page keeps no state worth losing.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";

const S = {
  state: null,      // /api/state
  index: 0,         // current position in the pass
  clip: null,       // /api/clip payload
  rejecting: false, // reason picker open
  pendingReason: null,
  queue: Promise.resolve(), // actions run one after another, so fast key presses never race
};

function api(path, body) {
  const opts = { headers: { "X-Review-Token": TOKEN }, cache: "no-store" };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  return fetch(path, opts).then(async (r) => {
    const data = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
  });
}

function enqueue(fn) {
  S.queue = S.queue.then(fn).catch((e) => status(e.message, "error"));
  return S.queue;
}

function status(text, kind) {
  const el = $("status");
  el.textContent = text || "";
  el.className = "status " + (kind || "");
}

function media(path) {
  return "/media/" + path.split("/").map(encodeURIComponent).join("/") + "?token=" + encodeURIComponent(TOKEN);
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "n/a";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits ?? 3);
  return String(v);
}

// ---------------------------------------------------------------------------------------------

function renderHeader() {
  const st = S.state;
  const p = st.progress;
  $("meta").textContent = `pass ${st.pass} · ${st.reviewer}` +
    (st.sample != null ? ` · sample ${st.sample} (seed ${st.seed})` : "") +
    (st.where ? ` · where ${st.where}` : "");
  $("pos").textContent = st.total ? `clip ${S.index + 1} of ${st.total}` : "no clips selected";
  $("bar-fill").style.width = st.total ? `${(100 * p.done) / st.total}%` : "0";
  $("progress-text").textContent = `${p.done} / ${p.total} decided`;
  const chips = $("chips");
  chips.replaceChildren();
  for (const [k, label] of [["accept", "accepted"], ["reject", "rejected"], ["flag", "flagged"], ["skip", "skipped"]]) {
    const c = document.createElement("span");
    c.className = "chip " + k;
    c.textContent = `${label} ${p.decisions[k] || 0}`;
    chips.appendChild(c);
  }
  renderReasons();
}

function renderReasons() {
  const box = $("reasons");
  box.replaceChildren();
  box.classList.toggle("open", S.rejecting);
  for (const r of S.state.reasons) {
    const b = document.createElement("button");
    b.className = "reason" + (S.pendingReason === r.slug ? " picked" : "");
    b.dataset.reason = r.slug;
    const n = S.state.progress.reasons[r.slug] || 0;
    b.innerHTML = `<kbd>${r.key}</kbd> `;
    b.appendChild(document.createTextNode(r.label + (r.needs_note ? " + note" : "")));
    const cnt = document.createElement("span");
    cnt.className = "count";
    cnt.textContent = n;
    b.appendChild(cnt);
    b.addEventListener("click", () => { S.rejecting = true; pickReason(r.slug); });
    box.appendChild(b);
  }
}

function renderClip() {
  const c = S.clip;
  $("clip-id").textContent = c.clip_id;
  const d = c.decision;
  const decided = $("decided");
  decided.className = "decided " + (d ? d.decision : "");
  decided.textContent = d ? `${d.decision}${d.reason ? " · " + d.reason : ""}${d.note ? " · " + d.note : ""}` : "not decided";

  // video (+ binaural AAC track)
  const v = $("video");
  const vm = c.media.video;
  if (vm.present) {
    $("video-missing").hidden = true;
    v.hidden = false;
    const src = media(vm.path);
    if (v.getAttribute("src") !== src) {
      v.setAttribute("src", src);
      v.load();
    }
    v.play().catch(() => {}); // autoplay may be refused until the first key press; replay works
  } else {
    v.pause();
    v.removeAttribute("src");
    v.load();
    v.hidden = true;
    const m = $("video-missing");
    m.hidden = false;
    m.textContent = `video missing: ${vm.raw || "(no video_path)"} — decide from the other evidence or skip`;
  }

  // preview
  const img = $("preview");
  const pm = c.media.preview;
  if (pm.present) {
    img.src = media(pm.path);
    img.hidden = false;
    $("preview-missing").hidden = true;
  } else {
    img.removeAttribute("src");
    img.hidden = true;
    const m = $("preview-missing");
    m.hidden = false;
    m.textContent = pm.raw ? `preview missing: ${pm.raw}` : "no preview";
  }

  // caption
  $("caption").textContent = c.caption || "(no caption)";
  const parts = $("caption-parts");
  parts.replaceChildren();
  for (const [k, label] of [["caption_visible", "visible"], ["caption_invisible", "invisible"]]) {
    if (!c[k]) continue;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = c[k];
    parts.append(dt, dd);
  }

  renderScores(c);
  renderPlot(c);
  renderHeader();
}

const SCORE_LABELS = {
  lr_difference: ["L/R difference", 0.01, "low"],
  silence_ratio: ["silence ratio", 0.9, "high"],
  static_ratio: ["static ratio", 0.85, "high"],
  speech_ratio: ["speech ratio", 0.3, "high"],
  clip_azimuth_deg: ["source azimuth °", null],
  clip_elevation_deg: ["source elevation °", null],
};

function renderScores(c) {
  const t = $("scores");
  t.replaceChildren();
  const add = (label, value, warn, digits) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = label;
    const td = document.createElement("td");
    td.textContent = fmt(value, digits);
    if (warn) td.className = "warn";
    tr.append(th, td);
    t.appendChild(tr);
  };
  for (const [k, [label, thr, dir]] of Object.entries(SCORE_LABELS)) {
    if (!(k in c.scores)) continue;
    const v = c.scores[k];
    const warn = thr != null && v != null && (dir === "low" ? v < thr * 2 : v > thr * 0.8);
    add(label, v, warn, k.endsWith("_deg") ? 1 : 3);
  }
  const i = c.info;
  if ("start_s" in i || "duration_s" in i) add("time in source", `${fmt(i.start_s, 2)} s + ${fmt(i.duration_s, 2)} s`);
  if ("trajectory_mode" in i) add("camera path", `${fmt(i.trajectory_mode)}, FOV ${fmt(i.hfov_deg, 0)}°`);
  if ("split" in i) add("split / source", `${fmt(i.split)} · ${fmt(i.source_id)}${i.group_id && i.group_id !== i.source_id ? " (video " + i.group_id + ")" : ""}`);
  const a = c.media.audio;
  add("lossless audio", a.present ? a.path : (a.raw ? `missing: ${a.raw}` : "n/a"), !a.present && a.raw);
  if ("qa_status" in i) add("manifest qa_status", `${fmt(i.qa_status)}${i.qa_reason ? " · " + i.qa_reason : ""}`);
}

// ---------------------------------------------------------------------------------------------
// Plot: camera yaw (line, with its field of view as a band) against the dominant sound azimuth
// (dots) over clip time. Azimuth is ccw, +90 = left, so "up" on the plot is "to the left".

function el(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function unwrap(a) {
  const out = [];
  for (let i = 0; i < a.length; i++) {
    if (i === 0) { out.push(a[0]); continue; }
    let d = a[i] - a[i - 1];
    d = ((d + 180) % 360 + 360) % 360 - 180;
    out.push(out[i - 1] + d);
  }
  return out;
}

const wrap = (x) => ((x + 180) % 360 + 360) % 360 - 180;

function renderPlot(c) {
  const box = $("plot");
  box.replaceChildren();
  const W = 360, H = 190, L = 34, R = 8, T = 8, B = 22;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "camera yaw and sound azimuth over time" }, box);
  const p = c.plot;
  let t = p.t.slice(), wt = p.win_t.slice();
  const dur = c.info.duration_s || Math.max(0, ...t, ...wt) || 1;
  // Times may be in source seconds; shift them to clip time when they clearly are.
  const s0 = c.info.start_s || 0;
  const shift = (arr) => (s0 > 0 && arr.length && Math.min(...arr) >= s0 - 1e-6 && Math.max(...arr) > dur + 0.5) ? arr.map((x) => x - s0) : arr;
  t = shift(t); wt = shift(wt);
  const x = (s) => L + ((W - L - R) * s) / dur;
  const y = (deg) => T + ((H - T - B) * (180 - deg)) / 360;
  const clip = el("clipPath", { id: "plotclip" }, el("defs", {}, svg));
  el("rect", { x: L, y: T, width: W - L - R, height: H - T - B }, clip);
  el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }, svg);
  for (const g of [-180, -90, 0, 90, 180]) {
    el("line", { x1: L, x2: W - R, y1: y(g), y2: y(g), class: g === 0 ? "grid zero" : "grid" }, svg);
    const lab = el("text", { x: L - 4, y: y(g) + 3, class: "tick", "text-anchor": "end" }, svg);
    lab.textContent = g === 90 ? "90 L" : g === -90 ? "-90 R" : String(g);
  }
  const nt = Math.max(1, Math.round(dur));
  const step = nt > 10 ? Math.ceil(nt / 8) : 1;
  for (let s = 0; s <= dur + 1e-6; s += step) {
    const lab = el("text", { x: x(s), y: H - 6, class: "tick", "text-anchor": "middle" }, svg);
    lab.textContent = `${s}s`;
  }
  const g = el("g", { "clip-path": "url(#plotclip)" }, svg);
  if (!t.length && !wt.length) {
    const msg = el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, svg);
    msg.textContent = "no trajectory / direction data";
    return;
  }
  if (t.length) {
    const yaw = unwrap(p.yaw);
    const fov = c.info.hfov_deg || 90;
    const fovPx = ((H - T - B) * fov) / 360;
    for (const off of [-720, -360, 0, 360, 720]) {
      const pts = t.map((s, i) => `${x(s).toFixed(1)},${y(yaw[i] + off).toFixed(1)}`).join(" ");
      el("polyline", { points: pts, class: "fov", "stroke-width": fovPx.toFixed(1) }, g);
      el("polyline", { points: pts, class: "yaw" }, g);
    }
  }
  const es = p.win_energy_db.filter((e) => e != null);
  const emax = es.length ? Math.max(...es) : 0;
  wt.forEach((s, i) => {
    const e = p.win_energy_db[i];
    const op = e == null ? 0.9 : Math.max(0.25, Math.min(1, 1 + (e - emax) / 30));
    el("circle", { cx: x(s).toFixed(1), cy: y(wrap(p.win_az[i])).toFixed(1), r: 2.6, class: "az", "fill-opacity": op.toFixed(2) }, g);
  });
  S.cursor = el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "cursor" }, svg);
  S.cursorX = x;
}

function moveCursor() {
  if (!S.cursor) return;
  const xx = S.cursorX($("video").currentTime || 0).toFixed(1);
  S.cursor.setAttribute("x1", xx);
  S.cursor.setAttribute("x2", xx);
}

// ---------------------------------------------------------------------------------------------

async function loadState() {
  S.state = await api("/api/state");
}

async function go(i) {
  if (!S.state.total) return;
  S.index = Math.max(0, Math.min(S.state.total - 1, i));
  S.clip = await api(`/api/clip?i=${S.index}`);
  closeReject();
  renderClip();
}

function closeReject() {
  S.rejecting = false;
  S.pendingReason = null;
  $("note").classList.remove("needed");
}

function banner(text) {
  const b = $("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

async function decide(decision, reason) {
  const note = $("note").value.trim();
  const res = await api("/api/decision", { index: S.index, clip_id: S.clip.clip_id, decision, reason: reason || null, note: note || null });
  $("note").value = "";
  $("note").blur();
  S.state.progress = res.progress;
  status(`saved: ${S.clip.clip_id} → ${decision}${reason ? " (" + reason + ")" : ""}`, "ok");
  if (res.next_index === null || res.next_index === undefined) {
    banner(`Pass ${S.state.pass} complete: every clip is decided. Thank you!`);
    S.clip = await api(`/api/clip?i=${S.index}`);
    closeReject();
    renderClip();
  } else {
    banner("");
    await go(res.next_index);
  }
}

function startReject() {
  S.rejecting = true;
  S.pendingReason = null;
  renderReasons();
  status("reject: pick a reason with 1–9 (Esc cancels)", "");
}

function pickReason(slug) {
  const r = S.state.reasons.find((x) => x.slug === slug);
  if (!r) return;
  if (r.needs_note && !$("note").value.trim()) {
    S.pendingReason = slug;
    renderReasons();
    $("note").classList.add("needed");
    $("note").focus();
    status(`“${r.label}” needs a note: type it, then Enter`, "");
    return;
  }
  enqueue(() => decide("reject", slug));
}

async function undo() {
  const res = await api("/api/undo", {});
  S.state.progress = res.progress;
  if (!res.undone) { status("nothing to undo", ""); renderHeader(); return; }
  banner("");
  status(`undone: ${res.undone.clip_id} (${res.undone.decision})`, "ok");
  if (res.index !== null && res.index !== undefined) await go(res.index);
  else renderHeader();
}

function replay() {
  const v = $("video");
  if (v.hidden) return;
  v.currentTime = 0;
  v.play().catch(() => {});
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const note = $("note");
  if (document.activeElement === note) {
    if (e.key === "Enter") {
      e.preventDefault();
      if (S.pendingReason) enqueue(() => decide("reject", S.pendingReason));
      else note.blur();
    } else if (e.key === "Escape") {
      note.blur();
      closeReject();
      renderReasons();
    }
    return;
  }
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (S.rejecting && /^[1-9]$/.test(k)) {
    const r = S.state.reasons.find((x) => x.key === k);
    if (r) { e.preventDefault(); pickReason(r.slug); }
    return;
  }
  const actions = {
    a: () => enqueue(() => decide("accept")),
    r: () => startReject(),
    f: () => enqueue(() => decide("flag")),
    s: () => enqueue(() => decide("skip")),
    u: () => enqueue(undo),
    j: () => enqueue(() => go(S.index + 1)),
    ArrowRight: () => enqueue(() => go(S.index + 1)),
    ArrowDown: () => enqueue(() => go(S.index + 1)),
    k: () => enqueue(() => go(S.index - 1)),
    ArrowLeft: () => enqueue(() => go(S.index - 1)),
    ArrowUp: () => enqueue(() => go(S.index - 1)),
    " ": () => replay(),
    p: () => replay(),
    n: () => note.focus(),
    Escape: () => { closeReject(); renderReasons(); status("", ""); },
  };
  const fn = actions[k];
  if (!fn) return;
  e.preventDefault();
  fn();
}

async function main() {
  if (!TOKEN) {
    banner("This page needs the session token: open the URL printed by `biaudio review` (…/?token=…).");
    return;
  }
  document.addEventListener("keydown", onKey);
  for (const b of document.querySelectorAll(".buttons button")) {
    b.addEventListener("click", () => {
      const act = b.dataset.act;
      if (act === "reject") startReject();
      else enqueue(() => decide(act));
    });
  }
  $("video").addEventListener("timeupdate", moveCursor);
  try {
    await loadState();
  } catch (e) {
    banner(`Cannot load the review state: ${e.message}`);
    return;
  }
  if (!S.state.total) {
    renderHeader();
    banner("No clips match this pass's selection (--where / --sample).");
    return;
  }
  if (S.state.complete) banner(`Pass ${S.state.pass} complete: every clip is decided. J/K to browse, U to undo.`);
  await enqueue(() => go(S.state.resume_index ?? 0));
  document.body.dataset.ready = "1";
}

main();
