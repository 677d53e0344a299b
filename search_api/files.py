"""Opening an inventory file for a request: once, beneath the inventory root, never through a link out.

    fd = open_beneath(root, "mugs/item-0001.jpg")   # a descriptor of a regular file inside `root`

The path is walked one component at a time from a descriptor of the root (`openat` with
`O_NOFOLLOW`), so there is no check separate from the open that a symlink swapped in at any level
could race. Symlinks that stay inside the inventory (the indexer accepts those) are followed by
reading them and resolving their targets beneath the root in the same walk; `..` never climbs above
the root; an absolute target counts only when it names the root by its real path. The caller reads,
sends or decodes the descriptor it gets, never the path again. (Linux's `openat2(RESOLVE_BENEATH)`
does the same in the kernel, but Python does not offer it.)
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path

MAX_SYMLINKS = 40  # links followed per path, as Linux allows (ELOOP past it)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in must not block the open (no effect on regular files)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class RefusedPathError(PermissionError):
    """The path leads outside the root, or to something other than a regular file."""


def open_beneath(root: str | Path, rel_path: str, *, max_symlinks: int = MAX_SYMLINKS) -> int:
    """A read-only descriptor of the regular file `rel_path` ('/'-separated) beneath the folder `root`.

    :raise RefusedPathError: the path, or a link on it, leads outside `root`; or not a regular file.
    :raise OSError: as `open` does: FileNotFoundError, ELOOP past `max_symlinks`, ENOTDIR, ...
    """
    if rel_path.startswith("/"):
        raise RefusedPathError(errno.EXDEV, "absolute path", rel_path)
    real_root = os.path.realpath(root)
    todo = deque(rel_path.split("/"))
    dirs = [os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]  # root ... current folder
    links = 0
    try:
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(dirs) == 1:
                    raise RefusedPathError(errno.EXDEV, "leads above the inventory root", rel_path)
                os.close(dirs.pop())
                continue
            last = not any(part not in ("", ".") for part in todo)
            try:
                fd = os.open(name, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=dirs[-1])
            except OSError as e:
                # a symlink: ELOOP (O_NOFOLLOW), or ENOTDIR where a folder was wanted (O_DIRECTORY)
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                try:
                    target = os.readlink(name, dir_fd=dirs[-1])
                except OSError:
                    raise e from None  # not a link (any more): the open's own error
                links += 1
                if links > max_symlinks:
                    raise OSError(errno.ELOOP, f"more than {max_symlinks} symlinks", rel_path) from None
                if target.startswith("/"):
                    if not target.startswith(real_root.rstrip("/") + "/"):
                        raise RefusedPathError(errno.EXDEV, "symlink leads outside", rel_path) from None
                    target = target[len(real_root.rstrip("/")) + 1 :]
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                todo.extendleft(reversed(target.split("/")))
                continue
            if not last:
                dirs.append(fd)
                continue
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise RefusedPathError(errno.EINVAL, "not a regular file", rel_path)
            return fd
        raise RefusedPathError(errno.EISDIR, "not a regular file", rel_path)
    finally:
        for fd in dirs:
            os.close(fd)
