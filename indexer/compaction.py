"""Compaction: merging segments into one, as a new generation, by a size-tiered policy.

    compact(index_dir, engine, MergePolicy())             # what the indexer runs after publishing
    compact(index_dir, engine, MergePolicy(), everything=True)   # `imgrec compact --all`

Size tiers (as in Lucene's and Cassandra's size-tiered merging): a segment of n live items is in
tier floor(log_factor(max(n, floor) / floor)). When a tier holds `factor` segments they are merged
into one (so each vector is rewritten about log_factor(N / floor) times over the index's life), and
a segment whose masked share reaches `deleted_share` is rewritten without its masked vectors.
Merged segments smaller than `ann_min_items` are flat; larger ones get the index's configured
type, trained on the merged vectors (ivf) or built from them (hnsw).

A merge reads its inputs (memory-mapped when flat), writes one new segment file (checked, like
every write), then commits a generation that lists it instead of its inputs, with the same items;
the generation it replaces is `superseded` (identical content: never a rollback target). Disk
needed: the output's size, at most the inputs' size; the inputs are deleted by the next prune.
"""

from __future__ import annotations

import errno
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from indexer import faiss_index
from indexer.bulk import chunk_size, chunks
from indexer.db import Generation, GenerationSegment, Item, Segment
from indexer.generations import current_generation, make_current
from indexer.segment_search import OpenSegment, member
from indexer.segments import (
    SegmentInfo,
    StorageWriteError,
    encode_ids,
    segment_file,
    write_checked,
)
from indexer.store import generation_segments

logger = logging.getLogger(__name__)

MERGE_CHUNK = 65_536  # vectors gathered and added per step while building a merged segment


@dataclass(frozen=True)
class MergePolicy:
    factor: int = 10  # segments per tier before they are merged
    floor: int = 1_000  # live items below which every segment is in tier 0
    deleted_share: float = 0.3  # a segment with this share masked is rewritten
    ann_min_items: int = 10_000  # merged segments from this size get the index's configured type

    def tier(self, live: int) -> int:
        return int(math.floor(math.log(max(live, self.floor) / self.floor, self.factor) + 1e-9))

    def pick(self, parts: list[tuple[SegmentInfo, int]]) -> list[int]:
        """Ids of the segments to merge next (empty: nothing to do). `parts`: (segment, masked count)."""
        tiers: dict[int, list[int]] = {}
        for info, n_deleted in parts:
            tiers.setdefault(self.tier(info.item_count - n_deleted), []).append(info.id)
        for t in sorted(tiers):
            if len(tiers[t]) >= self.factor:
                return tiers[t]
        for info, n_deleted in parts:
            if info.item_count and n_deleted / info.item_count >= self.deleted_share:
                return [info.id]
        return []


def compact(
    index_dir: str | Path,
    engine: Engine,
    policy: MergePolicy,
    *,
    everything: bool = False,
    summary=None,  # noqa: ANN001 - an indexer.job.JobSummary to count merges in
    max_merges: int = 100,
) -> list[int]:
    """Merge segments of the current generation while the policy asks for it (or, with
    `everything`, all segments into one); returns the generations published.

    Call with the writer lock held.

    :raise StorageWriteError: a merged segment could not be written (the current generation stays).
    """
    index_dir = Path(index_dir)
    published: list[int] = []
    for _ in range(max_merges):
        with Session(engine) as session:
            cur = current_generation(session)
            if cur is None:
                break
            listed = generation_segments(session, cur.id)
        if everything:
            chosen = (
                [info.id for info, _ in listed] if len(listed) > 1 or any(len(d) for _, d in listed) else []
            )
        else:
            chosen = policy.pick([(info, len(d)) for info, d in listed])
        if not chosen:
            break
        gen_id = merge(index_dir, engine, cur.id, [(i, d) for i, d in listed if i.id in chosen], policy)
        published.append(gen_id)
        if summary is not None:
            summary.published.append(gen_id)
            summary.merged += 1
        if everything:
            break
    return published


def merge(
    index_dir: Path,
    engine: Engine,
    base_id: int,
    inputs: list[tuple[SegmentInfo, np.ndarray]],
    policy: MergePolicy,
) -> int:
    """Publish a generation equal to `base_id` with `inputs` merged into one new segment."""
    path: Path | None = None
    try:
        with Session(engine) as session, session.begin():
            base = session.get(Generation, base_id)
            if current_generation(session).id != base_id:
                raise RuntimeError(f"generation {base_id} is no longer current; merge abandoned")
            seg = Segment(
                file="", item_count=0, dim=base.dim, metric=base.metric, index_type="flat",
                byte_size=0, sha256="", ids_sha256="",
            )  # fmt: skip
            session.add(seg)
            session.flush()
            seg.file = segment_file(seg.id)
            path = index_dir / seg.file
            path.parent.mkdir(parents=True, exist_ok=True)
            index, ids = merged_index(index_dir, inputs, base.metric, base.index_type, policy.ann_min_items)
            done = write_checked(index, path)
            seg.item_count, seg.index_type = len(ids), _type_of(index)
            seg.byte_size, seg.sha256, seg.ids_sha256 = (
                done.byte_size,
                done.sha256,
                faiss_index.ids_sha256(ids),
            )
            del index
            gen = _copy_generation(session, base, [i.id for i, _ in inputs], seg.id)
            for chunk in chunks([i.id for i, _ in inputs], chunk_size(session)):
                session.execute(
                    update(Item)
                    .where(Item.segment_id.in_(chunk), Item.deleted_generation.is_(None))
                    .values(segment_id=seg.id)
                    .execution_options(synchronize_session=False)
                )
            make_current(session, gen, supersede=True)
            gen_id, out_file = gen.id, seg.file
    except BaseException as e:
        if path is not None:
            path.unlink(missing_ok=True)
        if isinstance(e, OperationalError) and "full" in str(e.orig).lower():
            raise StorageWriteError(errno.ENOSPC, "disk full while writing the catalog") from e
        raise
    logger.info(
        "merged %d segments (%s) into %s: generation %d",
        len(inputs), ", ".join(i.file for i, _ in inputs), out_file, gen_id,
    )  # fmt: skip
    return gen_id


def _copy_generation(session: Session, base: Generation, merged: list[int], new_segment: int) -> Generation:
    """A generation with `base`'s items and record, listing `new_segment` instead of `merged`."""
    gen = Generation(
        status="building", faiss_file="", item_count=base.item_count, ids_sha256="",
        ids_checksum=base.ids_checksum, model_fingerprint=base.model_fingerprint,
        model_config=base.model_config, dim=base.dim, metric=base.metric, index_type=base.index_type,
        inventory_root=base.inventory_root, parent_id=base.id, summary=base.summary,
        run_summary={**(base.run_summary or {}), "merged_segments": merged, "merged_into": new_segment},
    )  # fmt: skip
    session.add(gen)
    session.flush()
    rows = [
        dict(generation_id=gen.id, segment_id=info.id, deleted=encode_ids(d), n_deleted=len(d))
        for info, d in generation_segments(session, base.id)
        if info.id not in merged
    ]
    rows.append(dict(generation_id=gen.id, segment_id=new_segment, deleted=b"", n_deleted=0))
    session.execute(insert(GenerationSegment), rows)
    return gen


def merged_index(
    index_dir: Path,
    inputs: list[tuple[SegmentInfo, np.ndarray]],
    metric: str,
    index_type: str,
    ann_min_items: int,
):  # noqa: ANN201 - (faiss.Index, sorted ids)
    """One segment index holding the live vectors of `inputs`, in id order; and its ids.

    Vectors are gathered and added in chunks, so memory holds the output index plus one chunk
    (and, for ivf, a training sample).
    """
    segs = [OpenSegment.open(index_dir, info, mmap=True) for info, _ in inputs]
    src_parts, row_parts, id_parts = [], [], []
    for n, (seg, (_, deleted)) in enumerate(zip(segs, inputs, strict=True)):
        live = ~member(seg.ids, deleted) if len(deleted) else np.ones(seg.ntotal, bool)
        rows = np.flatnonzero(live)
        src_parts.append(np.full(len(rows), n, np.int32))
        row_parts.append(rows)
        id_parts.append(seg.ids[rows])
    src, rows, ids = (np.concatenate(a) for a in (src_parts, row_parts, id_parts))
    order = np.argsort(ids, kind="stable")
    src, rows, ids = src[order], rows[order], ids[order]
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise RuntimeError("the segments to merge hold the same live id twice; the catalog is inconsistent")

    def gather(sel: np.ndarray) -> np.ndarray:
        out = np.empty((len(sel), segs[0].info.dim), np.float32)
        for n, seg in enumerate(segs):
            mine = src[sel] == n
            if mine.any():
                out[mine] = seg.vectors_at(rows[sel][mine])
        return out

    kind = index_type if len(ids) >= ann_min_items else "flat"
    xt = None
    if kind == "ivf":
        from indexer.ann import TRAIN_POINTS_PER_LIST, nlist_for

        sample = min(len(ids), TRAIN_POINTS_PER_LIST * nlist_for(len(ids)))
        pick = np.sort(np.random.default_rng(1234).choice(len(ids), sample, replace=False))
        xt = gather(pick)
    index = faiss_index.build_index(segs[0].info.dim, metric, kind, xt=xt, n_train=len(ids))
    for start in range(0, len(ids), MERGE_CHUNK):
        sel = np.arange(start, min(start + MERGE_CHUNK, len(ids)))
        faiss_index.add(index, ids[sel], gather(sel), metric)
    return index, ids


def _type_of(index) -> str:  # noqa: ANN001
    from indexer.ann import index_type_of

    return index_type_of(index)
