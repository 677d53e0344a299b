"""`imgrec serve`: the search API and web page on one machine (waitress, threaded)."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False),
    required=True,
    envvar="IMGREC_INDEX",
    help="Index dir; served as soon as a generation is published in it.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="IMGREC_HOST",
    help="Address to listen on: 0.0.0.0 lets phones and other machines on your network in.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, envvar="IMGREC_PORT")
@click.option("--threads", type=click.IntRange(1, 64), default=8, show_default=True, help="Request threads.")
def serve(index_dir: str, host: str, port: int, threads: int) -> None:
    """Serve the search API and the web page for local use (production: gunicorn, see docs).

    Other settings come from IMGREC_* environment variables (IMGREC_MAX_K, IMGREC_BATCH_WINDOW_MS, ...).

    Example:

        imgrec serve --index shop-index --port 8000

        imgrec serve --index shop-index --host 0.0.0.0   # phones on the shop's Wi-Fi
    """
    from waitress import serve as waitress_serve

    from search_api import create_app

    app = create_app({"INDEX": index_dir})
    click.echo(f"imgrec: serving {index_dir} on http://{host}:{port}/  (API docs at /docs; Ctrl-C stops)")
    if host in ("0.0.0.0", "::") and (lan := lan_address()):
        click.echo(f"imgrec: on this network (phones too): http://{lan}:{port}/")
    try:
        waitress_serve(app, host=host, port=port, threads=threads, ident="imgrec")
    finally:
        app.extensions["imgrec"].close()


def lan_address() -> str | None:
    """This machine's address on its local network (the default route's), or None when offline."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent, only a route chosen
            return s.getsockname()[0]
        except OSError:
            return None
