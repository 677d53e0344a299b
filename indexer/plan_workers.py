"""Planning the run: folder by folder against the catalog, on one core or several.

    plan = plan_range(inventory, catalog_path, None, None, full=False)        # one process
    plan = plan_in_parallel(inventory, catalog_path, full=False, workers=2)   # None: not worth it

A no-change run over a million files is a million `stat` calls; they split cleanly by top-level
folder (a file under top-level folder `key` has a path in [key, next key)). This process takes the
root's own files and the first range of top-level folders; each other range goes to a plain
`python -m indexer.plan_workers` process that imports only the light modules (`scan`, `plan`,
`folders`, sqlite3): no torch, no SQLAlchemy, no fork of a process with threads. All read the
catalog read-only while the caller holds the writer lock, so they see the same ledger. A worker's
plan comes back pickled: small when little changed.
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

from indexer.folders import rows_in, stored_folders
from indexer.plan import Plan, plan_folders
from indexer.scan import image_extensions, scan_folders, top_level_folders


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_in_parallel(inventory: str | Path, catalog: Path, full: bool, workers: int) -> Plan | None:
    """The plan of the whole inventory, computed by `workers` processes (this one included);
    None when the inventory has too few top-level entries to split."""
    keys = top_level_folders(inventory)
    workers = min(workers, len(keys))
    if workers < 2:
        return None
    cut = [keys[len(keys) * i // workers] for i in range(1, workers)]
    bounds = list(zip([None, *cut], [*cut, None], strict=True))  # the root (and its files) in the first
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
    inventory: str | Path,
    catalog: str | Path,
    lo: str | None,
    hi: str | None,
    full: bool,
    extensions=None,  # noqa: ANN001 - file extensions (default: the encoder's)
) -> Plan:
    """The plan of the top-level folders in [lo, hi) (with the root's own files when `lo` is None),
    each folder compared with its ledger rows unless it is settled and unchanged."""
    db = sqlite3.connect(f"file:{Path(catalog).resolve()}?mode=ro", uri=True, timeout=30)
    try:
        stored = stored_folders(db, lo, hi)
        folders = scan_folders(inventory, lo, hi, root_files=lo is None, extensions=extensions)
        return plan_folders(folders, stored, lambda prefix: rows_in(db, prefix), full=full)
    finally:
        db.close()


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
            elif isinstance(mine, bool):
                setattr(plan, f.name, mine or theirs)
            else:
                setattr(plan, f.name, mine + theirs)
    return plan.sort()


def _worker() -> None:
    request = json.loads(sys.argv[1])
    plan = plan_range(
        request["inventory"], request["catalog"], request["lo"], request["hi"], request["full"],
        request["extensions"],
    )  # fmt: skip
    sys.stdout.buffer.write(pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _worker()
