"""product origin: products and attribute types made over the API (`api`) or by a catalog file (`catalog`)

Revision ID: 0006
Revises: 0005

`POST /v1/items` with product fields creates or updates products; a `--catalog` sync deletes the
products its file does not list, and replaces the attribute types with the file's. The `origin`
column tells them apart: a catalog sync leaves `api` products and attribute types alone (unless the
file lists that product id or attribute name: the file then owns it). Existing rows are all the
catalog file's (`server_default 'catalog'`). SQLite's own ADD COLUMN (no table copy), inside the one
upgrade transaction (`indexer.migrate.upgrade`): a kill leaves the catalog at 0005.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("products", "attribute_types"):
        op.add_column(
            table, sa.Column("origin", sa.String(length=8), nullable=False, server_default="catalog")
        )


def downgrade() -> None:
    for table in ("products", "attribute_types"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("origin")
