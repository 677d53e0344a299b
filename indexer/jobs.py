"""The write queue: jobs accepted over HTTP, applied by the indexer, in the catalog's `jobs` table.

    job, new = enqueue_add(engine, path=rel, sha256=sha, payload={...}, key=idempotency_key)
    job = enqueue_delete(engine, item_id, key=None)          # None: no such live item
    job, new = enqueue_patch(engine, "SKU-1", {"price": 9.5}, key=None)   # changes: products.check_patch
    get_job(engine, job_id) -> JobRecord | None
    queued_jobs(engine) -> list[JobRecord]                   # the indexer's next batch
    resolve_jobs(engine, jobs) -> {job id: state}             # after the batch's publish

Lifecycle: `queued` -> `indexed` (item id, generation) | `failed` (reason). The queue lives in
catalog.sqlite, so a job and the item it made are read from one database; a job is resolved from
the ledger and the items after the publish (`resolve_jobs`), so a kill between the publish and the
resolution leaves it queued and the next batch resolves it the same way: nothing is lost and
nothing is applied twice. Kinds: `add` (the image is already in the inventory at `path`, written
and fsynced before the job row commits), `delete` (`item_id`) and `patch` (a product's metadata,
payload {"product_id": SKU, "changes": {...}}, nothing re-embedded): a patch is settled inside the
publish transaction that applies it (`settle_in`), or failed before it when it no longer applies.

An add job with a `product_id` is settled inside the publish that adds its item and applies its
product fields (`indexer.uploads`); `resolve_jobs` then leaves it as it is.

Uploads go to `_uploads/<sha256[:2]>/<label>/<name><ext>` under the inventory: content-addressed
(`name` = the image's sha256, plus a digest of the product id when one is given), never the
client's file name; the label folder makes the item's label as for any inventory folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from indexer.db import Item, Job, LedgerEntry, utcnow
from indexer.durable import fsync_path

UPLOADS = "_uploads"  # the managed folder of the inventory that API uploads go to
DEFAULT_LABEL = "uploads"
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,63}")
DELETED_OVER_API = "deleted over the API"  # the ledger reason that keeps a deleted file out
BATCH_LIMIT = 1000  # jobs applied per publish


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    state: str
    payload: dict[str, Any]
    idempotency_key: str | None
    content_sha256: str | None
    path: str | None
    item_id: int | None
    generation_id: int | None
    reason: str | None


def _record(job: Job) -> JobRecord:
    return JobRecord(
        job.id, job.kind, job.state, dict(job.payload or {}), job.idempotency_key, job.content_sha256,
        job.path, job.item_id, job.generation_id, job.reason,
    )  # fmt: skip


class IdempotencyConflict(ValueError):
    """The Idempotency-Key was used before for another request."""


def upload_path(sha256: str, ext: str, label: str = DEFAULT_LABEL, product_id: str | None = None) -> str:
    """The inventory-relative path of an upload (same bytes, label and product -> same path)."""
    if not LABEL_PATTERN.fullmatch(label) or label.endswith((".", " ")):
        raise ValueError(f"label {label!r} is not 1-64 letters, digits, '.', '_', '-' or spaces")
    name = sha256
    if product_id is not None:
        name += "-" + hashlib.blake2b(product_id.encode(), digest_size=8).hexdigest()
    return f"{UPLOADS}/{sha256[:2]}/{label}/{name}{ext}"


def save_upload(inventory: str | Path, rel_path: str, data: bytes) -> None:
    """Write `data` at `inventory/rel_path` durably: temp name, fsync, rename, fsync the folders
    (every folder created on the way too), so that it is on disk before its job row commits."""
    root = Path(inventory)
    target = root / rel_path
    created = []
    folder = target.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for d in [target.parent, *[c.parent for c in created]]:
        fsync_path(d)


def get_job(engine: Engine, job_id: int) -> JobRecord | None:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        return _record(job) if job is not None else None


def _by_key(session: Session, key: str | None) -> Job | None:
    if key is None:
        return None
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def _check_same(job: Job, kind: str, **expected: object) -> JobRecord:
    if job.kind != kind or any(getattr(job, k) != v for k, v in expected.items()):
        raise IdempotencyConflict(f"Idempotency-Key was used for another request (job {job.id})")
    return _record(job)


def product_part(payload: dict[str, Any]) -> dict[str, Any]:
    """An add job's product fields (`indexer.uploads.product_fields`)."""
    return {k: payload[k] for k in ("product_id", "title", "url", "price", "attributes") if k in payload}


def existing_add(
    engine: Engine, path: str, key: str | None, sha256: str, payload: dict[str, Any] | None = None
) -> JobRecord | None:
    """The job that already answers this upload: same Idempotency-Key, or the same path (same
    bytes, label and product) still queued or indexed as a live item, and (given `payload`) with
    the same product fields: other fields make a new job (same item, the product updated)."""
    with Session(engine) as session:
        if (job := _by_key(session, key)) is not None:
            return _check_same(job, "add", content_sha256=sha256)
        rows = session.scalars(
            select(Job)
            .where(Job.path == path, Job.kind == "add", Job.state != "failed")
            .order_by(Job.id.desc())
        )
        for job in rows:
            if job.state == "queued" or _live(session, job.item_id):
                if payload is not None and product_part(job.payload) != product_part(payload):
                    return None
                return _record(job)
        return None


def _live(session: Session, item_id: int | None) -> bool:
    if item_id is None:
        return False
    return session.scalar(select(Item.deleted_generation.is_(None)).where(Item.id == item_id)) or False


def enqueue_add(
    engine: Engine, *, path: str, sha256: str, payload: dict[str, Any], key: str | None
) -> tuple[JobRecord, bool]:
    """Queue an upload already saved at `path`; (job, True) or, for a repeat, (its job, False)."""
    if (job := existing_add(engine, path, key, sha256, payload)) is not None:
        return job, False
    return _insert(engine, dict(kind="add", path=path, content_sha256=sha256, payload=payload), key)


def enqueue_delete(engine: Engine, item_id: int, key: str | None) -> tuple[JobRecord, bool] | None:
    """Queue the deletion of a live item; None when there is no such live item."""
    with Session(engine) as session:
        if (job := _by_key(session, key)) is not None:
            return _check_same(job, "delete", item_id=item_id), False
        queued = session.scalar(
            select(Job).where(Job.kind == "delete", Job.item_id == item_id, Job.state == "queued")
        )
        if queued is not None:
            return _record(queued), False
        if not _live(session, item_id):
            return None
    return _insert(engine, dict(kind="delete", item_id=item_id, payload={}), key)


def enqueue_patch(
    engine: Engine, product_key: str, changes: dict[str, Any], key: str | None
) -> tuple[JobRecord, bool]:
    """Queue a product metadata change (`changes` checked by `products.check_patch`)."""
    payload = {"product_id": product_key, "changes": changes}
    with Session(engine) as session:
        if (job := _by_key(session, key)) is not None:
            return _check_same(job, "patch", payload=payload), False
    return _insert(engine, dict(kind="patch", payload=payload), key)


def settle_in(session: Session, job_id: int, **values: Any) -> None:
    """Settle one job in the caller's transaction (a patch: with the publish that applies it)."""
    session.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow(), **values))


def _insert(engine: Engine, values: dict, key: str | None) -> tuple[JobRecord, bool]:
    now = utcnow()
    try:
        with Session(engine) as session, session.begin():
            job_id = session.execute(
                insert(Job).values(
                    state="queued", idempotency_key=key, created_at=now, updated_at=now, **values
                )
            ).inserted_primary_key[0]
    except IntegrityError:  # the same key, posted concurrently: answer the job that won
        with Session(engine) as session:
            job = _by_key(session, key)
            if job is None:
                raise
            return _record(job), False
    return get_job(engine, job_id), True


def queued_jobs(engine: Engine, limit: int = BATCH_LIMIT) -> list[JobRecord]:
    with Session(engine) as session:
        rows = session.scalars(select(Job).where(Job.state == "queued").order_by(Job.id).limit(limit))
        return [_record(j) for j in rows]


def resolve_jobs(engine: Engine, jobs: list[JobRecord], inventory: str | Path) -> dict[int, str]:
    """Settle each job from what the catalog now says (call after the batch's publish):

    add: the ledger row of its path is `embedded` -> indexed (its item); skipped/failed -> failed
    (the indexer's reason); the file gone -> failed. delete: the item is deleted -> indexed; it no
    longer exists -> failed. patch: already settled (reported). Anything else stays queued."""
    states: dict[int, str] = {}
    now = utcnow()
    with Session(engine) as session, session.begin():
        for job in jobs:
            values: dict[str, Any] | None = None
            if (
                job.kind == "add"
                and (state := session.scalar(select(Job.state).where(Job.id == job.id))) != "queued"
            ):
                states[job.id] = state  # settled with its publish (product fields), or failed before it
            elif job.kind == "add":
                row = session.scalar(select(LedgerEntry).where(LedgerEntry.path == job.path))
                if row is not None and row.state == "embedded" and row.item_id is not None:
                    gen = session.scalar(select(Item.added_generation).where(Item.id == row.item_id))
                    values = dict(
                        state="indexed", item_id=row.item_id, generation_id=row.generation_id or gen
                    )
                elif row is not None and row.state in ("skipped", "failed"):
                    values = dict(state="failed", reason=row.reason or row.state)
                elif not (Path(inventory) / job.path).exists():
                    values = dict(state="failed", reason="the uploaded file is no longer in the inventory")
            elif job.kind == "delete":
                item = session.get(Item, job.item_id) if job.item_id is not None else None
                if item is None:
                    values = dict(state="failed", reason=f"no item {job.item_id}")
                elif item.deleted_generation is not None:
                    values = dict(state="indexed", generation_id=item.deleted_generation)
            elif job.kind == "patch":  # settled with its publish, or failed before it
                state = session.scalar(select(Job.state).where(Job.id == job.id))
                if state != "queued":
                    states[job.id] = state
            else:
                values = dict(state="failed", reason=f"unknown job kind {job.kind!r}")
            if values is not None:
                session.execute(update(Job).where(Job.id == job.id).values(updated_at=now, **values))
                states[job.id] = values["state"]
    return states
