"""products: a shop's catalog (issue 12)

Products with typed attributes (entity-attribute-value), the attribute types, the product changes of
each generation (for rollback), and `items.product_id`.

The whole upgrade runs in one SQLite transaction (`indexer.migrate.upgrade`): a run killed half-way
leaves the catalog at 0002, and the next run upgrades it again. `items.product_id` is added with
SQLite's own ADD COLUMN (instant at 1M items; batch mode would copy the table).

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_key", sa.String(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("metadata_sha256", sa.String(length=64), nullable=False),
        sa.Column("added_generation", sa.Integer(), nullable=False),
        sa.Column("deleted_generation", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        sa.UniqueConstraint("product_key", name=op.f("uq_products_product_key")),
    )
    op.create_index(op.f("ix_products_price"), "products", ["price"], unique=False)
    op.create_index(op.f("ix_products_deleted_generation"), "products", ["deleted_generation"], unique=False)
    op.create_table(
        "product_attributes",
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("string_value", sa.Text(), nullable=True),
        sa.Column("number_value", sa.Float(), nullable=True),
        sa.Column("bool_value", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_product_attributes_product_id_products")
        ),
        sa.PrimaryKeyConstraint("product_id", "name", name=op.f("pk_product_attributes")),
    )
    for kind in ("string", "number", "bool"):  # covering: filter atoms and column reads are index-only
        op.create_index(
            f"ix_product_attributes_{kind}",
            "product_attributes",
            ["name", f"{kind}_value", "product_id"],
            unique=False,
        )
    op.create_table(
        "attribute_types",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("type", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_attribute_types")),
    )
    op.create_table(
        "product_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("change", sa.String(length=16), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name=op.f("fk_product_changes_generation_id_generations")
        ),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], name=op.f("fk_product_changes_product_id_products")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_changes")),
    )
    op.create_index(
        op.f("ix_product_changes_generation_id"), "product_changes", ["generation_id"], unique=False
    )
    if op.get_bind().dialect.name == "sqlite":
        # SQLite's own ADD COLUMN: instant at any size (batch mode would copy the items table), and
        # SQLite accepts an inline REFERENCES on an added column whose default is NULL
        op.execute("ALTER TABLE items ADD COLUMN product_id INTEGER REFERENCES products (id)")
    else:
        op.add_column(
            "items",
            sa.Column(
                "product_id",
                sa.Integer(),
                sa.ForeignKey("products.id", name=op.f("fk_items_product_id_products")),
                nullable=True,
            ),
        )
    op.create_index(op.f("ix_items_product_id"), "items", ["product_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_items_product_id"), table_name="items")
    with op.batch_alter_table("items", schema=None) as batch_op:
        batch_op.drop_column("product_id")
    op.drop_index(op.f("ix_product_changes_generation_id"), table_name="product_changes")
    op.drop_table("product_changes")
    op.drop_table("attribute_types")
    for kind in ("string", "number", "bool"):
        op.drop_index(f"ix_product_attributes_{kind}", table_name="product_attributes")
    op.drop_table("product_attributes")
    op.drop_index(op.f("ix_products_deleted_generation"), table_name="products")
    op.drop_index(op.f("ix_products_price"), table_name="products")
    op.drop_table("products")
