"""Apply the Alembic migrations in `migrations/` to a catalog, from code, in one transaction.

pysqlite begins transactions only before DML, so by default DDL runs outside any transaction and
a run killed half-way through a migration would leave a half-migrated catalog. Here the driver's
own transaction handling is switched off and the upgrade runs inside one explicit
`BEGIN IMMEDIATE ... COMMIT` (SQLite DDL is transactional): a kill leaves the previous schema.
This is SQLAlchemy's documented recipe for pysqlite ("Serializable isolation / Savepoints /
Transactional DDL").
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, pool
from sqlalchemy.engine import Engine

import migrations


def alembic_config(url: str) -> Config:
    """An Alembic config for `url` whose scripts are the installed `migrations` package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Create or upgrade the schema (a no-op when already at `revision`), all or nothing."""
    if revision == "head" and current_revision(url) == head_revision():
        return
    _run(url, command.upgrade, revision)


def downgrade(url: str, revision: str = "base") -> None:
    _run(url, command.downgrade, revision)


def _run(url: str, step, revision: str) -> None:  # noqa: ANN001 - command.upgrade or command.downgrade
    cfg = alembic_config(url)
    engine = transactional_engine(url)
    try:
        with engine.connect() as connection:
            cfg.attributes["connection"] = connection  # env.py runs everything in its one transaction
            step(cfg, revision)
            connection.commit()
    finally:
        engine.dispose()


def transactional_engine(url: str) -> Engine:
    """An engine whose transactions are real SQLite transactions, DDL included."""
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"timeout": 30})
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
