"""The index's SQLite catalog: ORM models and opening a database (migrated by Alembic).

Tables
    items                one row per inventory image ever indexed; ids are the FAISS ids
    segments             one row per immutable segment file (FAISS), with its size and checksums
    generations          one row per published generation, with how it was built and its summary
    generation_segments  the segments of each generation, each with its deletion set
    generation_changes   what each generation added, updated or deleted (for rollback)
    ledger               one row per file seen in the inventory: its last outcome and why
    folders              per folder, a digest of its files as last settled (a no-change shortcut)
    index_state          a single row pointing at the current generation (the commit point)
    jobs                 writes accepted over HTTP (add, delete), queued until the indexer applies them
    api_keys             the search API's keys: a hash of each secret, its scope, revocation
    products             one row per catalog product (issue 12); `product_key` is the catalog's product_id
    product_attributes   one row per (product, attribute) with a value: typed value columns
    attribute_types      one row per attribute name: string | number | boolean
    product_changes      what each generation did to a product, with what rollback restores

Attributes are an entity-attribute-value table, not a JSON column: a filter atom compiles to
`product_id IN (SELECT product_id FROM product_attributes WHERE name = ? AND number_value < ?)`, every
literal a bound parameter on a typed column, each atom TRUE or FALSE (never NULL), so "missing never
matches" needs no COALESCE; (name, value) indexes serve selective filters and facet counts.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from indexer.durable import fsync_path

SCHEMA_REVISION = "0006"
"""The Alembic revision these models describe: the head of `migrations/` (a test keeps them equal).
Readers compare a catalog against it with one SELECT, so serving never imports Alembic."""

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Item(Base):
    """An inventory image; `id` is its FAISS id."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # relative to the inventory root, '/'-separated
    label: Mapped[str] = mapped_column(String, index=True)  # parent folder name
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    added_generation: Mapped[int] = mapped_column(Integer)
    deleted_generation: Mapped[int | None] = mapped_column(Integer, index=True)  # None while live
    segment_id: Mapped[int | None] = mapped_column(Integer, index=True)  # the segment of its live vector
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), index=True)  # None: no catalog
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Segment(Base):
    """An immutable FAISS file (`IndexIDMap2`, ids = item ids) that generations are made of."""

    __tablename__ = "segments"
    __table_args__ = {"sqlite_autoincrement": True}  # ids (and so file names) are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file: Mapped[str] = mapped_column(String)  # relative to the index dir
    item_count: Mapped[int] = mapped_column(Integer)  # vectors in the file (live or masked)
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))  # l2 | cosine
    index_type: Mapped[str] = mapped_column(String(16))  # flat | ivf | hnsw
    byte_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of the file's bytes, computed while writing
    ids_sha256: Mapped[str] = mapped_column(String(64))  # over the sorted int64 ids in the file
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Generation(Base):
    """A published generation: a list of segments with deletion sets, and how it was built."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # current | kept | superseded | pruned | rolled_back
    faiss_file: Mapped[str] = mapped_column(String)  # schema 0001 only (one file per generation); else ""
    item_count: Mapped[int] = mapped_column(Integer)
    ids_sha256: Mapped[str] = mapped_column(String(64))  # schema 0001 only: sorted FAISS ids; else ""
    ids_checksum: Mapped[str | None] = mapped_column(String(16))  # segments.ids_checksum of the live ids
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    model_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    dim: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(16))  # l2 | cosine
    index_type: Mapped[str] = mapped_column(String(64))  # flat | ivf... | hnsw...
    inventory_root: Mapped[str] = mapped_column(String)
    parent_id: Mapped[int | None] = mapped_column(Integer)  # the generation this one was built from
    run_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eval_figures: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # written by `imgrec eval`
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {"labels": {label: live items}}
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class GenerationSegment(Base):
    """One segment of one generation, and the item ids masked in it (deleted or re-embedded since)."""

    __tablename__ = "generation_segments"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"), primary_key=True, index=True)
    deleted: Mapped[bytes] = mapped_column(LargeBinary)  # sorted little-endian int64 item ids
    n_deleted: Mapped[int] = mapped_column(Integer)


class GenerationChange(Base):
    """One item's change in one generation; `previous` holds what rollback restores."""

    __tablename__ = "generation_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    change: Mapped[str] = mapped_column(String(16))  # added | updated | deleted
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class LedgerEntry(Base):
    """The last outcome for one file of the inventory."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)  # relative; undecodable names escaped
    state: Mapped[str] = mapped_column(String(16), index=True)  # embedded | skipped | failed | deleted
    reason: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("items.id"))
    generation_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Folder(Base):
    """A folder of the inventory whose files were all settled by a run, as that run scanned them.

    When a later scan of the folder's own files gives the same `digest`, none of them changed:
    the plan counts them without reading their ledger rows.
    """

    __tablename__ = "folders"

    path: Mapped[str] = mapped_column(String, primary_key=True)  # relative, '/'-terminated; "" = root
    digest: Mapped[str] = mapped_column(String(32))  # plan.folder_digest of its files' names and stats
    live: Mapped[int] = mapped_column(Integer)  # its files that are live items
    skipped: Mapped[int] = mapped_column(Integer)  # its files skipped (and still so while unchanged)


class Job(Base):
    """A write accepted over HTTP (`search_api.writes`), applied by the indexer (`indexer.live`).

    state: queued -> indexed (`item_id`, `generation_id`) | failed (`reason`). An `add` job's
    image is already in the inventory at `path` (written and fsynced before the row commits).
    """

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}  # job ids (in URLs) are never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # add | delete (| patch, with the products tables)
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | indexed | failed
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # what the client sent, besides the image
    idempotency_key: Mapped[str | None] = mapped_column(String, unique=True)
    content_sha256: Mapped[str | None] = mapped_column(String(64))  # of the uploaded image
    path: Mapped[str | None] = mapped_column(String, index=True)  # add: the upload, inventory-relative
    item_id: Mapped[int | None] = mapped_column(Integer, index=True)  # delete: its target; add: the result
    generation_id: Mapped[int | None] = mapped_column(Integer)  # the generation that applied it
    reason: Mapped[str | None] = mapped_column(Text)  # why it failed
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class IndexState(Base):
    """A single row: which generation readers should open."""

    __tablename__ = "index_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    current_generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """A key of the search API (`search_api.keys`): only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(String(32), unique=True)  # the key's public part, for the lookup
    secret_sha256: Mapped[str] = mapped_column(String(64))  # of the key's secret part
    scope: Mapped[str] = mapped_column(String(16))  # read | write
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column()  # coarse (see search_api.auth)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


VALUE_COLUMNS = {"string": "string_value", "number": "number_value", "boolean": "bool_value"}


class Product(Base):
    """A catalog product: the unit a shop sells; its images are items with `product_id` = `id`."""

    __tablename__ = "products"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_key: Mapped[str] = mapped_column(String, unique=True)  # the catalog's product_id (SKU)
    title: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    price: Mapped[float | None] = mapped_column(Float, index=True)
    metadata_sha256: Mapped[str] = mapped_column(String(64))  # catalog_file.CatalogProduct.metadata_sha256
    added_generation: Mapped[int] = mapped_column(Integer)
    deleted_generation: Mapped[int | None] = mapped_column(Integer, index=True)  # None while in the catalog
    # `catalog`: the catalog file's (a sync deletes it when the file drops it); `api`: made by an
    # upload (POST /v1/items), kept by syncs until the file lists its product_id
    origin: Mapped[str] = mapped_column(String(8), server_default="catalog")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ProductAttribute(Base):
    """One attribute value of a product; exactly the value column of the attribute's type is set."""

    __tablename__ = "product_attributes"
    # one covering index per value type: a filter atom (`name = ? AND value op ?` -> product ids) and
    # the columns reader (all values of one name) are index-only range scans
    __table_args__ = (
        Index("ix_product_attributes_string", "name", "string_value", "product_id"),
        Index("ix_product_attributes_number", "name", "number_value", "product_id"),
        Index("ix_product_attributes_bool", "name", "bool_value", "product_id"),
    )

    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True)
    string_value: Mapped[str | None] = mapped_column(Text)
    number_value: Mapped[float | None] = mapped_column(Float)
    bool_value: Mapped[bool | None] = mapped_column(Boolean)


class AttributeType(Base):
    """The type inferred for an attribute column of the catalog."""

    __tablename__ = "attribute_types"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    type: Mapped[str] = mapped_column(String(8))  # string | number | boolean
    origin: Mapped[str] = mapped_column(String(8), server_default="catalog")  # catalog | api (as Product)


class ProductChange(Base):
    """One product's change in one generation; `previous` holds what rollback restores."""

    __tablename__ = "product_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    change: Mapped[str] = mapped_column(String(16))  # added | updated | deleted
    # the product's fields and attributes before the change ({"title": ..., "attributes": {...}})
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)


DATABASE_FILE = "catalog.sqlite"
WAL_SIZE_LIMIT = 32 * 1024 * 1024  # bytes the WAL file is cut back to when SQLite resets it
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024  # SQLite's auto-checkpoint: a WAL reaches about this before it


def database_url(index_dir: str | Path) -> str:
    return f"sqlite:///{Path(index_dir).resolve() / DATABASE_FILE}"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with WAL journaling and synchronous=FULL on every connection (`kwargs`: for
    `create_engine`, e.g. `poolclass=NullPool`)."""
    engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")  # a big merge's WAL does not stay
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Session]:
    """A session whose reads all see one committed state: one SQLite read transaction.

    pysqlite begins a transaction only before a write, so without the explicit BEGIN every SELECT
    would see the newest commit, and two SELECTs could see two different generations.
    """
    with Session(engine) as session:
        session.connection().exec_driver_sql("BEGIN")
        yield session  # closing the session rolls the read transaction back


def catalog_revision(url: str) -> str | None:
    """The Alembic revision a catalog is at (None: no file, or not made by Alembic), read without
    importing Alembic. Errors other than a missing version table (disk full...) are raised."""
    from sqlalchemy import pool
    from sqlalchemy.exc import OperationalError

    path = url.removeprefix("sqlite:///")
    if path == url or not Path(path).exists():
        return None
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"timeout": 30})
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except OperationalError as e:
        if "no such table" in str(e.orig):
            return None
        raise
    finally:
        engine.dispose()
    return rows[0][0] if len(rows) == 1 else None


def open_database(index_dir: str | Path, *, migrate: bool = True) -> Engine:
    """Open (and with `migrate`, create or upgrade) the catalog of an index dir."""
    url = database_url(index_dir)
    if migrate and catalog_revision(url) != SCHEMA_REVISION:  # Alembic is imported only to migrate
        from indexer.migrate import upgrade

        path = Path(index_dir).resolve() / DATABASE_FILE
        if not path.exists():
            _create_catalog(path)
        upgrade(url)
    return make_engine(url)


def _create_catalog(path: Path) -> None:
    """Create the schema under a temporary name, then rename it into place.

    SQLite runs pysqlite's DDL outside transactions, so a run killed while creating tables
    would leave a half-made catalog that no later migration can finish.
    """
    from indexer.migrate import upgrade

    for stale in path.parent.glob(f"{DATABASE_FILE}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{DATABASE_FILE}.tmp-{os.getpid()}")
    upgrade(f"sqlite:///{tmp}")
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
