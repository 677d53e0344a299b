"""Exit codes of every `imgrec` command, and the one place failures are mapped to them.

Numbers from BSD's sysexits.h where one fits; documented in docs/indexing.md ("When something is
damaged") and in `imgrec --help`.
"""

from __future__ import annotations

from enum import IntEnum

import click


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an expected failure with its own message (bad input, index locked, nothing to roll back)
    USAGE = 2  # click: a bad option or argument
    SEGMENT_DAMAGED = 65  # EX_DATAERR: a FAISS segment file is missing, truncated, altered or unreadable
    MODEL_COPY_MISSING = 66  # EX_NOINPUT: the index's copy of its model is missing or altered
    STORAGE = 74  # EX_IOERR: a write failed (disk full); nothing was published
    CATALOG_DAMAGED = 75  # catalog.sqlite is damaged (sysexits' number, imgrec's own meaning)


EPILOG = """\b
Exit codes:
  0   done
  1   failed (the message says why)
  2   bad usage
  65  a segment file is damaged: `imgrec verify INDEX`, then `imgrec verify --repair INDEX`
      (or `imgrec rollback INDEX`)
  66  the index's model copy is missing: `imgrec verify --repair --model MODEL_DIR INDEX`
  74  disk full or I/O error while writing: nothing was published; free space and run again
  75  catalog.sqlite is damaged: `imgrec verify INDEX`; restore it or rebuild with --full
"""


class IndexFailure(click.ClickException):
    """One line on stderr ("Error: ..."), and the exit code of the kind of failure."""

    def __init__(self, message: str, exit_code: ExitCode):
        super().__init__(" ".join(message.split()))  # one line, whatever the message held
        self.exit_code = int(exit_code)


def failure_for(e: BaseException, index_dir: str | None = None) -> click.ClickException | None:
    """The `IndexFailure` for damage or a failed write found in `e` or what caused it; None for
    anything else (left as it is). `index_dir` goes into the next step when `e` does not say."""
    from indexer.damage import (
        CatalogDamagedError,
        ModelCopyMissingError,
        SegmentDamagedError,
        as_damage,
        is_disk_full,
    )
    from indexer.segments import StorageWriteError

    damage = as_damage(e, index_dir)
    if damage is not None and damage.index_dir == "INDEX" and index_dir:
        damage.index_dir = index_dir
    for kind, code in (
        (CatalogDamagedError, ExitCode.CATALOG_DAMAGED),
        (SegmentDamagedError, ExitCode.SEGMENT_DAMAGED),
        (ModelCopyMissingError, ExitCode.MODEL_COPY_MISSING),
    ):
        if isinstance(damage, kind):
            return IndexFailure(str(damage), code)
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, StorageWriteError):
            return IndexFailure(cause.strerror or str(cause), ExitCode.STORAGE)
        if is_disk_full(cause, index_dir):
            what = (
                "writing"
                if isinstance(cause, OSError) or "full" in str(cause).lower()
                else "opening the catalog"
            )
            return IndexFailure(
                f"disk full while {what}: nothing was changed; free space and run again", ExitCode.STORAGE
            )
        cause = cause.__cause__ or cause.__context__
    return None


class ImgrecGroup(click.Group):
    """A click group whose commands' damage and storage failures leave with their exit codes."""

    def resolve_command(self, ctx: click.Context, args: list[str]):  # noqa: ANN201 - click's triple
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta["imgrec.command"] = (name, cmd, list(rest))
        return name, cmd, rest

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - whatever the command returns
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.UsageError):
            raise
        except Exception as e:
            failure = failure_for(e, _index_dir(ctx))
            if failure is None:
                raise
            raise failure from e


def _index_dir(ctx: click.Context) -> str | None:
    """The INDEX the failed command was given (parsed again, leniently), for the next step."""
    name, cmd, args = ctx.meta.get("imgrec.command", (None, None, []))
    if cmd is None:
        return None
    try:
        with cmd.make_context(name, list(args), parent=ctx, resilient_parsing=True) as sub:
            value = sub.params.get("index_dir")
    except Exception:  # noqa: BLE001 - only a nicer message is at stake
        return None
    return str(value) if value else None
