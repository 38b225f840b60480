// The udrl-search page: one POST /v1/search with lists=true, rendered as it comes back.
// Every text goes in through textContent (never innerHTML); thumbnails come from
// /v1/thumbnail as blobs, so the API key travels in a header and never in a URL.
"use strict";

const KEY = "udrl.apiKey";
const CHANNELS = ["raw", "dense", "rewrite"];
let config = null;
let thumbUrls = [];

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text, isError) {
  const s = $("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = sessionStorage.getItem(KEY);
  if (key) h["X-API-Key"] = key;
  return h;
}

function askForKey(message) {
  const panel = $("key-panel");
  panel.hidden = false;
  const err = $("key-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("key").focus();
}

class Unauthorized extends Error {}

async function api(path, init) {
  const response = await fetch(path, Object.assign({}, init, {
    headers: headers(init && init.headers), credentials: "same-origin",
  }));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey("The service refused the key; enter it again.");
    throw new Unauthorized("API key missing or refused");
  }
  return response;
}

function fmt(x, digits) {
  return typeof x === "number" ? x.toFixed(digits === undefined ? 3 : digits) : String(x);
}

// -- request -----------------------------------------------------------------------------

function requestBody() {
  const body = { query: $("q").value, lists: true, fusion: $("fusion").checked };
  if ($("task").value) body.task = $("task").value;
  if ($("length").value) body.length = Number($("length").value);
  if ($("relevance").value) body.relevance = Number($("relevance").value);
  if ($("k").value) body.k = Number($("k").value);
  return body;
}

async function search(event) {
  if (event) event.preventDefault();
  if (config && config.auth && !sessionStorage.getItem(KEY)) {
    askForKey();
    return;
  }
  const body = requestBody();
  const params = new URLSearchParams({ q: body.query });
  history.replaceState(null, "", "?" + params.toString());
  status("Searching…");
  $("go").disabled = true;
  try {
    const response = await api("/v1/search", {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
      cache: "no-store",
    });
    const data = await response.json();
    if (!response.ok) {
      const e = data && data.error;
      status(e ? `${response.status} ${e.code}: ${e.message}` : `HTTP ${response.status}`, true);
      return;
    }
    render(data);
    status("");
  } catch (e) {
    if (!(e instanceof Unauthorized)) status(`Search failed: ${e.message}`, true);
  } finally {
    $("go").disabled = false;
  }
}

// -- rendering ---------------------------------------------------------------------------

function render(data) {
  for (const url of thumbUrls) URL.revokeObjectURL(url);
  thumbUrls = [];
  const rw = data.rewrite;
  $("summary").hidden = false;
  $("intent").replaceChildren(
    el("strong", { text: rw.intent }), ` → ${rw.tasks.join(" + ")}`);
  $("probs").replaceChildren(...Object.entries(rw.probs).map(([name, p]) =>
    el("div", { class: "prob", "data-intent": name },
      el("span", { class: "prob-name", text: name }),
      el("span", { class: "bar" }, el("span", { class: "fill", style: { width: `${100 * p}%` } })),
      el("span", { class: "prob-value", text: fmt(p, 2) }))));
  if (!Object.keys(rw.probs).length) {
    $("probs").replaceChildren(el("p", { class: "note", text: "no intent model: both tasks" }));
  }
  $("path").replaceChildren(badge(rw.path), ` worst path of ${rw.prompts.length} prompt(s)`);
  $("model").textContent = `model ${rw.model_version}`;
  const stages = Object.entries(data.timings_ms);
  $("timings").replaceChildren(...stages.map(([stage, ms]) =>
    el("tr", { "data-stage": stage }, el("th", { text: stage }), el("td", { text: fmt(ms, 1) }))));
  $("modalities").replaceChildren(...data.modalities.map((m) =>
    modality(m, rw.prompts.find((p) => p.task === m.task))));
}

function badge(path) {
  return el("span", { class: `badge path-${path}`, text: path });
}

function promptBlock(p) {
  if (!p) return null;
  const asked = p.command.length;
  const off = p.path === "raw" ? 0 : p.words - asked;  // the raw query was not asked to fit
  const count = el("span", {
    class: "words" + (off ? " off" : ""), "data-words": p.words, "data-asked": asked,
    text: `${p.words} words · asked ${asked}` + (off ? ` (${off > 0 ? "+" : ""}${off})` : ""),
  });
  const facts = [badge(p.path), count, `relevance ${p.command.relevance}`,
    `source ${p.source}`, `${p.attempts} attempt(s)`];
  return el("div", { class: "prompt" },
    el("p", { class: "prompt-text" }, el("q", { text: p.prompt })),
    el("p", { class: "facts" }, facts.flatMap((f, i) => (i ? [" · ", f] : [f]))),
    p.reason ? el("p", { class: "reason", text: `fell back to the raw query: ${p.reason}` }) : null,
    p.rejected.length ? el("details", {},
      el("summary", { text: `${p.rejected.length} rejected` }),
      el("ul", {}, p.rejected.map((r) => el("li", { text: r })))) : null,
    p.alternatives.length ? el("p", { class: "note",
      text: `alternatives: ${p.alternatives.join(" | ")}` }) : null);
}

function weights(m) {
  const names = Object.keys(m.channels);
  if (!names.length) return null;
  return el("p", { class: "weights" }, "channels: ", names.flatMap((c, i) => {
    const w = m.channels[c];
    const item = el("span", { class: `chan chan-${c}` + (w === 0 ? " dropped" : ""),
      text: `${c} ${fmt(w, 2)}${w === 0 ? " (dropped)" : ""}` });
    return i ? [" ", item] : [item];
  }));
}

function modality(m, prompt) {
  const section = el("section", { class: "modality", "data-task": m.task },
    el("h2", {}, m.task, el("span", { class: "note", text: m.index_version
      ? ` index ${m.index_version}` : "" })),
    promptBlock(prompt), weights(m));
  if (m.error) {
    section.append(el("p", { class: "error", text: m.error }));
    return section;
  }
  const columns = CHANNELS.filter((c) => m.lists && m.lists[c])
    .map((c) => column(c, m.lists[c], m, m.channels[c]));
  if (m.fused) columns.push(column("fused", m.results, m));
  else if (!columns.length) columns.push(column("results", m.results, m));
  section.append(el("div", { class: "lists" }, columns));
  if (!m.fused && columns.length) {
    section.append(el("p", { class: "note",
      text: "One channel searched: the results are that channel's list." }));
  }
  return section;
}

function column(name, hits, m, weight) {
  const head = el("h3", { class: `chan-${name}` }, name,
    weight === undefined ? null : el("span", { class: "note", text: ` weight ${fmt(weight, 2)}` }));
  const list = el("ol", { class: "hits" }, hits.map((h, i) => hit(h, i + 1, m.task)));
  return el("div", { class: "list", "data-list": name }, head,
    hits.length ? list : el("p", { class: "note", text: "no hits" }));
}

function hit(h, rank, task) {
  const f = h.fields || {};
  const from = Object.entries(h.ranks).map(([c, r]) =>
    el("span", { class: `chan chan-${c}`, title: `rank ${r} in ${c}`, text: `${c} ${r}` }));
  const meta = el("div", { class: "meta" },
    el("span", { class: "rank", text: `#${rank}` }),
    el("span", { class: "score", title: "score", text: fmt(h.score, 4) }), from);
  const body = [];
  if (task === "image") {
    const img = el("img", { class: "thumb", alt: f.title || h.id, width: 96, height: 96 });
    thumb(img, h.id);
    body.push(img);
  }
  body.push(el("div", { class: "what" },
    el("div", { class: "title", text: f.title || h.id }),
    f.category ? el("div", { class: "category", text: f.category }) : null,
    Array.isArray(f.tags) && f.tags.length ? el("div", { class: "tags" },
      f.tags.map((t) => el("span", { class: "tag", text: t }))) : null,
    el("div", { class: "id note", text: h.id })));
  return el("li", { class: "hit", "data-id": h.id, "data-rank": rank }, meta,
    el("div", { class: "body" }, body));
}

const thumbCache = new Map();

function thumb(img, id) {
  if (!thumbCache.has(id)) {
    thumbCache.set(id, api(`/v1/thumbnail?id=${encodeURIComponent(id)}`)
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`)))));
  }
  thumbCache.get(id).then((blob) => {
    const url = URL.createObjectURL(blob);
    thumbUrls.push(url);
    img.src = url;
  }).catch(() => {
    thumbCache.delete(id);
    img.classList.add("missing");
  });
}

// -- start -------------------------------------------------------------------------------

async function start() {
  $("search-form").addEventListener("submit", search);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value);
    $("key").value = "";
    $("key-panel").hidden = true;
    thumbCache.clear();
    if ($("q").value) search();
  });
  try {
    const response = await fetch("/ui/config", { cache: "no-store" });
    config = await response.json();
    if (!response.ok) throw new Error(config.error ? config.error.message : response.status);
  } catch (e) {
    status(`The service is not ready: ${e.message}`, true);
    return;
  }
  const d = config.defaults;
  $("k").value = d.k;
  $("fusion").checked = d.fusion;
  $("length").placeholder = `${d.length.image} / ${d.length.template}`;
  $("length").title = `default: image ${d.length.image}, template ${d.length.template} words`;
  $("relevance").options[0].textContent = `default (${d.relevance})`;
  for (const task of ["image", "template"]) {
    if (!config.indexes[task]) {
      $("task").querySelector(`option[value=${task}]`).textContent = `${task} (no index)`;
    }
  }
  if (config.auth && !sessionStorage.getItem(KEY)) askForKey();
  const q = new URLSearchParams(location.search).get("q");
  if (q) {
    $("q").value = q;
    search();
  } else {
    $("q").focus();
  }
}

document.addEventListener("DOMContentLoaded", start);
