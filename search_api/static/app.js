// imgrec web page: upload or drop an image, show the top-k look-alikes, click one for more like it.
"use strict";

const main = document.querySelector("main");
const searchUrl = main.dataset.searchUrl;
const statsUrl = main.dataset.statsUrl;
const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const drop = $("drop");

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
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
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
  $("query-image").src = src;
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
    img.src = hit.thumbnail_url;
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
loadLabels();
