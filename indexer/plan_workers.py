"""Planning on several cores: each process scans a range of the inventory's top-level entries and
merge-joins it with the same range of the ledger; the partial plans are joined in path order.

    plan = plan_in_parallel(inventory, catalog_path, full=False, workers=2)   # None: not worth it

A no-change run over a million files is a million `stat` calls and a million comparisons; both
split cleanly by path range (a file under top-level entry `key` has a path in [key, next key)).
The workers are plain `python -m indexer.plan_workers` processes that import only the light
modules (`scan`, `plan`, sqlite3): no torch, no SQLAlchemy, no fork of a process with threads. They
read the catalog read-only while the caller holds the writer lock, so every range sees the same
ledger. A worker's plan comes back pickled: small when little changed.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from indexer.plan import Plan, make_plan
from indexer.scan import image_extensions, scan_inventory, top_level_keys

LEDGER_RANGE = (
    "SELECT path, state, reason, size, mtime_ns, CASE WHEN state = 'embedded' THEN item_id END "
    "FROM ledger WHERE (:lo IS NULL OR path >= :lo) AND (:hi IS NULL OR path < :hi) ORDER BY path"
)
FETCH_ROWS = 8192


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_in_parallel(inventory: str | Path, catalog: Path, full: bool, workers: int) -> Plan | None:
    """The plan of the whole inventory, computed by `workers` processes (this one included);
    None when the inventory has too few top-level entries to split."""
    keys = top_level_keys(inventory)
    workers = min(workers, len(keys))
    if workers < 2:
        return None
    cut = [keys[len(keys) * i // workers] for i in range(1, workers)]
    bounds = list(zip([None, *cut], [*cut, None], strict=True))
    exts = sorted(image_extensions())
    procs = []
    for lo, hi in bounds[1:]:
        request = {"inventory": str(inventory), "catalog": str(catalog), "lo": lo, "hi": hi, "full": full}
        cmd = [sys.executable, "-m", "indexer.plan_workers", json.dumps({**request, "extensions": exts})]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        parts = [plan_range(inventory, catalog, *bounds[0], full, exts)]
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"a planning worker failed: {err.decode(errors='replace')[-2000:]}")
            parts.append(pickle.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return join_plans(parts)


def plan_range(
    inventory: str | Path, catalog: str | Path, lo: str | None, hi: str | None, full: bool, extensions
) -> Plan:  # noqa: ANN001
    """The plan of the files under the top-level entries in [lo, hi), against that ledger range."""
    db = sqlite3.connect(f"file:{Path(catalog).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        cursor = db.execute(LEDGER_RANGE, {"lo": lo, "hi": hi})
        return make_plan(scan_inventory(inventory, lo, hi, extensions), _rows(cursor), full=full)
    finally:
        db.close()


def _rows(cursor: sqlite3.Cursor):  # noqa: ANN202 - an iterator of ledger tuples
    while rows := cursor.fetchmany(FETCH_ROWS):
        yield from rows


def join_plans(parts: list[Plan]) -> Plan:
    """Partial plans of consecutive path ranges, as one plan (lists in path order, counts summed)."""
    plan = Plan()
    for part in parts:
        for f in fields(Plan):
            mine, theirs = getattr(plan, f.name), getattr(part, f.name)
            if isinstance(mine, list):
                mine.extend(theirs)
            elif isinstance(mine, dict):
                mine.update(theirs)
            else:
                setattr(plan, f.name, mine + theirs)
    return plan


def _worker() -> None:
    request = json.loads(sys.argv[1])
    plan = plan_range(
        request["inventory"], request["catalog"], request["lo"], request["hi"], request["full"],
        request["extensions"],
    )  # fmt: skip
    sys.stdout.buffer.write(pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _worker()
