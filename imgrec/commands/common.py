"""Helpers shared by CLI commands: progress bars, option mapping, echoing results."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from tqdm import tqdm

if TYPE_CHECKING:
    from encoder.train import TrainConfig, TrainResult
    from indexer import JobSummary
    from indexer.querying import QueryAnswer


def __getattr__(name: str) -> tuple[type[Exception], ...]:
    """`EXPECTED_ERRORS`: failures a user can fix, shown as one clear line, not a traceback.

    Built on first use, so that importing the CLI (`imgrec --help`) loads neither torch, FAISS,
    SQLAlchemy nor Alembic.
    """
    if name != "EXPECTED_ERRORS":
        raise AttributeError(name)
    from encoder import ModelDirError
    from indexer import (
        InconsistentIndexError,
        IndexLockedError,
        IndexNotFoundError,
        ModelMismatchError,
        RollbackError,
    )

    return (
        ModelDirError,
        ModelMismatchError,
        IndexLockedError,
        IndexNotFoundError,
        InconsistentIndexError,
        RollbackError,
        FileNotFoundError,
        NotADirectoryError,
        ValueError,
    )


# Options that several commands share (index, compact): one definition each.
keep_option = click.option(
    "--keep",
    "keep_generations",
    type=int,
    default=3,
    show_default=True,
    help="Generations kept for rollback.",
)
wait_option = click.option(
    "--wait", "wait_for_lock", type=float, default=0.0, help="Seconds to wait for another indexer run."
)
merge_factor_option = click.option(
    "--merge-factor",
    type=click.IntRange(min=2),
    default=10,
    show_default=True,
    envvar="IMGREC_MERGE_FACTOR",
    help="Segments of one size tier merged into one (see docs/indexing.md, Compaction).",
)


def check_index(index_dir: str) -> None:
    """Stop on damage in what the current generation uses: catalog, segment files (size, sha256),
    model copy (`indexer.verify.check_generation`; `imgrec.exit_codes` gives the exit code)."""
    from indexer.verify import check_generation

    check_generation(index_dir)


def train_config(arch: str | None, overrides: dict) -> TrainConfig:
    """A TrainConfig for `arch` (default: the best measured model) with CLI overrides applied."""
    import dataclasses

    import encoder
    from encoder.train import TrainConfig

    arch = arch or getattr(encoder, "DEFAULT_MODEL", "conv-ae")
    known = getattr(encoder, "TRAINABLE_MODELS", sorted(encoder.MODELS))
    if arch not in known:
        raise click.BadParameter(f"choose one of {', '.join(known)}", param_hint="--model")
    cfg = TrainConfig(arch=arch)
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def epoch_bar(epochs: int) -> Iterator[Callable[[int, float, float], None]]:
    """A progress bar over epochs showing train and validation loss."""
    with tqdm(total=epochs, desc="training", unit="epoch") as bar:

        def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.5f}", val=f"{val_loss:.5f}")

        yield on_epoch


@contextmanager
def stage_bars() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per stage of fitting a pretrained preset (exporting, extracting N/M, fitting)."""
    bars: dict[str, tqdm] = {}

    def on_stage(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            unit = "img" if stage.startswith("extracting") else "step"
            bars[stage] = tqdm(total=total, desc=stage, unit=unit, leave=True)
        bar = bars[stage]
        bar.update(done - bar.n)

    try:
        yield on_stage
    finally:
        for bar in bars.values():
            bar.close()


def echo_fitted(result: TrainResult) -> None:
    """What fitting a pretrained preset did and wrote."""
    cfg, t = result.fitted, result.fitted.training
    fitted = t.get("reducer", cfg.pretrained.reducer)  # what was fitted (pseudo-lda falls back to pca)
    reducer = f"{fitted} to {cfg.code_dim}-d" if cfg.pretrained.code_dim else "none"
    views = cfg.pretrained.views
    seen = f"views {views}" if views else f"{cfg.preprocess.image_size} px"  # e.g. whole@224+center@260
    click.echo(
        f"fitted on {t['images']} images: {cfg.feature_dim}-d features of {cfg.arch} at {seen} "
        f"({t['images_per_second']} img/s), reducer {reducer}, {result.seconds:.1f} s"
    )
    files = ["model.safetensors (reducer)", "config.json", "FINGERPRINT"]
    if cfg.graph:
        files.insert(2, f"{cfg.graph} (trunks, onnxruntime)")
    click.echo(f"wrote {', '.join(files)}")
    from encoder.feature_cache import cache_path

    cache = cache_path(result.model_dir, cfg.trunk_fingerprint)
    if cache.is_file():
        click.echo(f"kept the features of {t['images']} images in {cache.parent}/ for `imgrec index`")


@contextmanager
def file_bar() -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar over files to embed: (set total, advance)."""
    with tqdm(desc="indexing", unit="img", total=0) as bar:

        def on_total(n: int) -> None:
            bar.reset(total=n)

        yield on_total, bar.update


def echo_summary(s: JobSummary) -> None:
    click.echo(
        f"added {s.added}, updated {s.updated}, deleted {s.deleted}, unchanged {s.unchanged}, "
        f"skipped {s.skipped}, failed {s.failed} in {s.seconds:.1f} s"
    )
    if s.published:
        click.echo(
            f"published generation {s.published[-1]}"
            + (f" ({len(s.published)} checkpoints)" if len(s.published) > 1 else "")
        )
    else:
        click.echo("nothing changed; no new generation")
    if s.merged:
        click.echo(f"merged segments {s.merged} time(s)")
    for done in s.restored:
        click.echo(done)
    for warning in s.warnings:
        click.echo(f"warning: {warning}")
    for path, reason in s.problems:
        click.echo(f"  not indexed: {path}: {reason}")
    if s.catalog is not None:
        echo_catalog(s.catalog)


def echo_catalog(c: dict) -> None:
    """A catalog's description (`products.catalog_summary`): counts, types, notes, row problems."""
    types = ", ".join(f"{n} ({t})" for n, t in c["attribute_types"].items()) or "none"
    click.echo(f"catalog {c['file']}: {c['rows']} rows, {c['products']} products, {c['images']} images")
    click.echo(f"  attributes: {types}")
    for note in c["notes"]:
        click.echo(f"  {note}")
    if c["n_problems"]:
        click.echo(f"  {c['n_problems']} rows left out:")
    for problem in c["problems"]:
        click.echo(f"    {problem}")
    if c["n_problems"] > len(c["problems"]):
        click.echo(f"    ... and {c['n_problems'] - len(c['problems'])} more")


def echo_answer(a: QueryAnswer) -> None:
    click.echo(f"\n{a.query}  ({a.score_kind}; novelty {a.novelty_text})")
    click.echo(f"{'rank':>4}  {a.score_kind:>10}  {'label':<16} path")
    for r in a.answer.results:
        h, p = r.hit, r.product
        product = (
            ""
            if p is None
            else f"  [{p.product_id}] {p.title or ''}" + (f" {p.price:.2f}" if p.price is not None else "")
        )
        click.echo(f"{h.rank:>4}  {h.score:>10.4f}  {h.item.label:<16} {h.item.path}{product}")
    if a.grid_path:
        click.echo(f"grid: {a.grid_path}")
