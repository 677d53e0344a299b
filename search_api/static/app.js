// imgrec web page: upload or drop an image, show the top-k look-alikes, click one for more like it.
"use strict";

const main = document.querySelector("main");
const searchUrl = main.dataset.searchUrl;
const statsUrl = main.dataset.statsUrl;
const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const drop = $("drop");

// Read keys only: when the server needs a key for reads, the person pastes a read key; it is kept in
// sessionStorage (this tab, until it closes) and sent to this server only. A write key is refused.
const readKeyRequired = main.dataset.readKeyRequired === "true";
const KEY_STORE = "imgrec.readKey";
let readKey = readKeyRequired ? sessionStorage.getItem(KEY_STORE) : null;

function askForKey(message) {
  readKey = null;
  sessionStorage.removeItem(KEY_STORE);
  $("key-form").hidden = false;
  showError(message);
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  if (key.startsWith("imgrec_w_")) {
    askForKey("That is a write key: never paste a write key into a web page. Ask for a read key (imgrec_r_…).");
    return;
  }
  if (!key.startsWith("imgrec_r_")) {
    askForKey("That is not a read key: read keys start with imgrec_r_.");
    return;
  }
  readKey = key;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-form").hidden = true;
  showError("");
  if (readKeyRequired && !readKey) {
  askForKey("This server needs a read key for searches: paste one above.");
} else {
  loadLabels();
}
});

function withKey(options) {
  if (!readKey) return options || {};
  return { ...options, headers: { ...(options && options.headers), Authorization: `Bearer ${readKey}` } };
}

// <img src> cannot send a key: with one, images are fetched with it and shown from blob: URLs.
async function setImage(img, url) {
  if (!readKey || url.startsWith("blob:")) { img.src = url; return; }
  const response = await fetch(url, withKey());
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

function formatScore(score, kind) {
  return `${kind === "similarity" ? "sim" : "dist"} ${score.toFixed(3)}`;
}

async function callApi(url, options) {
  const response = await fetch(url, withKey(options));
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (response.status === 401 && readKeyRequired) {
    askForKey(`This server needs a read key for searches${readKey ? "; the key given was refused" : ""}: ` +
      (body && body.message ? body.message : "401"));
    throw new Error("a read key is needed");
  }
  if (!response.ok) {
    throw new Error(body && body.message ? body.message : `the server answered ${response.status}`);
  }
  return body;
}

function query() {
  const params = new URLSearchParams({ k: $("k").value || "12" });
  if ($("label").value) params.set("label", $("label").value);
  return params.toString();
}

function showQuery(title, src, meta) {
  $("query-title").textContent = title;
  setImage($("query-image"), src);
  $("query-meta").textContent = meta;
  $("query").hidden = false;
}

function showResults(answer, title) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const hit of answer.results) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = hit.id;
    const button = document.createElement("button");
    button.type = "button";
    button.title = `More like item ${hit.id}`;
    const img = document.createElement("img");
    setImage(img, hit.thumbnail_url);
    img.alt = `${hit.label} (item ${hit.id})`;
    img.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.innerHTML = "<span class=label></span><span class=score></span>";
    caption.querySelector(".label").textContent = hit.label;
    caption.querySelector(".score").textContent = formatScore(hit.score, answer.score_kind);
    button.append(img, caption);
    button.addEventListener("click", () => moreLike(hit));
    li.append(button);
    grid.append(li);
  }
  $("results-title").textContent = answer.results.length ? title : "No results";
  $("results").hidden = false;
  const ix = answer.index;
  $("index-info").textContent =
    `Answered by index generation ${ix.generation} (${ix.item_count} items, model ${ix.model_fingerprint.slice(0, 12)}, ` +
    `created ${new Date(ix.created_at).toLocaleString()}); scores are ${answer.score_kind === "similarity" ? "similarities (higher is closer)" : "distances (lower is closer)"}.`;
}

async function searchFile(file) {
  showError("");
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  setStatus(`Searching for ${file.name}…`);
  try {
    const answer = await callApi(`${searchUrl}?${query()}`, { method: "POST", body: form });
    const t = answer.timings;
    const novelty = answer.novelty_percentile == null ? "" : `, novelty ${answer.novelty_percentile.toFixed(0)}th percentile`;
    showQuery("Your image", URL.createObjectURL(file),
      `${file.name}: ${answer.query.width}×${answer.query.height}${novelty}`);
    showResults(answer, "Most alike");
    setStatus(`${answer.results.length} results in ${t.total_ms.toFixed(0)} ms ` +
      `(decode ${t.decode_ms.toFixed(1)}, embed ${t.embed_ms.toFixed(1)}, search ${t.search_ms.toFixed(1)} ms)`);
  } catch (e) {
    setStatus("");
    if (!$("key-form").hidden) return;  // the key form says what is needed
    showError(`Could not search with ${file.name}: ${e.message}`);
  }
}

async function moreLike(hit) {
  showError("");
  setStatus(`Finding more like item ${hit.id}…`);
  try {
    const answer = await callApi(`${hit.similar_url}?${query()}`);
    showQuery(`More like item ${hit.id}`, hit.thumbnail_url, `${hit.label}, item ${hit.id}`);
    showResults(answer, `More like item ${hit.id}`);
    setStatus(`${answer.results.length} results in ${answer.timings.total_ms.toFixed(0)} ms`);
  } catch (e) {
    setStatus("");
    if (!$("key-form").hidden) return;
    showError(`Could not find items like ${hit.id}: ${e.message}`);
  }
}

async function loadLabels() {
  try {
    const stats = await callApi(statsUrl);
    const select = $("label");
    for (const name of Object.keys(stats.labels).sort()) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = `${name} (${stats.labels[name]})`;
      select.append(option);
    }
  } catch (e) {
    if (!$("key-form").hidden) return;
    showError(`The index is not ready: ${e.message}`);
  }
}

fileInput.addEventListener("change", () => searchFile(fileInput.files[0]));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer.files.length) searchFile(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
});
if (readKeyRequired && !readKey) {
  askForKey("This server needs a read key for searches: paste one above.");
} else {
  loadLabels();
}
