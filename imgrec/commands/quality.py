"""Quality commands: `imgrec eval`, `imgrec duplicates`, `imgrec info`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imgrec.commands import common

INDEX_DIR = click.Path(exists=True, file_okay=False)


@click.command("eval")
@click.option("--index", "index_dir", type=INDEX_DIR, required=True, envvar="IMGREC_INDEX")
@click.option(
    "--queries",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Query images in folders named like the inventory's labels.",
)
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Ranking depth.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write an HTML report here.",
)
@click.option(
    "--baseline-size",
    type=click.IntRange(0, 256),
    default=32,
    show_default=True,
    help="Raw-pixel baseline image side (0: no baseline).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--no-query-expansion",
    "no_qe",
    is_flag=True,
    help="Search with the query's vector alone, even if the model expands it.",
)
def eval_command(
    index_dir: str,
    queries: str,
    k: int,
    report_dir: str | None,
    baseline_size: int,
    as_json: bool,
    no_qe: bool,
) -> None:
    """Measure retrieval quality: P@1, P@5, P@10, mAP@10, recall@10 beside raw pixels and chance.

    Labels are parent folder names (inventory and queries alike). The figures are stored with the
    index (see `imgrec info`).

    Example:

        imgrec eval --index shop-index --queries shop/validation --report eval-report
    """
    from tqdm import tqdm

    from indexer.evaluation import evaluate_index, save_eval_figures
    from indexer.report import format_figures, write_report

    common.check_index(index_dir)
    try:
        with tqdm(desc="queries", unit="img") as bar:
            run = evaluate_index(
                index_dir,
                queries,
                k,
                baseline_size=baseline_size or None,
                progress=bar.update,
                expand=not no_qe,
            )
        save_eval_figures(index_dir, run.figures)
        report = write_report(report_dir, run, index_dir) if report_dir else None
    except (*common.EXPECTED_ERRORS, LookupError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(json.dumps(run.figures, indent=2) if as_json else format_figures(run.figures))
    if report and not as_json:
        click.echo(f"\nreport: {report}")


@click.command()
@click.option("--index", "index_dir", type=INDEX_DIR, required=True, envvar="IMGREC_INDEX")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Cosine similarity at least this (default 0.95); for an l2 index, squared distance at most this.",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Write one PNG per group here."
)
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
def duplicates(index_dir: str, threshold: float | None, out_dir: str | None, as_json: bool) -> None:
    """List groups of near-duplicate inventory images, found from the index's own vectors.

    Example:

        imgrec duplicates --index shop-index --threshold 0.97 --out dupes/
    """
    from indexer import open_snapshot
    from indexer.duplicates import find_duplicates, save_group_picture

    common.check_index(index_dir)
    try:
        snap = open_snapshot(index_dir)
    except common.EXPECTED_ERRORS as e:
        raise click.ClickException(str(e)) from e
    try:
        groups = find_duplicates(snap, threshold)
        pictures = [
            save_group_picture(Path(out_dir) / f"group-{n:03d}.png", g, snap) if out_dir else None
            for n, g in enumerate(groups, 1)
        ]
    except (ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    finally:
        snap.close()
    if as_json:
        rows = [
            {"items": [{"id": it.id, "path": it.path, "label": it.label} for it in g.items],
             "min_score": g.min_score, "picture": str(p) if p else None}
            for g, p in zip(groups, pictures, strict=True)
        ]  # fmt: skip
        click.echo(json.dumps(rows, indent=2))
        return
    for n, (g, p) in enumerate(zip(groups, pictures, strict=True), 1):
        click.echo(
            f"group {n}: {len(g.items)} items (weakest link {g.min_score:.3f})" + (f"  {p}" if p else "")
        )
        for it in g.items:
            click.echo(f"  {it.id:>8}  {it.label:<16} {it.path}")
    click.echo(f"{len(groups)} groups, {sum(len(g.items) for g in groups)} items")


@click.command()
@click.argument("index_dir", type=INDEX_DIR, envvar="IMGREC_INDEX")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def info(index_dir: str, as_json: bool) -> None:
    """Show the current generation's record: model, size, metric, and the last eval figures.

    Example:

        imgrec info shop-index
    """
    from indexer.info import generation_record
    from indexer.report import format_figures

    common.check_index(index_dir)
    try:
        record = generation_record(index_dir)
    except common.EXPECTED_ERRORS as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for key, value in record.items():
        if key not in ("eval_figures", "model_config", "run_summary"):
            click.echo(f"{key:>16}: {value}")
    figures = record.get("eval_figures")
    click.echo("\n" + (format_figures(figures) if figures else "not evaluated yet (run `imgrec eval`)"))
