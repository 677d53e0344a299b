"""Walk an inventory folder: every file found, with its stat or the reason it cannot be used."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encoder import is_image_name


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
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames.sort()
        for name in sorted(filenames):
            yield _scan_one(root, dirpath, name)


def _scan_one(root: str, dirpath: str, name: str) -> ScannedFile:
    abs_path = os.path.join(dirpath, name)
    rel = os.path.relpath(abs_path, root).replace(os.sep, "/")
    label = os.path.basename(dirpath)
    try:
        rel.encode("utf-8")
        label.encode("utf-8")
    except UnicodeEncodeError:
        return ScannedFile(
            display_name(rel), abs_path, display_name(label), reason="file name is not valid UTF-8"
        )
    if not is_image_name(name):
        return ScannedFile(rel, abs_path, label, reason="not an image file extension")
    try:
        st = os.stat(abs_path)  # follows symlinks
    except OSError as e:
        return ScannedFile(rel, abs_path, label, reason=f"cannot stat: {e.strerror or e}")
    if not stat.S_ISREG(st.st_mode):
        return ScannedFile(rel, abs_path, label, reason="not a regular file")
    real = os.path.realpath(abs_path)
    if os.path.commonpath([real, root]) != root:
        return ScannedFile(rel, abs_path, label, reason="symlink points outside the inventory")
    return ScannedFile(rel, abs_path, label, size=st.st_size, mtime_ns=st.st_mtime_ns)
