"""Alembic environment: the generic template, with imgrec's metadata and SQLite batch mode."""

import os

from alembic import context
from sqlalchemy import engine_from_config, pool

from indexer.db import Base

config = context.config
target_metadata = Base.metadata

url = config.get_main_option("sqlalchemy.url") or os.environ.get("IMGREC_DATABASE_URL")
if not url:
    raise RuntimeError("set IMGREC_DATABASE_URL (e.g. sqlite:////path/to/index/catalog.sqlite)")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
