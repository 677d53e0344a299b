"""Compare the inventory folder with the ledger: what to embed, delete, or leave alone.

Unchanged files cost a `stat` (done by the scan). A file whose size or mtime changed is hashed,
and re-embedded only if its bytes really changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from encoder.model_dir import file_sha256
from indexer.db import Item, LedgerEntry
from indexer.scan import ScannedFile


@dataclass
class Plan:
    embed: list[ScannedFile] = field(default_factory=list)  # new, changed, or to retry
    delete: list[int] = field(default_factory=list)  # item ids whose file is gone or now unreadable
    touch: list[ScannedFile] = field(default_factory=list)  # stat changed, same bytes: ledger only
    newly_skipped: list[ScannedFile] = field(default_factory=list)  # unusable, not yet in the ledger as such
    gone: list[str] = field(default_factory=list)  # ledger paths (no live item) no longer on disk
    unchanged: int = 0
    still_skipped: int = 0

    @property
    def changes_anything(self) -> bool:
        return bool(self.embed or self.delete or self.touch or self.newly_skipped or self.gone)


def make_plan(
    scanned: list[ScannedFile],
    ledger: dict[str, LedgerEntry],
    items: dict[str, Item],
    full: bool = False,
) -> Plan:
    """Decide each file's fate. `items` maps path -> live item; `ledger` maps path -> entry.

    Rows or ORM objects will do: entries need path, state, reason, size, mtime_ns; items id, sha256.
    """
    plan = Plan()
    seen: set[str] = set()
    for f in scanned:
        seen.add(f.rel_path)
        entry, item = ledger.get(f.rel_path), items.get(f.rel_path)
        if not f.usable:
            if item is not None:
                plan.delete.append(item.id)
            if entry is not None and entry.state == "skipped" and entry.reason == f.reason and item is None:
                plan.still_skipped += 1
            else:
                plan.newly_skipped.append(f)
            continue
        same_stat = entry is not None and (entry.size, entry.mtime_ns) == (f.size, f.mtime_ns)
        if full or entry is None:
            plan.embed.append(f)
        elif entry.state == "skipped":
            if same_stat:
                plan.still_skipped += 1
            else:
                plan.embed.append(f)
        elif entry.state != "embedded" or item is None:
            plan.embed.append(f)  # failed (may be transient), deleted and back: try again
        elif same_stat:
            plan.unchanged += 1
        elif _same_bytes(f, item):
            plan.touch.append(f)
            plan.unchanged += 1
        else:
            plan.embed.append(f)
    for path, item in items.items():
        if path not in seen:
            plan.delete.append(item.id)
    plan.gone = [p for p, e in ledger.items() if p not in seen and p not in items and e.state != "deleted"]
    return plan


def _same_bytes(f: ScannedFile, item: Item) -> bool:
    try:
        return file_sha256(f.abs_path) == item.sha256
    except OSError:
        return False
