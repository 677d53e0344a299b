"""`imgrec verify`: check everything an index keeps at rest.

    report = verify_index(INDEX)                # every problem found, one line each
    check_generation(INDEX)                     # the quick check every command runs first

What is checked:
- the catalog: SQLite opens it and `PRAGMA integrity_check` says ok; `index_state` points at a
  `current` generation; every current or kept generation lists segments whose rows exist;
- every segment file a current or kept generation lists: its size and sha256 against the catalog
  row written with it (files upgraded from schema 0001 were hashed by the upgrade; a row without a
  sha256 is a file that was already missing then);
- the current generation opened in full: segment counts, dimensions and ids against the catalog,
  the live ids per segment against the `items` rows, the ids checksum and live count;
- the model copy of every current or kept generation: present, and its fingerprint matches.

Repairs are in `indexer.repair`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from indexer.damage import (
    CatalogDamagedError,
    IndexDamageError,
    ModelCopyMissingError,
    SegmentDamagedError,
    as_damage,
)
from indexer.db import (
    SCHEMA_REVISION,
    Generation,
    GenerationSegment,
    IndexState,
    Segment,
    catalog_revision,
    make_engine,
)
from indexer.db import database_url as _database_url
from indexer.segment_search import SegmentFileError, check_segment_file
from indexer.segments import SegmentInfo
from indexer.store import IndexNotFoundError, generation_segments, has_catalog, model_path

logger = logging.getLogger(__name__)

INTEGRITY_LINES = 20  # lines of `PRAGMA integrity_check` reported at most


@dataclass(frozen=True)
class Problem:
    """One thing found wrong; `kind`: segment | catalog | model."""

    kind: str
    message: str
    generation: int | None = None
    file: str | None = None  # the damaged file, relative to the index dir


@dataclass
class VerifyReport:
    index_dir: Path
    current: int | None = None  # the current generation's id
    generations: list[int] = field(default_factory=list)  # current and kept, newest first
    files_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def damage(self) -> IndexDamageError | None:
        """The damage to report as the verdict (catalog first, then segments, then the model copy)."""
        for kind, error in (
            ("catalog", CatalogDamagedError),
            ("segment", SegmentDamagedError),
            ("model", ModelCopyMissingError),
        ):
            found = [p for p in self.problems if p.kind == kind]
            if found:
                more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
                return error(found[0].message + more, self.index_dir)
        return None

    def damaged_generations(self) -> set[int]:
        return {p.generation for p in self.problems if p.generation is not None and p.kind != "model"}


def _catalog_engine(index_dir: Path) -> Engine:
    if not has_catalog(index_dir):
        raise IndexNotFoundError(f"no index in {index_dir} (build one with `imgrec index`)")
    return make_engine(_database_url(index_dir))


def verify_index(index_dir: str | Path) -> VerifyReport:
    """Check the catalog, the files of the current and kept generations, and their model copies.

    :raise IndexNotFoundError: no catalog in `index_dir`.
    """
    index_dir = Path(index_dir)
    report = VerifyReport(index_dir)
    engine = _catalog_engine(index_dir)
    try:
        try:
            _check_catalog(engine, report)
        except Exception as e:
            damage = as_damage(e, index_dir)
            if damage is None:
                raise
            report.problems.append(Problem("catalog", damage.problem))
            return report  # nothing else can be read from a catalog SQLite cannot open
        if any(p.kind == "catalog" for p in report.problems):
            return report
        with Session(engine) as session:
            gens = session.scalars(
                select(Generation)
                .where(Generation.status.in_(("current", "kept")))
                .order_by(Generation.id.desc())
            ).all()
            listed = {g.id: generation_segments(session, g.id) for g in gens}
            fingerprints = {g.id: g.model_fingerprint for g in gens}
        report.generations = [g.id for g in gens]
        _check_files(index_dir, listed, report)
        _check_models(index_dir, fingerprints, report)
        if report.current is not None and report.current not in report.damaged_generations():
            _check_current_in_full(index_dir, report)
    finally:
        engine.dispose()
    return report


def _check_catalog(engine: Engine, report: VerifyReport) -> None:
    """`PRAGMA integrity_check` and the generation rows readers rely on."""
    with engine.connect() as conn:
        rows = [r[0] for r in conn.execute(text("PRAGMA integrity_check")).all()]
        if rows != ["ok"]:
            for line in rows[:INTEGRITY_LINES]:
                report.problems.append(Problem("catalog", f"catalog.sqlite: {line}"))
            return
    with Session(engine) as session:
        state = session.get(IndexState, 1)
        report.current = state.current_generation_id if state else None
        if report.current is None:
            return
        cur = session.get(Generation, report.current)
        if cur is None or cur.status != "current":
            what = "no generation" if cur is None else f"a generation of status {cur.status!r}"
            report.problems.append(
                Problem("catalog", f"catalog.sqlite: index_state points at {what} (id {report.current})")
            )
            return
        for g in session.scalars(select(Generation).where(Generation.status.in_(("current", "kept")))):
            n = session.scalar(
                select(text("count(*)"))
                .select_from(GenerationSegment)
                .where(GenerationSegment.generation_id == g.id)
            )
            missing = session.scalar(
                select(text("count(*)"))
                .select_from(GenerationSegment)
                .outerjoin(Segment, Segment.id == GenerationSegment.segment_id)
                .where(GenerationSegment.generation_id == g.id, Segment.id.is_(None))
            )
            if g.item_count and not n:
                report.problems.append(
                    Problem("catalog", f"catalog.sqlite: generation {g.id} lists no segments", g.id)
                )
            if missing:
                report.problems.append(
                    Problem(
                        "catalog", f"catalog.sqlite: generation {g.id} lists {missing} unknown segments", g.id
                    )
                )


def _check_files(index_dir: Path, listed: dict[int, list], report: VerifyReport) -> None:
    """Size and sha256 of each file once; a damaged file is reported for each generation listing it."""
    verdicts: dict[int, str | None] = {}
    for gen_id, segments in listed.items():
        for info, _ in segments:
            if info.id not in verdicts:
                verdicts[info.id] = file_problem(index_dir, info)
                report.files_checked += 1
            if verdicts[info.id]:
                report.problems.append(
                    Problem("segment", f"generation {gen_id}: {verdicts[info.id]}", gen_id, info.file)
                )


def file_problem(index_dir: Path, info: SegmentInfo, *, trust_stamp: bool = False) -> str | None:
    """What is wrong with a segment file (None: size and sha256 as recorded; `trust_stamp`: see
    `indexer.damage.file_digest`)."""
    if not info.sha256:
        return f"segment {info.file} has no recorded sha256 (it was missing when the index was upgraded)"
    try:
        check_segment_file(index_dir, info, checksum=True, trust_stamp=trust_stamp)
    except FileNotFoundError:
        return f"segment {info.file} is missing"
    except SegmentFileError as e:
        return e.problem
    return None


def _check_models(index_dir: Path, fingerprints: dict[int, str], report: VerifyReport) -> None:
    verdicts: dict[str, str | None] = {}
    for gen_id, fp in fingerprints.items():
        if fp not in verdicts:
            verdicts[fp] = model_problem(index_dir, fp)
        if verdicts[fp]:
            report.problems.append(Problem("model", f"generation {gen_id}: {verdicts[fp]}", gen_id))


def model_problem(index_dir: Path, fingerprint: str) -> str | None:
    """What is wrong with the index's copy of a model (None: present, fingerprint as recorded)."""
    from encoder.model_dir import ModelDirError, read_model_dir

    path = model_path(index_dir, fingerprint)
    name = f"models/{fingerprint[:12]}"
    if not path.is_dir():
        return f"the model copy {name} is missing"
    try:
        _, _, fp = read_model_dir(path)
    except (ModelDirError, OSError, ValueError) as e:
        return f"the model copy {name} is damaged ({e})"
    if fp != fingerprint:
        return f"the model copy {name} holds another model ({fp[:12]})"
    return None


def _check_current_in_full(index_dir: Path, report: VerifyReport) -> None:
    """Open the current generation checked in full: its segments against the items rows."""
    from indexer.store import InconsistentIndexError, open_snapshot

    try:
        snap = open_snapshot(index_dir, verify="full", checksums=False)  # files were hashed above
    except InconsistentIndexError as e:
        report.problems.append(Problem("segment", str(e).split("; run `imgrec")[0], report.current))
        return
    snap.close()


# --- the quick check of every command ---------------------------------------------------------------


def check_generation(index_dir: str | Path, generation_id: int | None = None, *, model: bool = True) -> None:
    """Raise the first damage in what a generation (default: the current one) uses: the catalog,
    its segment files (size, sha256: hashed once per process, or a stamp left by an earlier hash
    trusted while size, mtime and inode are unchanged), its model copy.

    Nothing published: nothing to check.

    :raise CatalogDamagedError, SegmentDamagedError, ModelCopyMissingError: damage found.
    """
    from indexer.store import DamagedGenerationError

    index_dir = Path(index_dir)
    if not has_catalog(index_dir):
        return
    url = _database_url(index_dir)
    engine = make_engine(url)
    try:
        if catalog_revision(url) != SCHEMA_REVISION:
            return  # an older schema: the command says so (or upgrades it) itself
        with Session(engine) as session:
            if generation_id is None:
                state = session.get(IndexState, 1)
                generation_id = state.current_generation_id if state else None
                if generation_id is None:
                    return
            gen = session.get(Generation, generation_id)
            if gen is None:
                raise CatalogDamagedError(f"catalog.sqlite: no generation {generation_id}", index_dir)
            segments = generation_segments(session, generation_id)
    except Exception as e:
        damage = as_damage(e, index_dir)
        if damage is None:
            raise
        raise damage from e
    finally:
        engine.dispose()
    for info, _ in segments:
        problem = file_problem(index_dir, info, trust_stamp=True)
        if problem:
            raise DamagedGenerationError(f"generation {generation_id}: {problem}", index_dir, info.file)
    if model and (problem := model_problem(index_dir, gen.model_fingerprint)):
        raise ModelCopyMissingError(f"generation {generation_id}: {problem}", index_dir)
