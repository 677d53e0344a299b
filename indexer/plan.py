"""Compare the inventory folder with the ledger: what to embed, delete, or leave alone.

Folder by folder (`plan_folders`): the files directly in a folder are scanned (one `stat` each)
and their names and stats digested; when the digest equals the one recorded when the folder was
last settled (`folders` table), nothing in it changed and its ledger rows are not even read.
Otherwise the folder's files and its ledger rows, both sorted by path, are merge-joined
(`merge_into`), so memory holds only what changed. `make_plan` merge-joins a whole scan with the
whole ledger (the thorough path, and tests).

A file whose size or mtime changed is hashed, and re-embedded only if its bytes really changed
(`resolve_touches`).

A ledger row is `(path, state, reason, size, mtime_ns, item_id)` (`LedgerRow`; the stream gives
plain tuples, faster to make a million of); `item_id` is the live item at that path (the fast
query takes it from embedded rows, the thorough one joins the items). The writer keeps "a live
item <=> an embedded ledger row"; `Plan.ledger_live` counts them (settled folders by their
recorded count) so the job can check that against the current generation's item count.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from indexer.scan import ScannedFile


class LedgerRow(NamedTuple):
    path: str
    state: str  # embedded | skipped | failed | deleted
    reason: str | None
    size: int | None
    mtime_ns: int | None
    item_id: int | None  # the live item of an embedded row


@dataclass
class Plan:
    embed: list[ScannedFile] = field(default_factory=list)  # new, changed, or to retry
    delete: list[int] = field(default_factory=list)  # item ids whose file is gone or now unreadable
    touch: list[tuple[ScannedFile, int]] = field(default_factory=list)  # same bytes, new stat: ledger only
    stat_changed: list[tuple[ScannedFile, int]] = field(default_factory=list)  # to hash: touch or embed
    newly_skipped: list[ScannedFile] = field(default_factory=list)  # unusable, not yet in the ledger as such
    gone: list[str] = field(default_factory=list)  # ledger paths (no live item) no longer on disk
    unchanged: int = 0
    still_skipped: int = 0
    live_at_path: dict[str, int] = field(default_factory=dict)  # files to embed that have a live item
    ledger_live: int = 0  # embedded ledger rows seen (= live items, when the catalog is consistent)
    scanned: int = 0
    settle: dict[str, str] = field(default_factory=dict)  # folders compared file by file -> their digest
    vanished: list[str] = field(default_factory=list)  # settled folders no longer on disk
    thorough: bool = False  # planned against the ledger joined with the items: forget every folder

    @property
    def changes_anything(self) -> bool:
        return bool(self.embed or self.delete or self.touch or self.newly_skipped or self.gone)

    def sort(self) -> Plan:
        """Every list in a canonical order (files by path), whatever order folders were planned in."""
        for files in (self.embed, self.newly_skipped):
            files.sort(key=_path)
        for pairs in (self.touch, self.stat_changed):
            pairs.sort(key=_first_path)
        self.delete.sort()
        self.gone.sort()
        self.vanished.sort()
        return self


class StoredFolder(NamedTuple):
    digest: str
    live: int
    skipped: int


def folder_digest(files: list[ScannedFile]) -> str:
    """A digest of the paths, sizes, mtimes and skip reasons of a folder's own files."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(map(_PATH, files)).encode("utf-8", "surrogatepass"))
    for column in (_SIZE, _MTIME, _REASON):  # str() of a list of ints/None/str: C-fast and stable
        h.update(b"\0" + str(list(map(column, files))).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


_PATH, _SIZE, _MTIME, _REASON = (operator.itemgetter(i) for i in (0, 3, 4, 5))


def plan_folders(
    folders: Iterable[tuple[str, list[ScannedFile]]],
    stored: dict[str, StoredFolder],
    rows_in: Callable[[str], Iterable[tuple]],
    full: bool = False,
) -> Plan:
    """Decide each file's fate folder by folder. `folders`: (folder prefix, its own files sorted);
    `stored`: the settled folders (prefix -> digest and counts); `rows_in(prefix)`: the ledger rows
    of the files directly in a folder, sorted. Stored folders no longer on disk lose their files."""
    plan = Plan()
    seen = set()
    for prefix, files in folders:
        seen.add(prefix)
        known = stored.get(prefix)
        digest = folder_digest(files)
        if known is not None and known.digest == digest and not full:
            plan.unchanged += known.live
            plan.ledger_live += known.live
            plan.still_skipped += known.skipped
            plan.scanned += len(files)
            continue
        plan.settle[prefix] = digest
        merge_into(plan, files, rows_in(prefix), full)
    for prefix in sorted(set(stored) - seen):
        plan.vanished.append(prefix)
        merge_into(plan, [], rows_in(prefix), full)
    return plan.sort()


def _path(f: ScannedFile) -> str:
    return f[0]


def _first_path(pair: tuple) -> str:
    return pair[0][0]


def make_plan(scanned: Iterable[ScannedFile], ledger: Iterable[tuple], full: bool = False) -> Plan:
    """Decide each file's fate from two streams sorted by path (files on disk, ledger rows laid out
    as `LedgerRow`; plain tuples will do). Files whose stat changed are left in
    `plan.stat_changed`: call `resolve_touches` next."""
    plan = Plan()
    merge_into(plan, scanned, ledger, full)
    return plan


def merge_into(plan: Plan, scanned: Iterable[ScannedFile], ledger: Iterable[tuple], full: bool) -> None:
    """Merge-join files and ledger rows (both sorted by path) into `plan`.

    This loop runs once per file compared: an unchanged file takes the shortest path.
    """
    rows = iter(ledger)
    row = next(rows, None)
    previous = ""
    unchanged = scanned_n = live = 0
    for f in scanned:
        path = f[0]
        if path <= previous and scanned_n:
            raise RuntimeError(f"the scan is not in path order: {path!r} after {previous!r}")
        previous = path
        scanned_n += 1
        while row is not None and row[0] < path:  # in the ledger, no longer on disk
            _gone(plan, row)
            row = next(rows, None)
        if row is not None and row[0] == path:
            # unchanged: usable, embedded, live, same size and mtime (the usual case, by far)
            if f[5] is None and row[5] is not None and row[3] == f[3] and row[4] == f[4] and row[1] == "embedded" and not full:  # fmt: skip
                unchanged += 1
                live += 1
                row = next(rows, None)
                continue
            _decide(plan, f, row, full)
            row = next(rows, None)
        else:
            _decide(plan, f, None, full)
    while row is not None:
        _gone(plan, row)
        row = next(rows, None)
    plan.unchanged += unchanged
    plan.scanned += scanned_n
    plan.ledger_live += live


def _gone(plan: Plan, row: tuple) -> None:
    row = LedgerRow._make(row)
    if row.item_id is not None:
        plan.ledger_live += 1
        plan.delete.append(row.item_id)
    elif row.state != "deleted":
        plan.gone.append(row.path)


def _decide(plan: Plan, f: ScannedFile, entry: tuple | None, full: bool) -> None:
    entry = LedgerRow._make(entry) if entry is not None else None
    item_id = entry.item_id if entry is not None else None
    if item_id is not None:
        plan.ledger_live += 1
    if not f.usable:
        if item_id is not None:
            plan.delete.append(item_id)
        if entry is not None and entry.state == "skipped" and entry.reason == f.reason and item_id is None:
            plan.still_skipped += 1
        else:
            plan.newly_skipped.append(f)
        return
    same_stat = entry is not None and (entry.size, entry.mtime_ns) == (f.size, f.mtime_ns)
    if full or entry is None or (item_id is not None and entry.state != "embedded"):
        _embed(plan, f, item_id)  # new, a rebuild, or a live item the ledger does not record as embedded
    elif item_id is None:
        if entry.state == "skipped" and same_stat:
            plan.still_skipped += 1
        else:
            plan.embed.append(f)  # changed since skipped, failed (may be transient), deleted and back
    elif same_stat:
        plan.unchanged += 1
    else:
        plan.stat_changed.append((f, item_id))


def _embed(plan: Plan, f: ScannedFile, item_id: int | None) -> None:
    plan.embed.append(f)
    if item_id is not None:
        plan.live_at_path[f.rel_path] = item_id


def resolve_touches(plan: Plan, item_sha256: Callable[[list[int]], dict[int, str]]) -> None:
    """Hash the files whose stat changed: same bytes -> `touch` (ledger only), else `embed`.

    `item_sha256(ids)` returns the catalog's sha256 of each item.
    """
    if not plan.stat_changed:
        return
    known = item_sha256([item_id for _, item_id in plan.stat_changed])
    for f, item_id in plan.stat_changed:
        if _same_bytes(f, known.get(item_id)):
            plan.touch.append((f, item_id))
            plan.unchanged += 1
        else:
            _embed(plan, f, item_id)
    plan.stat_changed = []
    plan.sort()


def _same_bytes(f: ScannedFile, sha256: str | None) -> bool:
    from encoder.model_dir import file_sha256

    if sha256 is None:
        return False
    try:
        return file_sha256(f.abs_path) == sha256
    except OSError:
        return False
