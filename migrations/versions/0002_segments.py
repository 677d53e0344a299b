"""segments: a generation is a list of immutable segment files with deletion sets

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

Adds `segments`, `generation_segments`, `folders`, `items.segment_id`, `generations.summary` and
`generations.ids_checksum`. An index written at 0001 (one `generations/NNNNNN.faiss` per
generation) upgrades in place: each current or kept generation becomes one segment that points at
its existing file, with an empty deletion set; live items get that segment's id; the current
generation gets its label counts and ids checksum. Files are only read (hashed), never moved.

The whole upgrade runs in one SQLite transaction (`indexer.migrate.upgrade`): a run killed half-way
leaves the catalog at 0001, and the next run upgrades it again.
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file", sa.String(), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("index_type", sa.String(length=16), nullable=False),
        sa.Column("byte_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("ids_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "generation_segments",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("deleted", sa.LargeBinary(), nullable=False),
        sa.Column("n_deleted", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name=op.f("fk_generation_segments_generation_id_generations"),
        ),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_generation_segments_segment_id_segments")
        ),
        sa.PrimaryKeyConstraint("generation_id", "segment_id", name=op.f("pk_generation_segments")),
    )
    op.create_index(
        op.f("ix_generation_segments_segment_id"), "generation_segments", ["segment_id"], unique=False
    )
    op.create_table(
        "folders",
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("digest", sa.String(length=32), nullable=False),
        sa.Column("live", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("path", name=op.f("pk_folders")),
    )
    op.add_column("items", sa.Column("segment_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_items_segment_id"), "items", ["segment_id"], unique=False)
    op.add_column("generations", sa.Column("ids_checksum", sa.String(length=16), nullable=True))
    op.add_column("generations", sa.Column("summary", sa.JSON(), nullable=True))
    _segments_from_generation_files(op.get_bind())


def _segments_from_generation_files(conn: sa.Connection) -> None:
    """One segment per current or kept generation, pointing at its 0001 file (read, never moved)."""
    index_dir = Path(conn.engine.url.database).parent
    gens = conn.execute(
        sa.text(
            "SELECT id, status, faiss_file, item_count, dim, metric, index_type, ids_sha256, created_at "
            "FROM generations WHERE status IN ('current', 'kept') ORDER BY id"
        )
    ).all()
    for g in gens:
        path = index_dir / g.faiss_file
        if not path.is_file():
            if g.status == "kept":  # its file was lost: no longer a rollback target
                conn.execute(sa.text("UPDATE generations SET status = 'pruned' WHERE id = :id"), {"id": g.id})
                continue
            size, sha = -1, ""  # the current one stays; readers report the missing file
        else:
            size, sha = path.stat().st_size, _file_sha256(path)
        seg_id = conn.execute(
            sa.text(
                "INSERT INTO segments (file, item_count, dim, metric, index_type, byte_size, sha256, "
                "ids_sha256, created_at) VALUES (:file, :n, :dim, :metric, :type, :size, :sha, :ids, :at)"
            ),
            {
                "file": g.faiss_file,
                "n": g.item_count,
                "dim": g.dim,
                "metric": g.metric,
                "type": g.index_type,
                "size": size,
                "sha": sha,
                "ids": g.ids_sha256,
                "at": g.created_at,
            },  # fmt: skip
        ).lastrowid
        conn.execute(
            sa.text(
                "INSERT INTO generation_segments (generation_id, segment_id, deleted, n_deleted) "
                "VALUES (:g, :s, :empty, 0)"
            ),
            {"g": g.id, "s": seg_id, "empty": b""},
        )
        if g.status == "current":
            _describe_current(conn, g.id, seg_id)


def _describe_current(conn: sa.Connection, gen_id: int, seg_id: int) -> None:
    """Live items point at the current generation's segment; its label counts and ids checksum."""
    conn.execute(sa.text("UPDATE items SET segment_id = :s WHERE deleted_generation IS NULL"), {"s": seg_id})
    labels = conn.execute(
        sa.text("SELECT label, count(*) FROM items WHERE deleted_generation IS NULL GROUP BY label")
    ).all()
    joined = conn.execute(
        sa.text("SELECT group_concat(id) FROM items WHERE deleted_generation IS NULL")
    ).scalar()
    ids = np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.zeros(0, np.int64)
    conn.execute(
        sa.text("UPDATE generations SET summary = :summary, ids_checksum = :checksum WHERE id = :id"),
        {
            "summary": json.dumps({"labels": {label: n for label, n in labels}}),
            "checksum": _ids_checksum(ids),
            "id": gen_id,
        },
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _ids_checksum(ids: np.ndarray) -> str:
    """A frozen copy of `indexer.segments.ids_checksum` (migrations do not follow later code)."""
    z = np.asarray(ids, np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return f"{int(z.sum(dtype=np.uint64)) if len(z) else 0:016x}"


def downgrade() -> None:
    """Back to one file per generation: only right while every generation has a single segment."""
    op.drop_column("generations", "summary")
    op.drop_column("generations", "ids_checksum")
    op.drop_index(op.f("ix_items_segment_id"), table_name="items")
    op.drop_column("items", "segment_id")
    op.drop_table("folders")
    op.drop_index(op.f("ix_generation_segments_segment_id"), table_name="generation_segments")
    op.drop_table("generation_segments")
    op.drop_table("segments")
