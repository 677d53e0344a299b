"""API keys: made once, kept as a hash in the index's catalog, looked up by their id.

A key reads `imgrec_<r|w>_<key id>_<secret>`: a recognisable prefix (secret scanners and people
spot it), the scope's letter (so the web page can refuse a write key without asking the server),
a public key id (12 hex digits: the lookup) and a secret (64 hex digits, 256 random bits). The
catalog keeps the id and the SHA-256 of the secret; a presented secret is hashed and compared with
`hmac.compare_digest`. A fast hash is enough: the secret is random, not a password, so there is
nothing to guess from its hash, and a slow KDF would cost every request.

    key = create_key(index_dir, "shop-frontend", "read")   # printed once, never stored
    store = KeyStore(index_dir, ttl=2.0)                    # the API's cached reader
    info = store.authenticate(key)                           # KeyInfo, or InvalidKeyError
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from indexer.db import DATABASE_FILE, ApiKey, database_url, open_database, utcnow

logger = logging.getLogger(__name__)

PREFIX = "imgrec"
SCOPES = ("read", "write")  # a write key may also read
KEY_PATTERN = re.compile(rf"^{PREFIX}_([rw])_([0-9a-f]{{12}})_([0-9a-f]{{64}})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LAST_USED_EVERY = 60.0  # seconds: `last_used_at` is written at most this often per key and process


class KeyAdminError(ValueError):
    """A key cannot be made or changed (bad name or scope, name taken, no such key)."""


class InvalidKeyError(Exception):
    """A presented key is malformed, unknown, or revoked (the API answers 401)."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as the API sees it: who and what it may do (never its secret)."""

    name: str
    scope: str
    key_id: str

    def allows(self, scope: str) -> bool:
        return self.scope == "write" or scope == self.scope


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _catalog(index_dir: str | Path) -> Engine:
    """The index's catalog, upgraded to the current schema (api_keys included).

    :raise KeyAdminError: the folder holds no catalog (never create one here: a typo would make an index).
    """
    if not (Path(index_dir) / DATABASE_FILE).is_file():
        raise KeyAdminError(f"{index_dir} is not an index (no {DATABASE_FILE}); run `imgrec index` first")
    return open_database(index_dir)


def create_key(index_dir: str | Path, name: str, scope: str) -> str:
    """Make a key, store its hash, return the key (the only time it exists in full).

    :raise KeyAdminError: a bad name or scope, the name is taken, or no index there.
    """
    if not NAME_PATTERN.match(name):
        raise KeyAdminError(
            f"bad key name {name!r}: 1-64 letters, digits, '.', '_' or '-', starting alphanumeric"
        )
    if scope not in SCOPES:
        raise KeyAdminError(f"bad scope {scope!r}: one of {', '.join(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_hex(32)
    engine = _catalog(index_dir)
    try:
        with Session(engine) as session:
            session.add(ApiKey(name=name, key_id=key_id, secret_sha256=_hash(secret), scope=scope))
            session.commit()
    except IntegrityError:
        raise KeyAdminError(f"a key named {name!r} exists already (revoked keys keep their name)") from None
    finally:
        engine.dispose()
    return f"{PREFIX}_{scope[0]}_{key_id}_{secret}"


def list_keys(index_dir: str | Path) -> list[dict]:
    """Every key (revoked ones too), oldest first: name, scope, key id, created, last used, revoked.

    :raise KeyAdminError: no index there.
    """
    engine = _catalog(index_dir)
    try:
        with Session(engine) as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
            return [
                {
                    "name": k.name,
                    "scope": k.scope,
                    "key_id": k.key_id,
                    "created_at": k.created_at,
                    "last_used_at": k.last_used_at,
                    "revoked_at": k.revoked_at,
                }
                for k in rows
            ]
    finally:
        engine.dispose()


def revoke_key(index_dir: str | Path, name: str) -> bool:
    """Revoke the key named `name`; False when it was revoked already.

    :raise KeyAdminError: no key has that name, or no index there.
    """
    engine = _catalog(index_dir)
    try:
        with Session(engine) as session:
            key = session.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()
            if key is None:
                raise KeyAdminError(f"no key named {name!r}")
            if key.revoked_at is not None:
                return False
            key.revoked_at = utcnow()
            session.commit()
            return True
    finally:
        engine.dispose()


@dataclass(frozen=True)
class _Row:
    name: str
    scope: str
    secret_sha256: str
    revoked: bool


_DUMMY_HASH = _hash("0" * 64)  # compared against when the id is unknown: the same work either way


class KeyStore:
    """The API's view of the keys: rows fetched by key id, cached `ttl` seconds (a revoke takes
    effect within `ttl`; 0: every request reads the catalog)."""

    def __init__(self, index_dir: str | Path, ttl: float = 2.0):
        self.path = Path(index_dir) / DATABASE_FILE
        self.ttl = ttl
        self._engine: Engine | None = None
        self._cache: dict[str, tuple[float, _Row | None]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def authenticate(self, key: str) -> KeyInfo:
        """The key's name and scope.

        :raise InvalidKeyError: malformed, unknown or revoked (the message says which, never the key).
        """
        m = KEY_PATTERN.match(key)
        if m is None:
            raise InvalidKeyError(f"not an imgrec API key (they look like {PREFIX}_r_<id>_<secret>)")
        letter, key_id, secret = m.groups()
        row = self._row(key_id)
        matches = hmac.compare_digest(_hash(secret), row.secret_sha256 if row else _DUMMY_HASH)
        if row is None or not matches or row.scope[0] != letter:
            raise InvalidKeyError("unknown API key")
        if row.revoked:
            raise InvalidKeyError(f"the API key {row.name!r} was revoked")
        self._touch(key_id)
        return KeyInfo(row.name, row.scope, key_id)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _row(self, key_id: str) -> _Row | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        row = self._fetch(key_id)
        with self._lock:
            if len(self._cache) > 10_000:  # unknown ids are cached too: keep the dict bounded
                self._cache.clear()
            self._cache[key_id] = (now, row)
        return row

    def _db(self) -> Engine | None:
        if self._engine is None:
            if not self.path.exists():  # no index yet: no keys (never create an empty catalog here)
                return None
            # a short busy timeout: a request never waits long on the indexer's write transaction
            self._engine = create_engine(database_url(self.path.parent), connect_args={"timeout": 1})
        return self._engine

    def _fetch(self, key_id: str) -> _Row | None:
        engine = self._db()
        if engine is None:
            return None
        try:
            with Session(engine) as session:
                k = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
        except OperationalError as e:  # an index older than the api_keys table: no keys yet
            logger.warning("API keys cannot be read from %s: %s", self.path, e.orig)
            return None
        if k is None:
            return None
        return _Row(k.name, k.scope, k.secret_sha256, k.revoked_at is not None)

    def _touch(self, key_id: str) -> None:
        """Record `last_used_at`, at most every LAST_USED_EVERY seconds; skipped while the catalog is busy."""
        now = time.monotonic()
        if now - self._last_used.get(key_id, -LAST_USED_EVERY) < LAST_USED_EVERY:
            return
        self._last_used[key_id] = now
        engine = self._db()
        if engine is None:
            return
        try:
            with Session(engine) as session:
                session.execute(update(ApiKey).where(ApiKey.key_id == key_id).values(last_used_at=utcnow()))
                session.commit()
        except OperationalError as e:  # busy or read-only: last use is informative only
            logger.info("last use of an API key not recorded: %s", e.orig)


def utc_text(value: dt.datetime | None) -> str:
    """A catalog time (naive UTC) for people: `2026-11-30 15:02:11Z`, or `-`."""
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"
