"""`imgrec verify --repair`: repair what `indexer.verify` finds, and say what was done.

    actions, report = repair_index(INDEX, model_dir)    # one line per action; the report after

Repair restores a missing model copy from a model dir with the same fingerprint (the one given, or
the one recorded by the run that built the generation), and when the current generation is damaged
makes the newest kept generation whose files all verify current (as `imgrec rollback` does, across
as many generations as needed); kept generations with damaged files are no rollback targets any
more (marked pruned). Damaged files no generation lists any more are moved to `INDEX/damaged/`,
never deleted; a damaged catalog is reported, not repaired.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.damage import ModelCopyMissingError
from indexer.db import Generation, make_engine
from indexer.db import database_url as _database_url
from indexer.store import model_path
from indexer.verify import VerifyReport, verify_index

DAMAGED_DIR = "damaged"  # where repair moves damaged files no generation lists any more


def restore_model_copy(index_dir: str | Path, fingerprint: str, model_dir: str | Path) -> str:
    """Copy the model in `model_dir` into the index as its copy of `fingerprint`; say what was done.

    :raise ModelCopyMissingError: `model_dir` is not that model.
    """
    import shutil

    from encoder.model_dir import ModelDirError, copy_model_dir, read_model_dir

    index_dir = Path(index_dir)
    try:
        _, _, fp = read_model_dir(model_dir)
    except (ModelDirError, OSError) as e:
        raise ModelCopyMissingError(f"cannot restore the model copy from {model_dir}: {e}", index_dir) from e
    if fp != fingerprint:
        raise ModelCopyMissingError(
            f"cannot restore the model copy from {model_dir}: it is model {fp[:12]}, the index needs "
            f"{fingerprint[:12]}",
            index_dir,
        )
    dst = model_path(index_dir, fingerprint)
    if dst.exists():  # a damaged copy: kept as evidence, out of the way
        moved = _quarantine(index_dir, dst)
        note = f" (the damaged copy moved to {moved})"
    else:
        note = ""
    copy_model_dir(model_dir, dst)
    shutil.rmtree(dst / "features", ignore_errors=True)  # never part of a copy
    return f"restored the model copy models/{fingerprint[:12]} from {model_dir}{note}"


def recorded_model_dir(index_dir: str | Path, fingerprint: str) -> Path | None:
    """The model dir recorded by the newest run that built a generation with this model, if it still
    holds that model."""
    engine = make_engine(_database_url(index_dir))
    try:
        with Session(engine) as session:
            runs = session.scalars(
                select(Generation.run_summary)
                .where(Generation.model_fingerprint == fingerprint)
                .order_by(Generation.id.desc())
            ).all()
    finally:
        engine.dispose()
    for run in runs:
        path = (run or {}).get("model_dir")
        if path and Path(path).is_dir() and model_problem_at(Path(path), fingerprint) is None:
            return Path(path)
    return None


def model_problem_at(path: Path, fingerprint: str) -> str | None:
    from encoder.model_dir import ModelDirError, read_model_dir

    try:
        _, _, fp = read_model_dir(path)
    except (ModelDirError, OSError, ValueError) as e:
        return str(e)
    return None if fp == fingerprint else f"{path} is model {fp[:12]}"


def repair_index(
    index_dir: str | Path, model_dir: str | Path | None = None
) -> tuple[list[str], VerifyReport]:
    """Repair what `verify_index` finds, under the writer lock; returns (what was done, the report after).

    :raise IndexNotFoundError: no catalog.
    """
    from indexer.generations import index_lock

    index_dir = Path(index_dir)
    actions: list[str] = []
    with index_lock(index_dir):
        report = verify_index(index_dir)
        if any(p.kind == "catalog" for p in report.problems):
            actions.append("the catalog is damaged: nothing repaired (restore it from a backup or rebuild)")
            return actions, report
        actions += _repair_models(index_dir, report, model_dir)
        if report.current in report.damaged_generations():
            actions += _roll_back_to_good(index_dir, report)
            report = verify_index(index_dir)
        if report.current not in report.damaged_generations():
            actions += _retire_damaged_kept(index_dir, report)
    return actions, verify_index(index_dir)


def _retire_damaged_kept(index_dir: Path, report: VerifyReport) -> list[str]:
    """Kept generations with damaged files are no rollback targets: mark them pruned, and move
    their damaged files that no current or kept generation lists any more aside."""
    from indexer.generations import live_segment_files

    doomed = sorted(report.damaged_generations() - {report.current})
    if not doomed:
        return []
    engine = make_engine(_database_url(index_dir))
    try:
        with Session(engine) as session, session.begin():
            for g in session.scalars(select(Generation).where(Generation.id.in_(doomed))):
                g.status = "pruned"
        with Session(engine) as session:
            live = live_segment_files(session)
    finally:
        engine.dispose()
    actions = [f"kept generation {g} has damaged files: no longer a rollback target (pruned)" for g in doomed]
    damaged = {p.file for p in report.problems if p.kind == "segment" and p.file and p.generation in doomed}
    return actions + set_aside(index_dir, damaged - live)


def _repair_models(index_dir: Path, report: VerifyReport, model_dir: str | Path | None) -> list[str]:
    actions = []
    missing = {p.generation for p in report.problems if p.kind == "model"}
    if not missing:
        return actions
    engine = make_engine(_database_url(index_dir))
    try:
        with Session(engine) as session:
            fps = set(session.scalars(select(Generation.model_fingerprint).where(Generation.id.in_(missing))))
    finally:
        engine.dispose()
    for fp in sorted(fps):
        source = Path(model_dir) if model_dir else recorded_model_dir(index_dir, fp)
        if source is None:
            actions.append(
                f"the model copy models/{fp[:12]} is missing and no model dir holds it: pass --model MODEL_DIR"
            )
            continue
        try:
            actions.append(restore_model_copy(index_dir, fp, source))
        except ModelCopyMissingError as e:
            actions.append(e.problem)
    return actions


def _roll_back_to_good(index_dir: Path, report: VerifyReport) -> list[str]:
    """Make the newest kept generation without damage current; move unlisted damaged files aside."""
    from indexer.generations import RollbackError, live_segment_files, rollback

    bad = report.damaged_generations()
    good = [
        g for g in report.generations if g != report.current and g not in bad and g < (report.current or 0)
    ]
    if not good:
        return [f"generation {report.current} is damaged and no kept generation is intact: nothing rolled back "
                "(rebuild with `imgrec index --full`)"]  # fmt: skip
    engine = make_engine(_database_url(index_dir))
    try:
        try:
            target = rollback(index_dir, engine, to=good[0])
        except RollbackError as e:
            return [f"rollback to generation {good[0]} failed: {e}"]
        actions = [
            f"rolled back from damaged generation {report.current} to generation {target.id} "
            f"({target.item_count} items); the next `imgrec index` re-indexes what changed since"
        ]
        with Session(engine) as session:
            live = live_segment_files(session)
    finally:
        engine.dispose()
    damaged = {p.file for p in report.problems if p.kind == "segment" and p.file}
    return actions + set_aside(index_dir, damaged - live)


def set_aside(index_dir: str | Path, files: set[str]) -> list[str]:
    """Move damaged files (relative paths) no generation lists any more into INDEX/damaged/, where
    orphan clean-up never deletes them; what was moved, one line each."""
    index_dir = Path(index_dir)
    done = []
    for rel in sorted(files):
        path = index_dir / rel
        if path.exists():
            done.append(f"moved damaged {rel} to {_quarantine(index_dir, path)} (kept as evidence)")
    return done


def _quarantine(index_dir: Path, path: Path) -> str:
    """Move a damaged file or folder into INDEX/damaged/<time>-<name>; the new path, relative."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    folder = index_dir / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    dst = folder / f"{stamp}-{path.name}"
    os.replace(path, dst)
    return f"{DAMAGED_DIR}/{dst.name}"
