"""The `imgrec` command line: train, index, query, demo, and the commands registered below."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from imgrec.commands import common
from imgrec.exit_codes import EPILOG, ImgrecGroup


@click.group(cls=ImgrecGroup, epilog=EPILOG)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="imgrec")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """imgrec: find the inventory items that look most like a photo.

    Train an encoder on the inventory's own images, index the inventory into FAISS + SQLite,
    and query it from the shell or over HTTP.
    """
    if not _asks_for_help(ctx):  # help loads nothing: importing encoder costs numpy and Pillow
        from encoder import compute

        compute.passive_openmp()  # before the command loads torch/FAISS; an OMP_WAIT_POLICY set wins
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _asks_for_help(ctx: click.Context) -> bool:
    """Whether the command line only asks for a command's help."""
    _, cmd, args = ctx.meta.get("imgrec.command", (None, None, []))
    names = cmd.get_help_option_names(ctx) if cmd is not None else ctx.help_option_names
    return any(a in names for a in args)


@cli.command()
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="Training images (recursive).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Model dir to write.")
@click.option("--model", "arch", default=None, help="Which encoder (default: the best measured).")
@click.option("--image-size", type=int, default=None, help="Square input side in pixels.")
@click.option("--epochs", type=int, default=None, help="Upper bound on epochs (early stopping ends sooner).")
@click.option("--batch-size", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Makes training reproducible.")
@click.option(
    "--runtime",
    type=click.Choice(["onnx", "torch"]),
    default=None,
    help="Pretrained presets: onnx (default: the graph is exported now, run by onnxruntime) or torch "
    "(eager, as before the graph existed; slower, for comparison).",
)
@click.option(
    "--feature-cache/--no-feature-cache",
    default=True,
    show_default=True,
    help="Pretrained presets: keep the extracted features in the model dir for `imgrec index`.",
)
def train(out_dir: str, images: str, arch: str | None, **overrides: int | None) -> None:
    """Train an encoder, without labels, on a folder of images.

    Autoencoders train epoch by epoch and write model.safetensors, config.json, FINGERPRINT,
    loss_curve.png and reconstructions.png. Pretrained presets (the default) export their trunks,
    extract the features of every image and fit a reducer on them; they write model.safetensors (the
    reducer), config.json, features.onnx (the trunks, run by onnxruntime), FINGERPRINT, and
    features/ (the extracted features: `imgrec index` reuses them instead of decoding the same files).

    Example:

        imgrec train --images shop/photos --out models/shop

        imgrec train --images shop/photos --model conv-ae --out models/conv
    """
    from encoder.train import is_pretrained
    from encoder.train import train as run_train

    cfg = common.train_config(arch, overrides)
    pretrained = is_pretrained(cfg.arch)
    bars = common.stage_bars() if pretrained else common.epoch_bar(cfg.epochs)
    with bars as callback:
        try:
            if pretrained:
                result = run_train(images, out_dir, cfg, on_stage=callback)
            else:
                result = run_train(images, out_dir, cfg, progress=callback)
        except (ValueError, OSError) as e:
            raise click.ClickException(str(e)) from e
    click.echo(f"model {cfg.arch} -> {result.model_dir}  (fingerprint {result.fingerprint[:12]})")
    if result.fitted is not None:
        common.echo_fitted(result)
    else:
        click.echo(
            f"{result.n_train} train / {result.n_val} validation images, best epoch {result.best_epoch}, "
            f"validation loss {min(result.val_losses):.5f}, {result.seconds:.1f} s"
        )


@cli.command()
@click.option(
    "--inventory", type=click.Path(exists=True, file_okay=False), required=True, envvar="IMGREC_INVENTORY"
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    envvar="IMGREC_MODEL",
)
@click.option("--index", "index_dir", type=click.Path(file_okay=False), required=True, envvar="IMGREC_INDEX")
@click.option(
    "--metric", type=click.Choice(["l2", "cosine"]), default=None, help="Default: the index's, or cosine."
)
@click.option(
    "--index-type",
    type=click.Choice(["flat", "ivf", "hnsw"]),
    default=None,
    envvar="IMGREC_INDEX_TYPE",
    help="flat (exact, the default for a new index), ivf or hnsw (approximate). Default: the index's.",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding threads.")
@click.option("--full", is_flag=True, help="Rebuild from scratch instead of updating.")
@common.keep_option
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Publish a generation after this many embedded files (a killed run resumes from there).",
)
@common.wait_option
@common.merge_factor_option
@click.option(
    "--dask",
    "dask_address",
    default=None,
    envvar="IMGREC_DASK",
    help="Decode and embed on Dask: a scheduler address (tcp://host:8786) or local[:N] workers.",
)
@click.option(
    "--watch",
    is_flag=True,
    envvar="IMGREC_WATCH",
    help="Keep running: apply API writes and folder changes as they come (SIGTERM/SIGINT stop it).",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=None,
    envvar="IMGREC_POLL",
    help="With --watch: scan the folder every SECONDS instead of inotify events.",
)
@click.option(
    "--catalog",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    envvar="IMGREC_CATALOG",
    help="Product catalog (CSV or JSON Lines, one row per image): see docs/products.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index(
    inventory: str,
    model_dir: str,
    index_dir: str,
    as_json: bool,
    dask_address: str | None,
    merge_factor: int,
    watch: bool,
    poll: float | None,
    **options: object,
) -> None:
    """Embed every image of an inventory folder into a FAISS + SQLite index (or update it).

    Re-running on a changed folder adds, re-embeds and deletes only what changed, and publishes
    a new generation (one new small segment); readers never see a half-written index. A failed
    write (disk full) publishes nothing and exits with code 74.

    Example:

        imgrec index --inventory shop/photos --model models/conv --index shop-index

        imgrec index ... --dask tcp://scheduler:8786 --index-type ivf

        imgrec index ... --watch        # until stopped: API writes and folder changes, live

        imgrec index ... --catalog shop/products.csv

    With a catalog, a bad row is reported (line and reason) and left out; the run publishes
    everything good and exits 1 only when nothing at all could be indexed.
    """
    from contextlib import nullcontext

    from indexer import IndexOptions, StorageWriteError, run_index
    from indexer.compaction import MergePolicy

    opts = IndexOptions(
        **{k: v for k, v in options.items() if v is not None}, merge_policy=MergePolicy(factor=merge_factor)
    )
    if watch:
        with _dask_embedder(dask_address, model_dir) if dask_address else nullcontext() as embedder:
            _watch(inventory, model_dir, index_dir, opts, poll, embedder)
        return
    if poll is not None:
        raise click.UsageError("--poll goes with --watch")
    with common.file_bar() as (on_total, on_progress):
        try:
            with _dask_embedder(dask_address, model_dir) if dask_address else nullcontext() as embedder:
                summary = run_index(
                    inventory, model_dir, index_dir, opts,
                    embedder=embedder, on_total=on_total, on_progress=on_progress,
                )  # fmt: skip
        except StorageWriteError:
            raise  # exit 74 (imgrec.exit_codes)
        except (*common.EXPECTED_ERRORS, OSError) as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        common.echo_summary(summary)
    if summary.added + summary.updated + summary.unchanged == 0 and summary.skipped + summary.failed > 0:
        # every file was refused (all symlinks out of the inventory, none an image, ...): say it loudly
        raise click.ClickException(
            f"nothing could be indexed: all {summary.skipped + summary.failed:,} files were skipped or failed "
            f"(see the problems above, or `imgrec status {index_dir}`)"
        )


def _watch(
    inventory: str, model_dir: str, index_dir: str, opts: object, poll: float | None, embedder: object
) -> None:
    """Run the watcher until SIGTERM/SIGINT (the batch under way finishes; exit 0)."""
    import logging
    import signal
    import threading

    from indexer import StorageWriteError
    from indexer.watch import watch

    watch_log = logging.getLogger("indexer.watch")  # one line per batch, whatever -v says
    watch_log.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        watch(inventory, model_dir, index_dir, opts, poll=poll, stop=stop, embedder=embedder)
    except StorageWriteError:
        raise  # exit 74 (imgrec.exit_codes)
    except (*common.EXPECTED_ERRORS, OSError) as e:
        raise click.ClickException(str(e)) from e


@contextmanager
def _dask_embedder(address: str, model_dir: str):  # noqa: ANN202 - yields an indexer.dask_embed.DaskEmbedder
    """A Dask embedder on `address` (a scheduler, or local[:N]); needs `pip install imgrec[dask]`."""
    try:
        from indexer.dask_embed import DaskEmbedder, dask_client
    except ModuleNotFoundError as e:
        raise click.ClickException(f"--dask needs dask[distributed] (pip install 'imgrec[dask]'): {e}") from e
    with dask_client(address) as client:
        yield DaskEmbedder(client, model_dir=model_dir)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--index",
    "index_dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    envvar="IMGREC_INDEX",
)
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True, help="Results per query.")
@click.option("--label", default=None, help="Only items with this label.")
@click.option(
    "--filter",
    "filter_text",
    default=None,
    help="Only products matching, e.g. 'color = \"red\" AND price < 50'.",
)
@click.option(
    "--group-by",
    type=click.Choice(["product", "none"]),
    default=None,
    help="product: k distinct products (the default with a catalog); none: k images.",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Write one result PNG per query."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (with the product fields).")
@click.option(
    "--no-query-expansion",
    "no_qe",
    is_flag=True,
    help="Search with the query's vector alone, even if the model expands it.",
)
def query(
    images: tuple[str, ...],
    index_dir: str,
    k: int,
    label: str | None,
    filter_text: str | None,
    group_by: str | None,
    out_dir: str | None,
    as_json: bool,
    no_qe: bool,
) -> None:
    """Find the k inventory items (or products) most like each query image (files or folders).

    A bad filter exits with status 2 and points at the problem.

    Example:

        imgrec query photo.jpg queries/ --index shop-index -k 5 --out results/

        imgrec query photo.jpg --index shop-index --filter 'color = "red" AND price < 50' --json
    """
    from indexer.filters import FilterError
    from indexer.querying import SearchOptions, run_queries

    opts = SearchOptions(k=k, label=label, filter=filter_text, group_by=group_by, expand=not no_qe)

    common.check_index(index_dir)
    try:
        answers = run_queries(images, index_dir, opts, out_dir=out_dir)
    except FilterError as e:
        raise click.UsageError(str(e)) from e
    except common.EXPECTED_ERRORS as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps([a.as_dict() for a in answers], indent=2))
        return
    for a in answers:
        common.echo_answer(a)


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: str, seed: int) -> None:
    """Run the whole recipe on a generated catalog: train conv-ae, index, query, score.

    Example:

        imgrec demo --out demo-out
    """
    from imgrec.demo import run_demo

    result = run_demo(Path(out_dir), seed=seed, echo=click.echo)
    click.echo(
        f"\nP@1 {result.p_at_1:.2f}  P@5 {result.p_at_5:.2f}  (chance {result.chance:.2f}) "
        f"over {result.n_queries} held-back queries; {result.seconds:.0f} s in all"
    )
    click.echo(f"result grids in {result.grid_dir}")


# --- commands registered from their own modules (one line each) ---
from imgrec.commands.maintenance import compact, rollback, status  # noqa: E402

cli.add_command(status)
cli.add_command(rollback)
cli.add_command(compact)

from imgrec.commands.serve import serve  # noqa: E402

cli.add_command(serve)

from imgrec.commands.quality import duplicates, eval_command, info  # noqa: E402

cli.add_command(eval_command)
cli.add_command(duplicates)
cli.add_command(info)

from imgrec.commands.integrity import verify  # noqa: E402

cli.add_command(verify)

from imgrec.commands.keys import keys  # noqa: E402

cli.add_command(keys)
