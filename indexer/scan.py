"""Walk an inventory folder: every file found, with its stat or the reason it cannot be used."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encoder import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ScannedFile:
    """One file under the inventory root. `reason` is set when it must be skipped unread."""

    rel_path: str  # '/'-separated, relative to the root; the ledger key
    abs_path: str
    label: str  # parent folder name
    size: int | None = None
    mtime_ns: int | None = None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


def display_name(name: str) -> str:
    """A storable form of a file name that may hold undecodable bytes (escaped, stable)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def scan_inventory(root: str | Path) -> Iterator[ScannedFile]:
    """Yield every file under `root` (recursively, sorted, symlinked folders not followed)."""
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"inventory folder not found: {root}")
    yield from _scan_folder(root, root)


def _scan_folder(root: str, folder: str) -> Iterator[ScannedFile]:
    """The files of `folder`, then those of its subfolders; one `stat` per file, none per folder."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return  # an unreadable folder: its files cannot be listed (os.walk skips it the same way)
    subfolders = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop: a file that cannot be stat'ed
            is_dir = False
        if is_dir:
            if not entry.is_symlink():
                subfolders.append(entry.path)
            continue
        yield _scan_one(root, folder, entry)
    for sub in subfolders:
        yield from _scan_folder(root, sub)


def _scan_one(root: str, folder: str, entry: os.DirEntry) -> ScannedFile:
    name, abs_path = entry.name, entry.path
    rel = abs_path[len(root) + 1 :]  # folders are real (symlinked ones are not entered)
    label = os.path.basename(folder)
    try:
        rel.encode("utf-8")
        label.encode("utf-8")
    except UnicodeEncodeError:
        return ScannedFile(
            display_name(rel), abs_path, display_name(label), reason="file name is not valid UTF-8"
        )
    if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        return ScannedFile(rel, abs_path, label, reason="not an image file extension")
    try:
        st = entry.stat()  # follows symlinks
    except OSError as e:
        return ScannedFile(rel, abs_path, label, reason=f"cannot stat: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        return ScannedFile(rel, abs_path, label, reason="not a regular file")
    if entry.is_symlink() and os.path.commonpath([os.path.realpath(abs_path), root]) != root:
        return ScannedFile(rel, abs_path, label, reason="symlink points outside the inventory")
    return ScannedFile(rel, abs_path, label, size=st.st_size, mtime_ns=st.st_mtime_ns)
