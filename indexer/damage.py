"""Damage at rest: what can be damaged in an index, recognising it, and checksums cached per process.

    try: ...
    except Exception as e:
        damage = as_damage(e, index_dir)      # an IndexDamageError, or None when it is something else

Three kinds, each with its own exit code in the CLI (`imgrec.exit_codes`) and a next step:

- `SegmentDamagedError`: a segment file is missing, of the wrong size, does not match its sha256,
  or cannot be read by FAISS;
- `CatalogDamagedError`: `catalog.sqlite` is not a database any more, or SQLite finds it malformed;
- `ModelCopyMissingError`: the index's own copy of its model (`models/<fingerprint>/`) is missing
  or no longer matches its fingerprint.

`file_digest(path)` hashes a file once per process: the result is cached by (path, size, mtime,
inode), so a worker re-opening the same segment, or a retry of a refused generation, does not read
it again; a file replaced or rewritten has another key.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import threading
from pathlib import Path


class IndexDamageError(Exception):
    """Part of an index is damaged on disk. `str()` is one line: what is wrong, then the next step."""

    what = "the index is damaged"

    def __init__(self, problem: str, index_dir: str | Path | None = None, file: str | None = None):
        self.problem = problem
        self.index_dir = str(index_dir) if index_dir is not None else "INDEX"
        self.file = file  # the damaged file, relative to the index dir (when one is known)
        super().__init__(problem)

    @property
    def repair_step(self) -> str:
        return f"run `imgrec verify --repair {self.index_dir}`"

    @property
    def next_step(self) -> str:
        return f"run `imgrec verify {self.index_dir}`, then {self.repair_step.removeprefix('run ')}"

    def __str__(self) -> str:
        return f"{self.problem}; {self.next_step}"


class SegmentDamagedError(IndexDamageError):
    """A segment file is missing, truncated, altered or unreadable."""

    what = "a segment file is damaged"

    @property
    def repair_step(self) -> str:
        d = self.index_dir
        return (
            f"run `imgrec verify --repair {d}` (or `imgrec rollback {d}`) to serve the newest generation "
            "whose files are intact"
        )


class CatalogDamagedError(IndexDamageError):
    """`catalog.sqlite` cannot be read as a database, or SQLite reports it malformed."""

    what = "the catalog is damaged"

    @property
    def repair_step(self) -> str:
        return "restore catalog.sqlite from a backup, or build a new index with `imgrec index` into an empty folder"

    @property
    def next_step(self) -> str:
        return f"run `imgrec verify {self.index_dir}` for details; {self.repair_step}"


class ModelCopyMissingError(IndexDamageError):
    """The index's copy of its model is missing or altered."""

    what = "the index's model copy is missing"

    @property
    def repair_step(self) -> str:
        return (
            f"run `imgrec verify --repair --model MODEL_DIR {self.index_dir}` with the model that built "
            "the index (a run of `imgrec index --model MODEL_DIR` restores it too)"
        )

    @property
    def next_step(self) -> str:
        return self.repair_step


# SQLite's words for a file that is not (or no longer) a sound database.
_CORRUPT = ("file is not a database", "malformed", "file is encrypted", "not a database")


def as_damage(e: BaseException, index_dir: str | Path | None = None) -> IndexDamageError | None:
    """The damage `e` (or its cause) reports, or None when it is another kind of failure.

    Recognises `IndexDamageError` itself and SQLite's corruption errors, raw (`sqlite3`) or wrapped
    by SQLAlchemy (whose `orig` is the `sqlite3` error).
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, IndexDamageError):
            return e
        orig = getattr(e, "orig", None)
        for err in (e, orig):
            if isinstance(err, sqlite3.DatabaseError) and any(w in str(err).lower() for w in _CORRUPT):
                return CatalogDamagedError(f"catalog.sqlite is damaged ({err})", index_dir)
        e = e.__cause__ or e.__context__
    return None


FULL_BELOW_BYTES = 1 << 20  # an I/O error with less free space than this is taken for a full disk


def is_disk_full(e: BaseException, index_dir: str | Path | None = None) -> bool:
    """`e` (an OSError, or a SQLite error raw or through SQLAlchemy) comes from a full disk.

    SQLite says "database or disk is full", or only "disk I/O error" when it cannot even create its
    WAL files to open the catalog: that is taken for a full disk when `index_dir` has under 1 MiB free.
    """
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    orig = getattr(e, "orig", e)
    if not isinstance(orig, sqlite3.Error):
        return False
    text = str(orig).lower()
    if "full" in text:
        return True
    if "i/o error" not in text or index_dir is None:
        return False
    try:
        st = os.statvfs(index_dir)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW_BYTES


# --- checksums, once per process ------------------------------------------------------------------

_digests: dict[tuple[str, int, int, int], str] = {}
_digests_lock = threading.Lock()


STAMP_XATTR = "user.imgrec.sha256"  # "<size>:<mtime_ns>:<inode>:<sha256>" left on a file that was hashed


def file_digest(path: str | Path, *, trust_stamp: bool = False) -> str:
    """sha256 of a file's bytes, cached for this process by (path, size, mtime, inode).

    With `trust_stamp`, a digest stamped on the file by an earlier process (an extended attribute
    written after hashing it, valid while size, mtime and inode are unchanged) is used instead of
    reading the file again: every CLI command checks the files of the current generation, and
    re-reading 270 MB of segments at 1M items would cost each of them about 2 s. A write to the
    file changes its mtime and so voids the stamp; rot that leaves the mtime alone is found by
    `imgrec verify` and by the API, which never trust stamps. Filesystems without user extended
    attributes simply hash every time.

    :raise FileNotFoundError: the file is gone.
    """
    path = os.path.abspath(path)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    stamp_prefix = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:"
    if trust_stamp:
        try:
            stamp = os.getxattr(path, STAMP_XATTR).decode()
        except (OSError, UnicodeDecodeError):
            stamp = ""
        if stamp.startswith(stamp_prefix):
            return stamp[len(stamp_prefix) :]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with _digests_lock:
        _digests[key] = digest
    with contextlib.suppress(OSError):  # no user xattrs here, or read-only: the next process hashes again
        os.setxattr(path, STAMP_XATTR, (stamp_prefix + digest).encode())
    return digest
