"""`imgrec keys`: create, list and revoke the search API's keys (kept in the index's catalog)."""

from __future__ import annotations

import json

import click

INDEX_OPTION = click.option(
    "--index",
    "index_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    envvar="IMGREC_INDEX",
    help="Index dir whose catalog keeps the keys (the API serving it reads them).",
)


@click.group()
def keys() -> None:
    """API keys: `Authorization: Bearer KEY` for the search API (docs/api.md, "Access control")."""


@keys.command()
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(["read", "write"]),
    required=True,
    help="read: searches and item lookups; write: also changes to the inventory.",
)
@INDEX_OPTION
def create(name: str, scope: str, index_dir: str) -> None:
    """Make a key named NAME and print it: the only time it is shown (only a hash is kept).

    Example:

        imgrec keys create shop-frontend --scope read --index shop-index
    """
    from search_api.keys import KeyAdminError, create_key

    try:
        key = create_key(index_dir, name, scope)
    except KeyAdminError as e:
        raise click.ClickException(str(e)) from e
    click.echo(key)
    click.echo(f"{scope} key {name!r} created; it is shown only now: keep it in a secret store", err=True)


@keys.command(name="list")
@INDEX_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_command(index_dir: str, as_json: bool) -> None:
    """List the keys: name, scope, created, last used (to within a minute), revoked.

    Example:

        imgrec keys list --index shop-index
    """
    from search_api.keys import KeyAdminError, list_keys, utc_text

    try:
        rows = list_keys(index_dir)
    except KeyAdminError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no keys (imgrec keys create NAME --scope read|write)")
        return
    click.echo(f"{'NAME':<24} {'SCOPE':<6} {'CREATED':<21} {'LAST USED':<21} REVOKED")
    for r in rows:
        click.echo(
            f"{r['name']:<24} {r['scope']:<6} {utc_text(r['created_at']):<21} "
            f"{utc_text(r['last_used_at']):<21} {utc_text(r['revoked_at'])}"
        )


@keys.command()
@click.argument("name")
@INDEX_OPTION
def revoke(name: str, index_dir: str) -> None:
    """Revoke the key named NAME: the API refuses it within seconds (IMGREC_KEY_CACHE_SECONDS).

    Example:

        imgrec keys revoke shop-frontend --index shop-index
    """
    from search_api.keys import KeyAdminError, revoke_key

    try:
        changed = revoke_key(index_dir, name)
    except KeyAdminError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"key {name!r} revoked" if changed else f"key {name!r} was revoked already")
