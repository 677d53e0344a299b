"""Chunked SQL: no statement carries one parameter per file.

SQLite refuses statements with more bound parameters than its `SQLITE_LIMIT_VARIABLE_NUMBER`
(32,766 in stock builds, lower where set so); a list of ids or paths is therefore sent in chunks
no larger than the connection's own limit.

    for chunk in chunks(ids, chunk_size(session)):
        session.execute(select(Item).where(Item.id.in_(chunk)))
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

T = TypeVar("T")

CHUNK = 500  # values per statement at most (SQLite's default limit is far higher)


def variable_limit(db: Session | Connection) -> int:
    """The connection's limit on bound parameters per statement."""
    conn = db.connection() if isinstance(db, Session) else db
    dbapi = conn.connection.dbapi_connection
    try:
        return int(dbapi.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (AttributeError, sqlite3.Error):  # not SQLite, or a driver without getlimit
        return 999


def chunk_size(db: Session | Connection, reserve: int = 8) -> int:
    """How many values one IN (...) may carry, leaving `reserve` parameters for the rest of the
    statement (other conditions, values, an `onupdate` timestamp)."""
    return max(1, min(CHUNK, variable_limit(db) - reserve))


def chunks(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` values."""
    it = iter(values)
    while chunk := list(islice(it, size)):
        yield chunk
