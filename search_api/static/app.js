// imgrec web page: upload or drop an image, show the top-k look-alikes, click one for more like it.
//
// State: `held` is the query being shown (a file, or an item for "more like this"); the search settings are the
// named controls of #settings (k, label; later filters), mirrored in the URL so a reload or a shared link keeps
// them. Changing a setting re-runs the held query; only the latest search's answer is ever shown.
"use strict";

const main = document.querySelector("main");
const page = {
  searchUrl: main.dataset.searchUrl,
  statsUrl: main.dataset.statsUrl,
  defaultK: Number(main.dataset.defaultK),
  thumbnailSize: Number(main.dataset.thumbnailSize),
  thumbnailMaxSize: Number(main.dataset.thumbnailMaxSize),
};
const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const drop = $("drop");
const settings = $("settings");

let held = null; // {kind: "file", file, src} | {kind: "item", hit}
let heldSerial = 0; // identifies `held`, so a settings change re-runs only when something changed
let lastRun = ""; // held serial + settings of the search last started
let latest = 0; // sequence number of the latest search: older answers are dropped

// --- formatting --------------------------------------------------------------------------------------------

const ORDINAL_RULES = new Intl.PluralRules("en-US", { type: "ordinal" });
const ORDINAL_SUFFIX = { one: "st", two: "nd", few: "rd", other: "th" };

/** 1 -> "1st", 2 -> "2nd", 11 -> "11th", 91 -> "91st" (English ordinal rules, from Intl.PluralRules). */
function ordinal(n) {
  return `${n}${ORDINAL_SUFFIX[ORDINAL_RULES.select(n)]}`;
}

function formatScore(score, kind) {
  return `${kind === "similarity" ? "sim" : "dist"} ${score.toFixed(3)}`;
}

function noveltyText(percentile) {
  return percentile == null ? "" : `, novelty ${ordinal(Math.round(percentile))} percentile`;
}

// --- settings and the URL ----------------------------------------------------------------------------------

function namedControls() {
  return Array.from(settings.elements).filter((el) => el.name);
}

/** Bring k into 1..max (a typed 0, 500 or "" becomes a valid number shown in the box). */
function normaliseK() {
  const box = $("k");
  const n = Math.round(Number(box.value));
  const max = Number(box.max);
  box.value = String(Number.isFinite(n) && n >= 1 ? Math.min(n, max) : page.defaultK);
}

/** The settings as search API parameters (empty ones left out). */
function settingsParams() {
  const params = new URLSearchParams();
  for (const el of namedControls()) {
    if (el.value) params.set(el.name, el.value);
  }
  return params;
}

/** Write the settings that differ from the defaults into the address (no new history entry). */
function writeUrl() {
  const url = new URL(window.location.href);
  for (const el of namedControls()) {
    const isDefault = el.name === "k" ? Number(el.value) === page.defaultK : !el.value;
    if (isDefault) url.searchParams.delete(el.name);
    else url.searchParams.set(el.name, el.value);
  }
  window.history.replaceState(null, "", url);
}

/** Apply the address's value of one setting, when the control can show it. */
function readUrl(el) {
  const value = new URL(window.location.href).searchParams.get(el.name);
  if (value == null) return;
  if (el.tagName === "SELECT" && !Array.from(el.options).some((o) => o.value === value)) {
    showError(`There is no label "${value}" in this index: showing any label.`);
    return;
  }
  el.value = value;
  if (el.name === "k") normaliseK();
}

function settingsChanged() {
  normaliseK();
  writeUrl();
  run();
}

// --- showing things ----------------------------------------------------------------------------------------

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
  loadLabels();
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
  $("error").textContent = message;
}

function setStatus(text) {
  $("status").textContent = text;
}

/** Forget the shown query and results (after an error they would be mistaken for its answer). */
function clearShown() {
  $("query").hidden = true;
  $("query-image").removeAttribute("src");
  $("query-image").removeAttribute("srcset");
  $("results").hidden = true;
  $("grid").replaceChildren();
  $("index-info").textContent = "";
  main.classList.remove("has-query");
}

function thumbnailAt(url, size) {
  const u = new URL(url, window.location.href);
  u.searchParams.set("size", String(size));
  return u.pathname + u.search;
}

/** Point `img` at an item's thumbnail, with a sharper one for 2x screens. */
function setThumbnail(img, url) {
  const big = Math.min(2 * page.thumbnailSize, page.thumbnailMaxSize);
  if (readKey) { // fetched with the key, one blob: URL: the sharper size when the screen wants it
    img.removeAttribute("srcset");
    setImage(img, window.devicePixelRatio > 1 && big > page.thumbnailSize ? thumbnailAt(url, big) : url);
    return;
  }
  img.src = url;
  if (big > page.thumbnailSize) img.srcset = `${url} 1x, ${thumbnailAt(url, big)} 2x`;
  else img.removeAttribute("srcset");
}

function showQuery(title, meta, fillImage) {
  $("query-title").textContent = title;
  const img = $("query-image");
  img.removeAttribute("srcset");
  fillImage(img);
  $("query-meta").textContent = meta;
  $("query").hidden = false;
  main.classList.add("has-query");
}

/** One result card: the image (a button: more like this), then its caption lines (product fields go there). */
function resultCard(hit, scoreKind) {
  const li = document.createElement("li");
  li.className = "result";
  li.dataset.id = hit.id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "more-like";
  button.title = `More like item ${hit.id}`;
  const img = document.createElement("img");
  setThumbnail(img, hit.thumbnail_url);
  img.alt = `${hit.label} (item ${hit.id})`;
  img.loading = "lazy";
  button.append(img);
  button.addEventListener("click", () => moreLike(hit));
  const caption = document.createElement("div");
  caption.className = "caption";
  for (const [name, text] of [["label", hit.label], ["score", formatScore(hit.score, scoreKind)]]) {
    const span = document.createElement("span");
    span.className = name;
    span.textContent = text;
    caption.append(span);
  }
  li.append(button, caption);
  return li;
}

function showResults(answer, title) {
  $("grid").replaceChildren(...answer.results.map((hit) => resultCard(hit, answer.score_kind)));
  $("results-title").textContent = answer.results.length ? title : "No results";
  $("results").hidden = false;
  const ix = answer.index;
  $("index-info").textContent =
    `Answered by index generation ${ix.generation} (${ix.item_count} items, model ${ix.model_fingerprint.slice(0, 12)}, ` +
    `created ${new Date(ix.created_at).toLocaleString()}); scores are ${answer.score_kind === "similarity" ? "similarities (higher is closer)" : "distances (lower is closer)"}.`;
}

function timingText(answer) {
  const t = answer.timings;
  return `${answer.results.length} results in ${t.total_ms.toFixed(0)} ms ` +
    `(decode ${t.decode_ms.toFixed(1)}, embed ${t.embed_ms.toFixed(1)}, search ${t.search_ms.toFixed(1)} ms)`;
}

// --- searching ---------------------------------------------------------------------------------------------

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

/** Search with the held query and the current settings (again only when one of them changed). */
async function run() {
  if (!held) return;
  const params = settingsParams();
  const key = `${heldSerial}?${params}`;
  if (key === lastRun) return;
  lastRun = key;
  const seq = ++latest;
  const q = held;
  try {
    let answer;
    if (q.kind === "file") {
      setStatus(`Searching for ${q.file.name}…`);
      const form = new FormData();
      form.append("image", q.file);
      answer = await callApi(`${page.searchUrl}?${params}`, { method: "POST", body: form });
    } else {
      setStatus(`Finding more like item ${q.hit.id}…`);
      answer = await callApi(`${q.hit.similar_url}?${params}`);
    }
    if (seq !== latest) return; // a newer search was started meanwhile
    showError("");
    if (q.kind === "file") {
      showQuery("Your image", `${q.file.name}: ${answer.query.width}×${answer.query.height}${noveltyText(answer.novelty_percentile)}`,
        (img) => { img.src = q.src; });
      showResults(answer, "Most alike");
    } else {
      showQuery(`More like item ${q.hit.id}`, `${q.hit.label}, item ${q.hit.id}`,
        (img) => setThumbnail(img, q.hit.thumbnail_url));
      showResults(answer, `More like item ${q.hit.id}`);
    }
    setStatus(timingText(answer));
  } catch (e) {
    if (seq !== latest) return;
    hold(null);
    clearShown();
    setStatus("");
    if (!$("key-form").hidden) return; // the key form says what is needed
    showError(q.kind === "file"
      ? `Could not search with ${q.file.name}: ${e.message}`
      : `Could not find items like ${q.hit.id}: ${e.message}`);
  }
}

function hold(query) {
  if (held && held.src) URL.revokeObjectURL(held.src);
  held = query;
  heldSerial += 1;
  lastRun = "";
}

function searchFile(file) {
  if (!file) return;
  hold({ kind: "file", file, src: URL.createObjectURL(file) });
  run();
}

function moreLike(hit) {
  hold({ kind: "item", hit });
  run();
}

async function loadLabels() {
  const select = $("label");
  try {
    const stats = await callApi(page.statsUrl);
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
  readUrl(select);
  writeUrl();
  select.dataset.loaded = "true";
}

// --- wiring ------------------------------------------------------------------------------------------------

$("query-form").addEventListener("submit", (e) => { e.preventDefault(); settingsChanged(); }); // Enter in "Results"
settings.addEventListener("change", settingsChanged);
fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  fileInput.value = ""; // choosing the same file again searches again
  searchFile(file);
});
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
readUrl($("k"));
if (readKeyRequired && !readKey) {
  askForKey("This server needs a read key for searches: paste one above.");
} else {
  loadLabels();
}
