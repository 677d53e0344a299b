// imgrec web page: upload or drop an image, show the top-k look-alikes, click one for more like it.
//
// State: `held` is the query being shown (a file, or an item for "more like this"); the search settings are the
// named controls of #settings (k, label) and #filters (built from /v1/attributes, composed into one `filter=`),
// mirrored in the URL so a reload, a shared link or Back keeps them. Changing a setting re-runs the held query;
// only the latest search's answer is ever shown.
"use strict";

const main = document.querySelector("main");
const page = {
  searchUrl: main.dataset.searchUrl,
  statsUrl: main.dataset.statsUrl,
  attributesUrl: main.dataset.attributesUrl,
  defaultK: Number(main.dataset.defaultK),
  thumbnailSize: Number(main.dataset.thumbnailSize),
  thumbnailMaxSize: Number(main.dataset.thumbnailMaxSize),
};
const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const drop = $("drop");
const settings = $("settings");
const filters = $("filters");

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

const PRICE_FORMAT = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

function formatPrice(price) {
  return PRICE_FORMAT.format(price);
}

/** The URL when it is an http(s) one (a product link out), else null: no javascript:, data: or relative links. */
function safeLink(url) {
  if (typeof url !== "string") return null;
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch (e) {
    return null;
  }
}

// --- the filter language (docs/products.md): names bare or in backticks, strings as JSON strings ------------

const FILTER_KEYWORDS = new Set(["and", "or", "not", "in", "true", "false"]);

function filterName(name) {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(name) && !FILTER_KEYWORDS.has(name.toLowerCase()) ? name : `\`${name}\``;
}

/** A string literal: JSON's escapes are the language's (`"` and `\` escaped, control characters as \uXXXX). */
function filterString(value) {
  return JSON.stringify(value);
}

/** The filter controls' values as one expression ("" when none is set). */
function filterExpression() {
  const parts = [];
  for (const el of filterControls()) {
    const name = filterName(el.dataset.attribute);
    if (el.type === "checkbox") {
      if (el.checked) parts.push(`${name} = true`);
    } else if (el.dataset.op) { // a number bound
      const n = Number(el.value);
      if (el.value !== "" && Number.isFinite(n)) parts.push(`${name} ${el.dataset.op} ${n}`);
    } else if (el.value) {
      parts.push(`${name} = ${filterString(el.value)}`);
    }
  }
  return parts.join(" AND ");
}

// --- settings and the URL ----------------------------------------------------------------------------------

function namedControls() {
  return [...settings.elements, ...filters.elements].filter((el) => el.name);
}

function filterControls() {
  return Array.from(filters.elements).filter((el) => el.dataset.attribute != null);
}

/** A control's value as it goes in the URL ("" for a default: left out). */
function controlValue(el) {
  if (el.type === "checkbox") return el.checked ? "true" : "";
  if (el.name === "k") return Number(el.value) === page.defaultK ? "" : el.value;
  return el.value;
}

/** Bring k into 1..max (a typed 0, 500 or "" becomes a valid number shown in the box). */
function normaliseK() {
  const box = $("k");
  const n = Math.round(Number(box.value));
  const max = Number(box.max);
  box.value = String(Number.isFinite(n) && n >= 1 ? Math.min(n, max) : page.defaultK);
}

/** The settings as search API parameters (empty ones left out; the filter controls as one `filter`). */
function settingsParams() {
  const params = new URLSearchParams();
  for (const el of namedControls()) {
    if (el.dataset.attribute == null && el.value) params.set(el.name, el.value);
  }
  const filter = filterExpression();
  if (filter) params.set("filter", filter);
  return params;
}

/** Write the settings that differ from the defaults into the address: a new history entry for a change the
 * person made (`push`), else the current entry replaced (the page's own normalisation). */
function writeUrl(push = false) {
  const url = new URL(window.location.href);
  for (const el of namedControls()) {
    const value = controlValue(el);
    if (value) url.searchParams.set(el.name, value);
    else url.searchParams.delete(el.name);
  }
  if (url.href === window.location.href) return;
  if (push) window.history.pushState(null, "", url);
  else window.history.replaceState(null, "", url);
}

/** Apply the address's value of one setting, when the control can show it (`reset`: absent -> the default). */
function readUrl(el, reset = false) {
  const value = new URL(window.location.href).searchParams.get(el.name);
  if (value == null) {
    if (!reset) return;
    if (el.type === "checkbox") el.checked = false;
    else el.value = el.name === "k" ? String(page.defaultK) : "";
    return;
  }
  if (el.type === "checkbox") { el.checked = value === "true"; return; }
  if (el.tagName === "SELECT" && !Array.from(el.options).some((o) => o.value === value)) {
    showError(el.dataset.attribute == null
      ? `There is no label "${value}" in this index: showing any label.`
      : `There is no ${el.dataset.attribute} "${value}" in this index: showing any.`);
    el.value = "";
    return;
  }
  el.value = value;
  if (el.name === "k") normaliseK();
}

function settingsChanged() {
  normaliseK();
  writeUrl(true);
  run();
}

/** Back or Forward: the controls show that entry's settings, and the held query is searched with them. */
function urlChanged() {
  for (const el of namedControls()) readUrl(el, true);
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

function captionLine(name, text) {
  const span = document.createElement("span");
  span.className = name;
  span.textContent = text;
  return span;
}

/** An image as a button: more like it. */
function moreLikeButton(hit, className, alt) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.title = `More like item ${hit.id}`;
  const img = document.createElement("img");
  setThumbnail(img, hit.thumbnail_url);
  img.alt = alt;
  img.loading = "lazy";
  button.append(img);
  button.addEventListener("click", () => moreLike(hit));
  return button;
}

/** The caption of a product: title, price, SKU, a link out (http(s) only), the product's other images. */
function productLines(hit, product) {
  const lines = [];
  if (product.title) lines.push(captionLine("title", product.title));
  if (product.price != null) lines.push(captionLine("price", formatPrice(product.price)));
  lines.push(captionLine("sku", `SKU ${product.id}`));
  const href = safeLink(product.url);
  if (href) {
    const a = document.createElement("a");
    a.className = "link";
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = "View product";
    lines.push(a);
  }
  if (hit.images && hit.images.length) {
    const others = document.createElement("div");
    others.className = "others";
    for (const im of hit.images) {
      const other = { ...im, label: hit.label };
      others.append(moreLikeButton(other, "other", `${product.title || product.id}: another photo (item ${im.id})`));
    }
    lines.push(others);
  }
  return lines;
}

/** One result card: the image (a button: more like this), then its caption lines (label and score, or the
 * product's fields and the score). */
function resultCard(hit, scoreKind) {
  const li = document.createElement("li");
  li.className = "result";
  li.dataset.id = hit.id;
  const product = hit.product;
  const alt = product ? `${product.title || product.id} (item ${hit.id})` : `${hit.label} (item ${hit.id})`;
  const caption = document.createElement("div");
  caption.className = "caption";
  if (product) {
    li.classList.add("product");
    li.dataset.product = product.id;
    caption.append(...productLines(hit, product));
  } else {
    caption.append(captionLine("label", hit.label));
  }
  caption.append(captionLine("score", formatScore(hit.score, scoreKind)));
  li.append(moreLikeButton(hit, "more-like", alt), caption);
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
    const error = new Error(body && body.message ? body.message : `the server answered ${response.status}`);
    error.code = body && body.error;
    throw error;
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
    if (e.code === "bad_filter") { // the query is fine: keep it, so a changed filter searches again
      clearShown();
      setStatus("");
      showError(`The filter was refused: ${e.message}`);
      return;
    }
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

const MAX_SELECT_VALUES = 30; // a string attribute with more values gets no select

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function labelled(text, control) {
  const label = document.createElement("label");
  label.append(text, control);
  return label;
}

/** The controls of one attribute from /v1/attributes (none for one that cannot be shown as a control). */
function filterControlsFor(attr) {
  const named = (el, name, op) => {
    el.name = name;
    el.dataset.attribute = attr.name;
    if (op) el.dataset.op = op;
    return el;
  };
  if (attr.type === "number") {
    if (attr.min == null || attr.max == null) return [];
    const bound = (which, op, placeholder) => {
      const input = named(document.createElement("input"), `${which}.${attr.name}`, op);
      Object.assign(input, { type: "number", step: "any", min: String(attr.min), max: String(attr.max), placeholder });
      input.inputMode = "decimal";
      return input;
    };
    const span = document.createElement("span");
    span.className = "range";
    span.append(`${attr.name} `, labelled("from", bound("min", ">=", String(attr.min))),
      labelled("to", bound("max", "<=", String(attr.max))));
    return [span];
  }
  if (attr.type === "boolean") {
    const box = named(document.createElement("input"), `f.${attr.name}`);
    box.type = "checkbox";
    box.value = "true";
    const label = document.createElement("label");
    label.className = "check";
    label.append(box, ` ${attr.name}`);
    return [label];
  }
  if (attr.type === "string" && attr.values && attr.values.length && !attr.more_values &&
      attr.values.length <= MAX_SELECT_VALUES) {
    const select = named(document.createElement("select"), `f.${attr.name}`);
    select.append(option("", "any"), ...attr.values.map((v) => option(v.value, `${v.value} (${v.count})`)));
    return [labelled(`${attr.name} `, select)];
  }
  return [];
}

async function loadFilters() {
  const answer = await callApi(page.attributesUrl);
  const controls = answer.attributes.flatMap(filterControlsFor);
  filters.replaceChildren(filters.querySelector("legend"), ...controls);
  filters.hidden = controls.length === 0;
}

/** The labels (from /v1/stats) and the filter controls (from /v1/attributes), then the URL's settings. */
async function loadLabels() {
  const select = $("label");
  try {
    const stats = await callApi(page.statsUrl); // first: a refused key is reported once, by this call
    await loadFilters();
    for (const name of Object.keys(stats.labels).sort()) select.append(option(name, `${name} (${stats.labels[name]})`));
  } catch (e) {
    if (!$("key-form").hidden) return;
    showError(`The index is not ready: ${e.message}`);
  }
  for (const el of namedControls()) if (el.name !== "k") readUrl(el);
  writeUrl();
  select.dataset.loaded = "true";
}

// --- wiring ------------------------------------------------------------------------------------------------

$("query-form").addEventListener("submit", (e) => { e.preventDefault(); settingsChanged(); }); // Enter in "Results"
settings.addEventListener("change", settingsChanged);
filters.addEventListener("change", settingsChanged);
window.addEventListener("popstate", urlChanged);
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
