"""Walk an inventory folder: every file found, with its stat or the reason it cannot be used.

`scan_folders` gives the inventory folder by folder, each folder's own files in ascending order
of their relative path (as Python and SQLite compare strings), so that they can be merge-joined
with the folder's ledger rows read `ORDER BY path` (`indexer.plan`); it can be limited to a range
of top-level folders (`lo <= key < hi`), so that workers can share one inventory
(`indexer.plan_workers`). `scan_inventory` gives every file in path order.

Light on purpose: no torch, no SQLAlchemy (planning workers import only this and `plan`).
"""

from __future__ import annotations

import itertools
import operator
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple


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


def image_extensions() -> frozenset[str]:
    """The file extensions the indexer reads (lower case, with the dot)."""
    from encoder import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def scan_inventory(root: str | Path, extensions: Iterable[str] | None = None) -> Iterator[ScannedFile]:
    """Yield every file under `root` (recursively, symlinked folders not followed), sorted by
    `rel_path`."""
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"inventory folder not found: {root}")
    exts = _any_case(frozenset(extensions) if extensions is not None else image_extensions())
    yield from _scan_folder(root, root, "", os.path.basename(root), True, exts)


def scan_folders(
    root: str | Path,
    lo: str | None = None,
    hi: str | None = None,
    root_files: bool = True,
    extensions: Iterable[str] | None = None,
) -> Iterator[tuple[str, list[ScannedFile]]]:
    """Every folder under `root` as (its relative path + "/", or "" for the root; its own files in
    path order), folders in path order. With `lo`/`hi`, only the top-level folders whose key
    ("name/") is in [lo, hi) and their subfolders; the root's own files only with `root_files`."""
    root = os.path.realpath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"inventory folder not found: {root}")
    exts = _any_case(frozenset(extensions) if extensions is not None else image_extensions())
    yield from _folders(root, root, "", os.path.basename(root), True, exts, lo, hi, root_files)


def top_level_folders(root: str | Path) -> list[str]:
    """The sort keys ("name/") of the inventory's top-level folders, in scan order."""
    root = os.path.realpath(root)
    return [key for key, _, is_dir in _entries(root) if is_dir]


def _any_case(extensions: frozenset[str]) -> frozenset[str]:
    """Every upper/lower-case spelling of each extension: one set lookup per file, no `lower()`."""
    spelled = set()
    for ext in extensions:
        for cases in itertools.product(*((c.lower(), c.upper()) for c in ext)):
            spelled.add("".join(cases))
    return frozenset(spelled)


def _entries(folder: str) -> list[tuple[str, os.DirEntry, bool]]:
    """(sort key, entry, is_dir) of a folder's entries, sorted; symlinked folders left out."""
    with os.scandir(folder) as it:
        entries = list(it)
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
    keyed.sort(key=_KEY)
    return keyed


_KEY = operator.itemgetter(0)
_new = tuple.__new__


def _scan_folder(
    root: str, folder: str, prefix: str, label: str, valid: bool, exts: frozenset[str]
) -> Iterator[ScannedFile]:
    """The files under `folder` in path order: a subfolder `b` sorts as "b/" among the file names.

    One `stat` per file, none per folder. `prefix`: the folder's displayed relative path plus "/";
    `valid`: whether every folder name on the way is valid UTF-8. This loop runs once per file of
    the inventory (a million times at 1M items): the usual file takes the shortest path.
    """
    try:
        keyed = _entries(folder)
    except OSError:
        return  # an unreadable folder: its files cannot be listed (os.walk skips it the same way)
    for key, entry, is_dir in keyed:
        name = entry.name
        if is_dir:
            yield from _scan_folder(root, entry.path, prefix + key, name, valid and key == name + "/", exts)
            continue
        dot = name.rfind(".")
        if valid and key is name and dot > 0 and name[dot:] in exts:
            try:
                st = entry.stat()  # follows symlinks
            except OSError:
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and not entry.is_symlink():
                yield _new(ScannedFile, (prefix + key, entry.path, label, st.st_size, st.st_mtime_ns, None))
                continue
        yield _scan_one(root, label, prefix + key, entry, valid and key == name, exts)


def _folders(
    root: str,
    folder: str,
    prefix: str,
    label: str,
    valid: bool,
    exts: frozenset[str],
    lo: str | None = None,
    hi: str | None = None,
    own_files: bool = True,
) -> Iterator[tuple[str, list[ScannedFile]]]:
    """(prefix, own files) of `folder`, then of each subfolder (in [lo, hi) when given).

    The loop below runs once per file of the inventory (a million times at 1M items): the usual
    file (ASCII name, image extension, regular file) takes the shortest path, inline.
    """
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return  # an unreadable folder: its files cannot be listed (they leave the index)
    files, subfolders, odd = [], [], []
    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:  # e.g. a symlink loop: a file that cannot be stat'ed
            is_dir = False
        if is_dir:
            if entry.is_symlink():
                continue  # symlinked folders are not entered
            key = (name if name.isascii() else display_name(name)) + "/"
            if (lo is None or key >= lo) and (hi is None or key < hi):
                subfolders.append((key, entry))
            continue
        if not own_files:
            continue
        dot = name.rfind(".")
        if (
            valid
            and dot > 0
            and name[dot:] in exts
            and name.isascii()
            and entry.is_file(follow_symlinks=False)
        ):
            try:
                st = entry.stat()
            except OSError:
                odd.append(entry)
                continue
            files.append(
                _new(ScannedFile, (prefix + name, entry.path, label, st.st_size, st.st_mtime_ns, None))
            )
        else:
            odd.append(entry)
    if own_files:
        for entry in odd:  # odd names, other extensions, symlinks, ...: the full checks
            name = entry.name
            key = name if name.isascii() else display_name(name)
            files.append(_scan_one(root, label, prefix + key, entry, valid and key == name, exts))
        files.sort(key=_KEY)
        yield prefix, files
    subfolders.sort(key=_KEY)
    for key, entry in subfolders:
        name = entry.name
        yield from _folders(root, entry.path, prefix + key, name, valid and key == name + "/", exts)


def _scan_one(
    root: str, folder_name: str, rel: str, entry: os.DirEntry, valid: bool, exts: frozenset[str]
) -> ScannedFile:
    """Any file the short path did not take: an odd name, another extension, a symlink, ..."""
    name, abs_path = entry.name, entry.path
    if not valid:
        return ScannedFile(rel, abs_path, display_name(folder_name), reason="file name is not valid UTF-8")
    dot = name.rfind(".")
    if dot <= 0 or name[dot:] not in exts:
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
