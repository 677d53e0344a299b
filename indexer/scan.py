"""Walk an inventory folder: every file found, with its stat or the reason it cannot be used.

Files come out in ascending order of their relative path (as Python and SQLite compare strings),
so the scan can be merge-joined with the ledger read `ORDER BY path` without holding either
in memory (`indexer.plan`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from encoder import IMAGE_EXTENSIONS


class ScannedFile(NamedTuple):
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
    """Yield every file under `root` (recursively, symlinked folders not followed), sorted by
    `rel_path`."""
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"inventory folder not found: {root}")
    yield from _scan_folder(root, root, "", os.path.basename(root), True)


def _scan_folder(root: str, folder: str, prefix: str, label: str, valid: bool) -> Iterator[ScannedFile]:
    """The files under `folder` in path order: a subfolder `b` sorts as "b/" among the file names.

    One `stat` per file, none per folder. `prefix`: the folder's displayed relative path plus "/";
    `valid`: whether every folder name on the way is valid UTF-8. This loop runs once per file of
    the inventory (a million times at 1M items), so the usual case takes the shortest path.
    """
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return  # an unreadable folder: its files cannot be listed (os.walk skips it the same way)
    keyed = []
    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop: a file that cannot be stat'ed
            is_dir = False
        if is_dir and entry.is_symlink():
            continue  # symlinked folders are not entered
        shown = name if name.isascii() else display_name(name)
        keyed.append((shown + "/" if is_dir else shown, entry, is_dir))
    keyed.sort(key=_first)
    image_extensions = IMAGE_EXTENSIONS
    for key, entry, is_dir in keyed:
        if is_dir:
            yield from _scan_folder(
                root, entry.path, prefix + key, entry.name, valid and key == entry.name + "/"
            )
            continue
        name = entry.name
        dot = name.rfind(".")
        if valid and key is name and dot > 0 and name[dot:].lower() in image_extensions:
            try:
                st = entry.stat()  # follows symlinks
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and not entry.is_symlink():
                yield ScannedFile(prefix + key, entry.path, label, st.st_size, st.st_mtime_ns)
                continue
        yield _scan_one(root, label, prefix + key, entry, valid and key == name)


def _first(t: tuple) -> str:
    return t[0]


def _scan_one(root: str, folder_name: str, rel: str, entry: os.DirEntry, valid: bool) -> ScannedFile:
    name, abs_path = entry.name, entry.path
    if not valid:
        return ScannedFile(rel, abs_path, display_name(folder_name), reason="file name is not valid UTF-8")
    if _extension(name) not in IMAGE_EXTENSIONS:
        return ScannedFile(rel, abs_path, folder_name, reason="not an image file extension")
    try:
        st = entry.stat()  # follows symlinks
    except OSError as e:
        return ScannedFile(rel, abs_path, folder_name, reason=f"cannot stat: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        return ScannedFile(rel, abs_path, folder_name, reason="not a regular file")
    if entry.is_symlink() and os.path.commonpath([os.path.realpath(abs_path), root]) != root:
        return ScannedFile(rel, abs_path, folder_name, reason="symlink points outside the inventory")
    return ScannedFile(rel, abs_path, folder_name, st.st_size, st.st_mtime_ns)


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
