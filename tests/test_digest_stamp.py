"""Segment checksums stamped on the file: trusted by the quick check, never by verify."""

from __future__ import annotations

import hashlib
import os

import pytest

from indexer import damage


@pytest.fixture
def fresh_process_cache():
    """Each call below stands for a new process: nothing remembered in memory."""
    damage._digests.clear()
    yield
    damage._digests.clear()


def test_a_stamp_is_trusted_until_the_file_changes(tmp_path, fresh_process_cache):
    path = tmp_path / "000001.faiss"
    path.write_bytes(b"vectors" * 1000)
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    assert damage.file_digest(path) == real
    assert os.getxattr(path, damage.STAMP_XATTR).decode().endswith(real)

    # rot that keeps size and mtime: a stamp-trusting check misses it, a full one does not
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    damage._digests.clear()
    assert damage.file_digest(path, trust_stamp=True) == real
    damage._digests.clear()
    assert damage.file_digest(path) != real

    # an ordinary write moves the mtime: the stamp is void and the file is hashed again
    path.write_bytes(b"other" * 1000)
    damage._digests.clear()
    assert damage.file_digest(path, trust_stamp=True) == hashlib.sha256(b"other" * 1000).hexdigest()


def test_a_forged_stamp_for_another_file_state_is_ignored(tmp_path, fresh_process_cache):
    path = tmp_path / "000002.faiss"
    path.write_bytes(b"abc")
    os.setxattr(path, damage.STAMP_XATTR, b"3:0:0:" + b"0" * 64)  # another mtime and inode
    assert damage.file_digest(path, trust_stamp=True) == hashlib.sha256(b"abc").hexdigest()
