"""`imgrec verify`: check an index at rest (and with --repair, repair what can be)."""

from __future__ import annotations

import click

from imgrec.exit_codes import ExitCode, failure_for


@click.command()
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False), envvar="IMGREC_INDEX")
@click.option(
    "--repair",
    is_flag=True,
    help="Restore a missing model copy and/or roll back to the newest kept generation whose files verify.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="With --repair: the model dir to restore the model copy from (default: the one the index "
    "was built with, if it still holds that model).",
)
def verify(index_dir: str, repair: bool, model_dir: str | None) -> None:
    """Check the catalog, every file of the current and kept generations, and the model copy.

    Prints one line per problem and a verdict; exits 0 when healthy, else with the code of the
    worst damage (75 catalog, 65 segment file, 66 model copy). --repair says what it did; damaged
    files no generation lists any more are moved to INDEX/damaged/, never deleted.

    Example:

        imgrec verify shop-index

        imgrec verify --repair --model models/shop shop-index
    """
    from imgrec.commands.common import EXPECTED_ERRORS
    from indexer.repair import repair_index
    from indexer.verify import verify_index

    try:
        if repair:
            actions, report = repair_index(index_dir, model_dir)
        else:
            actions, report = [], verify_index(index_dir)
    except EXPECTED_ERRORS as e:
        if failure_for(e, index_dir) is not None:
            raise
        raise click.ClickException(str(e)) from e
    for problem in report.problems:
        click.echo(f"problem: {problem.message}")
    for action in actions:
        click.echo(f"repair: {action}")
    damage = report.damage()
    if damage is None:
        click.echo(
            f"ok: {index_dir} verified: generation {report.current}, {len(report.generations)} current or "
            f"kept generations, {report.files_checked} segment files, catalog and model copy intact"
        )
        return
    failure = failure_for(damage, index_dir)
    click.echo(f"damaged: {len(report.problems)} problem(s); {damage.repair_step}", err=True)
    raise click.exceptions.Exit(failure.exit_code if failure is not None else ExitCode.FAILED)
