"""Index upkeep commands: `status` (the ingest ledger), `rollback` and `compact`."""

from __future__ import annotations

import json

import click

from imgrec.commands.common import keep_option, merge_factor_option, wait_option


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False), envvar="IMGREC_INDEX")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--limit", type=int, default=50, show_default=True, help="Problem files listed at most.")
def status(index_dir: str, as_json: bool, limit: int) -> None:
    """Summarise the ingest ledger: files per state, and what failed or was skipped and why.

    Example:

        imgrec status shop-index
    """
    from imgrec.commands.common import EXPECTED_ERRORS, check_index
    from indexer.ledger import ledger_report

    check_index(index_dir)
    try:
        report = ledger_report(index_dir, limit=limit)
    except EXPECTED_ERRORS as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    if not report["generations"]:
        click.echo("no generation published yet")
    for g in report["generations"]:
        click.echo(
            f"generation {g['id']} {g['status']:<7} {g['created_at']}  {g['item_count']} items, "
            f"{g['metric']}, {g['index_type']}, model {g['model_fingerprint'][:12]}"
        )
    states = sorted(report["states"].items())
    click.echo("files: " + (", ".join(f"{n} {state}" for state, n in states) or "none yet"))
    for row in report["problems"]:
        click.echo(f"  {row['state']:<8} {row['path']}: {row['reason']}")
    if report["problems_not_listed"]:
        click.echo(f"  ... and {report['problems_not_listed']} more (--limit)")
    catalog = (report["generation"] or {}).get("catalog")
    if catalog is not None:
        from imgrec.commands.common import echo_catalog

        echo_catalog(catalog)


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False), envvar="IMGREC_INDEX")
def rollback(index_dir: str) -> None:
    """Make the previous generation current again (the next `imgrec index` reconciles with the folder).

    Example:

        imgrec rollback shop-index
    """
    from sqlalchemy.orm import Session

    from imgrec.commands.common import EXPECTED_ERRORS
    from indexer.damage import SegmentDamagedError
    from indexer.db import open_database
    from indexer.generations import index_lock, live_segment_files
    from indexer.generations import rollback as do_rollback
    from indexer.repair import set_aside
    from indexer.verify import check_generation

    try:
        with index_lock(index_dir):
            try:  # the generation left: its damaged file is kept (moved aside), never deleted as an orphan
                check_generation(index_dir, model=False)
                damaged = None
            except SegmentDamagedError as e:
                damaged = e.file
            engine = open_database(index_dir)
            try:
                target = do_rollback(index_dir, engine)
                with Session(engine) as session:
                    moved = set_aside(index_dir, {damaged} - live_segment_files(session)) if damaged else []
            finally:
                engine.dispose()
    except EXPECTED_ERRORS + (RuntimeError,) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"generation {target.id} is current again ({target.item_count} items)")
    for line in moved:
        click.echo(line)


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False), envvar="IMGREC_INDEX")
@click.option(
    "--all", "everything", is_flag=True, help="Merge every segment into one (and drop masked vectors)."
)
@keep_option
@wait_option
@merge_factor_option
def compact(
    index_dir: str, everything: bool, keep_generations: int, wait_for_lock: float, merge_factor: int
) -> None:
    """Merge the index's segments by the size-tiered policy (the indexer also does after publishing).

    Each merge publishes a generation with the same items; rollback skips it. A failed write
    (disk full) leaves the current generation and exits with code 74.

    Example:

        imgrec compact shop-index --all
    """
    from imgrec.commands.common import EXPECTED_ERRORS, check_index
    from indexer.compaction import MergePolicy
    from indexer.compaction import compact as run_compact
    from indexer.db import open_database
    from indexer.generations import index_lock, prune
    from indexer.segments import StorageWriteError

    check_index(index_dir)
    try:
        with index_lock(index_dir, wait=wait_for_lock):
            engine = open_database(index_dir)
            try:
                published = run_compact(
                    index_dir, engine, MergePolicy(factor=merge_factor), everything=everything
                )
                prune(index_dir, engine, keep_generations)
            finally:
                engine.dispose()
    except StorageWriteError:
        raise  # exit 74 (imgrec.exit_codes)
    except EXPECTED_ERRORS + (RuntimeError,) as e:
        raise click.ClickException(str(e)) from e
    if published:
        click.echo(f"merged {len(published)} time(s); generation {published[-1]} is current")
    else:
        click.echo("nothing to merge")
