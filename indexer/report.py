"""The eval report: one self-contained HTML file (pictures inlined) plus the pictures as PNGs.

    write_report(REPORT_DIR, run, INDEX_DIR)  ->  REPORT_DIR/report.html

Tables (overall beside the raw-pixel baseline and chance, per class), a per-class bar chart, a
2-D t-SNE map of the inventory embeddings coloured by label, and result grids of the best and
worst queries.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from encoder import load_image
from indexer.evaluation import EvalRun, QueryResult, metric_names
from indexer.grids import save_result_grid
from indexer.store import Hit, Snapshot, open_snapshot

logger = logging.getLogger(__name__)

TSNE_MAX_POINTS = 1500  # a random sample beyond this (t-SNE is quadratic-ish)


def per_class_chart(path: Path, figures: dict, metric: str = "P@5") -> None:
    """Grouped bars per class: the index's `metric`, the raw-pixel baseline's, and chance."""
    per_class = figures["per_class"]
    labels = list(per_class)
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(5.0, 0.7 * len(labels) + 2), 3.4), dpi=100)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [per_class[c][metric] for c in labels], 0.4, label=figures["encoder"]["name"])
    if all("baseline" in per_class[c] for c in labels):
        ax.bar(x + 0.2, [per_class[c]["baseline"][metric] for c in labels], 0.4, label="raw pixels")
    ax.scatter(
        x,
        [per_class[c]["chance"] for c in labels],
        marker="_",
        s=300,
        color="black",
        label="chance",
        zorder=3,
    )
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path)


def embedding_map(path: Path, vectors: np.ndarray, labels: list[str], seed: int = 0) -> None:
    """t-SNE of the inventory vectors to 2-D, one colour per label."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = np.arange(len(vectors))
    if len(idx) > TSNE_MAX_POINTS:
        idx = np.sort(rng.choice(idx, TSNE_MAX_POINTS, replace=False))
    X = np.asarray(vectors[idx], np.float32)
    perplexity = float(min(30, max(2, (len(X) - 1) // 3)))
    Y = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)
    lab = np.array(labels, dtype=object)[idx]
    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot()
    cmap = _colors(len(set(lab)))
    for color, name in zip(cmap, sorted(set(lab)), strict=True):
        m = lab == name
        ax.scatter(Y[m, 0], Y[m, 1], s=6, color=color, label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"inventory embeddings, t-SNE ({len(X)} of {len(vectors)} items)", fontsize=10)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def pick_queries(
    queries: list[QueryResult], k: int, n: int = 3
) -> tuple[list[QueryResult], list[QueryResult]]:
    """The `n` best and `n` worst queries by AP@k (then P@k; ties by path, for stability)."""
    key = f"mAP@{k}"
    ranked = sorted(queries, key=lambda q: (-q.metrics[key], -q.metrics[f"P@{k}"], str(q.path)))
    worst = sorted(queries, key=lambda q: (q.metrics[key], q.metrics[f"P@{k}"], str(q.path)))
    return ranked[:n], worst[:n]


def query_grid(path: Path, q: QueryResult, snap: Snapshot, k: int) -> None:
    items = snap.items(q.hit_ids)
    hits = [
        Hit(r, i, s, items[i])
        for r, (i, s) in enumerate(zip(q.hit_ids, q.hit_scores, strict=True), 1)
        if i in items
    ]
    caption = f"query: {q.label}\nAP@{k} {q.metrics[f'mAP@{k}']:.2f}"
    save_result_grid(path, load_image(q.path), hits, snap, query_caption=caption, thumb=96)


def write_report(out_dir: str | Path, run: EvalRun, index_dir: str | Path, n_grids: int = 3) -> Path:
    """Write report.html (self-contained), figures.json and the PNGs into `out_dir`; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = run.figures
    k = figures["k"]
    metric = "P@5" if k >= 5 else "P@1"
    pictures: list[tuple[str, str]] = []  # (file name, caption)

    per_class_chart(out / "per_class.png", figures, metric)
    pictures.append(("per_class.png", f"{metric} per class: the index, raw pixels, chance (class prior)"))

    snap = open_snapshot(index_dir)
    try:
        vectors = snap.vectors(run.inventory_ids)
        if len(vectors) >= 5:
            embedding_map(out / "embedding_map.png", vectors, run.inventory_labels)
            pictures.append(
                ("embedding_map.png", "the inventory's embeddings in 2-D (t-SNE), coloured by label")
            )
        best, worst = pick_queries(run.queries, k, n_grids)
        for name, group in (("best", best), ("worst", worst)):
            for i, q in enumerate(group, 1):
                file = f"{name}_{i}.png"
                query_grid(out / file, q, snap, k)
                pictures.append((file, f"{name} query {i}: {q.path.name} ({q.label})"))
    finally:
        snap.close()

    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    page = render_html(figures, [(out / f, c) for f, c in pictures])
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


def render_html(figures: dict, pictures: list[tuple[Path, str]]) -> str:
    """The report page, pictures inlined as data URIs."""
    e = html.escape
    k = figures["k"]
    names = metric_names(k)
    enc = figures["encoder"]
    rows = [(f"{enc['name']} ({enc['dim']}-d, {figures['metric']})", figures["metrics"])]
    if "baseline" in figures:
        rows.append((figures["baseline"]["name"], figures["baseline"]["metrics"]))
    chance = figures["chance"]
    rows.append(("chance (class prior)", {n: chance for n in names if n.startswith("P@")}))
    overall = _table(["model", *names], [[name, *(_f(m.get(n)) for n in names)] for name, m in rows])
    per_class = _table(
        ["class", "queries", "inventory", "chance", *names, "raw P@5" if k >= 5 else "raw P@1"],
        [
            [c, v["queries"], v["inventory"], _f(v["chance"]), *(_f(v[n]) for n in names),
             _f(v.get("baseline", {}).get("P@5" if k >= 5 else "P@1"))]
            for c, v in figures["per_class"].items()
        ],
    )  # fmt: skip
    lat = figures["latency_ms"]
    facts = [
        ("queries", f"{figures['n_queries']} ({figures['n_queries_skipped']} unreadable skipped)"),
        ("inventory", f"{figures['n_inventory']} items, {figures['n_classes']} classes"),
        ("model", f"{enc['name']} ({enc['kind']}), fingerprint {enc['fingerprint'][:12]}"),
        ("query latency", f"median {lat['total_median']} ms, p95 {lat['total_p95']} ms "
         f"(decode {lat['decode_median']}, embed {lat['embed_median']}, search {lat['search_median']})"),
        ("index size", f"{(figures.get('index_bytes') or 0) / 1e6:.2f} MB"),
        ("evaluated", f"{figures['evaluated_at']}, generation {figures['generation_id']}, {figures['seconds']} s"),
    ]  # fmt: skip
    if "novelty_percentile_median" in figures:
        facts.append(("query novelty", f"median percentile {figures['novelty_percentile_median']}"))
    imgs = "\n".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" alt="{e(c)}">'
        f"<figcaption>{e(c)}</figcaption></figure>"
        for p, c in pictures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgrec eval report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:1em}}img{{max-width:100%}}</style>
</head><body>
<h1>imgrec eval report</h1>
<p>Queries from <code>{e(figures["queries_dir"])}</code>; a hit is relevant when its label (parent folder) equals the
query's. P@j: relevant share of the first j results. mAP@{k}: mean AP@{k} = &Sigma; P@i&middot;rel<sub>i</sub> / min({k}, class size).
recall@{k}: relevant in the top {k} / min({k}, class size).</p>
{_table(["", ""], [[a, b] for a, b in facts], header=False)}
<h2>Overall</h2>
{overall}
<h2>Per class</h2>
{per_class}
<h2>Pictures</h2>
{imgs}
</body></html>
"""


def _f(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


def _table(head: list[str], rows: list[list], header: bool = True) -> str:
    e = html.escape
    th = "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{th}{body}</table>"


def format_figures(figures: dict) -> str:
    """Eval figures as plain-text (Markdown) tables, for the terminal and `imgrec info`."""
    k = figures["k"]
    names = metric_names(k)
    enc = figures["encoder"]
    rows = [(f"{enc['name']} ({enc['dim']}-d)", figures["metrics"])]
    if "baseline" in figures:
        rows.append((figures["baseline"]["name"], figures["baseline"]["metrics"]))
    rows.append(("chance (class prior)", {n: figures["chance"] for n in names if n.startswith("P@")}))
    lines = [
        f"{figures['n_queries']} queries against {figures['n_inventory']} items "
        f"({figures['n_classes']} classes), generation {figures['generation_id']}, {figures['evaluated_at']}",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        *("| " + name + " | " + " | ".join(_f(m.get(n)) for n in names) + " |" for name, m in rows),
        "",
        "| class | queries | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
        *(
            f"| {c} | {v['queries']} | " + " | ".join(_f(v[n]) for n in names) + " |"
            for c, v in figures["per_class"].items()
        ),
    ]
    lat = figures["latency_ms"]
    lines += ["", f"query latency: median {lat['total_median']} ms, p95 {lat['total_p95']} ms "
              f"(decode {lat['decode_median']}, embed {lat['embed_median']}, search {lat['search_median']})"]  # fmt: skip
    if "novelty_percentile_median" in figures:
        lines.append(f"query novelty: median percentile {figures['novelty_percentile_median']}")
    return "\n".join(lines)
