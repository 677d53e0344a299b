"""Test helpers that are not fixtures (the fixtures are in conftest.py; docs/development.md, "Tests").

- Paths and presets: SHARED_DATASETS, TINY_TRAIN, SMALL_BODY_LIMIT.
- `Catalog` (what the `catalog` fixture holds), `build_index`.
- Real HTTP: `Api` (a requests session on a live server), `free_port`.
- Models and inventories: `make_model_dir` (random weights, seeded: nothing trained), `write_image`,
  `make_inventory`, `mutate_inventory`.
- Index comparison: `index_contents`, `full_rebuild`, `assert_same_index`, `copy_index`.
- Child processes: `imgrec_command`, `forkserver`, `cli_child` (an indexer to kill), `reader_loop`.
- A seeded embedder (`seed_embedder`, `write_seed_file`, `seed_vector`): storage tests choose every vector.
- SQLite's parameter limit lowered (`limit_sql_variables`).
- Product catalogs: `products_database`, `ProductRow`, `ItemRow`, `clear`, `insert_catalog`.
- Live writes: `start_watcher`, `stop_watcher`, `writer`, `wait_for`, `job_when_done`, `jobs_in`, `add_images`.
- API keys (`Keys`), the web page (`CHROMIUM`, `DESKTOP`, `PHONE`, `wait_for_thumbnails`, `url_params`),
  a full disk (`fill`).
- Damage to an index at rest: `damage(index_dir, kind)` for each of `KINDS`.
- Hostile files: `many_scans_jpeg`, `padded_png`, `jpeg_bytes`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import errno
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
import sqlalchemy as sa
import torch
from PIL import Image
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from encoder.model_dir import save_model_dir
from encoder.models import EncoderConfig, build_model, code_dim
from encoder.preprocess import Preprocess
from encoder.train import DEMO_PRESET
from imgrec.synthetic import CLASSES, draw_item
from indexer import IndexOptions, open_snapshot, run_index
from indexer.db import (
    DATABASE_FILE,
    VALUE_COLUMNS,
    AttributeType,
    Item,
    Product,
    ProductAttribute,
    open_database,
)
from search_api.keys import create_key

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

# Fast enough for unit tests, good enough to separate the synthetic classes.
TINY_TRAIN = dataclasses.replace(DEMO_PRESET, image_size=32, epochs=4, patience=2)

SMALL_BODY_LIMIT = 2 * 1024 * 1024  # the session app's MAX_CONTENT_LENGTH: oversized bodies stay cheap


# --- the session's catalog -----------------------------------------------------------------------


@dataclass(frozen=True)
class Catalog:
    """A generated inventory, its held-back queries, a trained model and a published index."""

    inventory: Path
    queries: Path
    model: Path
    index: Path

    def query_paths(self) -> list[Path]:
        return sorted(self.queries.rglob("*.jpg"))

    def query_bytes(self, n: int = 0) -> bytes:
        return self.query_paths()[n].read_bytes()


def build_index(inventory: Path, model: Path, index: Path) -> int:
    """Index `inventory` into `index` with `model`; the generation published."""
    return run_index(inventory, model, index).generation_id


# --- real HTTP -----------------------------------------------------------------------------------


class Api(requests.Session):
    """A requests session whose paths are relative to a live server."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base_url + url if url.startswith("/") else url, *args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- models and inventories: nothing trained, images drawn ----------------------------------------

IMAGE_SIZE = 16  # model input side: tiny, so embedding costs little next to the work under test


def make_model_dir(path: Path, seed: int = 0, code_channels: int = 4, graph: bool = False) -> Path:
    """A random-weight conv-ae model dir (a different `seed` is a different model); its codes have
    4 * `code_channels` dimensions. With `graph`, its ONNX graph is exported as `imgrec train` does;
    without, it is a dir as written before graphs existed (torch runs it; exporting costs ~2 s)."""
    torch.manual_seed(seed)
    cfg = EncoderConfig(arch="conv-ae", image_size=IMAGE_SIZE, filters=(4, 4, code_channels))
    model = build_model(cfg).eval()
    config = {
        "kind": "autoencoder",
        "model": cfg.to_dict(),
        "preprocess": Preprocess(image_size=IMAGE_SIZE).to_dict(),
        "code_dim": code_dim(model, IMAGE_SIZE),
        "training": {"seed": seed},
    }
    if graph:
        from encoder.export import export_autoencoder

        config["graph"], config["graph_sha256"] = export_autoencoder(model, path, IMAGE_SIZE)
    save_model_dir(path, model.state_dict(), config)
    return path


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    """One small product-like picture (JPEG or PNG by the suffix of `path`)."""
    rng = np.random.default_rng(seed)
    shape, color = list(CLASSES.values())[seed % len(CLASSES)]
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_item(shape, color, rng, size).save(path)
    return path


def make_inventory(root: Path, n: int, start: int = 0) -> list[Path]:
    """`n` images in a few label folders, JPEG and PNG; file i is drawn from seed `start + i`."""
    paths = []
    for i in range(start, start + n):
        label = list(CLASSES)[i % len(CLASSES)]
        paths.append(write_image(root / label / f"item-{i:04d}.{'jpg' if i % 2 else 'png'}", seed=i))
    return paths


def mutate_inventory(root: Path, rng: np.random.Generator, next_seed: int, n: int = 10) -> int:
    """Delete, rewrite, rename and add about `n` files each; returns the next unused seed."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    picked = rng.permutation(len(files))
    doomed, changed, moved = picked[:n], picked[n : 2 * n], picked[2 * n : 3 * n]
    for i in doomed:
        files[i].unlink()
    for i in changed:
        write_image(files[i], seed=next_seed)
        next_seed += 1
    for i in moved:
        label = list(CLASSES)[int(rng.integers(len(CLASSES)))]
        target = root / label / f"moved-{next_seed:05d}{files[i].suffix}"
        target.parent.mkdir(exist_ok=True)
        files[i].rename(target)
        next_seed += 1
    make_inventory(root, n, start=next_seed)
    return next_seed + n


def index_contents(index_dir: Path) -> dict[str, np.ndarray]:
    """path -> stored vector of every item of the current generation (opened and fully verified)."""
    snap = open_snapshot(index_dir, mmap=False, verify="full")
    try:
        ids = snap.live_ids()
        items = snap.items(ids.tolist())
        assert len(items) == len(ids) == snap.generation.item_count
        vectors = snap.vectors(ids)
        return {items[int(i)].path: v for i, v in zip(ids, vectors, strict=True)}
    finally:
        snap.close()


def full_rebuild(inventory: Path, model_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """What a from-scratch index of `inventory` holds (built in a fresh folder)."""
    shutil.rmtree(out, ignore_errors=True)
    run_index(inventory, model_dir, out, IndexOptions(full=True))
    return index_contents(out)


def assert_same_index(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same items (by path) with the same vectors, within float tolerance."""
    only_got, only_want = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    assert not only_got and not only_want, f"only in index: {only_got[:5]}, only in rebuild: {only_want[:5]}"
    for path, v in want.items():
        np.testing.assert_allclose(got[path], v, rtol=1e-4, atol=1e-5, err_msg=path)


def copy_index(src: Path, dst: Path) -> None:
    """Copy an index folder no process has open (catalog with its WAL, FAISS files, models)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)


def imgrec_command() -> list[str]:
    """The `imgrec` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "imgrec"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from imgrec.cli import cli; cli()"]


# --- child processes ---------------------------------------------------------------------------


def forkserver() -> multiprocessing.context.BaseContext:
    """A multiprocessing context whose server has imported imgrec (torch, faiss, ...) once.

    Each child is forked from it, so it starts in milliseconds instead of paying the seconds of
    imports; it is still a separate process, killed for real with SIGKILL.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["imgrec.cli", "indexer", "tests.support"])
    return ctx


def cli_child(args: list[str], log: str, die_at: str | None = None) -> None:
    """Run `imgrec ARGS` in this (child) process, output to `log`.

    `die_at` ("module:function") makes the child SIGKILL itself when that function is called:
    a crash at an exact point, set up by the test and not by the indexer.
    """
    limit_sql_variables(LOW_SQL_VARIABLE_LIMIT)  # as in the parent: no statement with a parameter per file
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if die_at:
        import importlib

        module, name = die_at.split(":")
        setattr(importlib.import_module(module), name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    import threading

    from tqdm import tqdm

    from imgrec.cli import cli

    tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: a killed child would leak it
    cli.main(args=args, prog_name="imgrec")


def reader_loop(index_dir: str, stop_file: str, out_file: str) -> None:
    """Open the current generation over and over and query it, until `stop_file` appears.

    Every snapshot must open verified (count, ids, live items agree), and every hit must be an id of
    that snapshot's FAISS file with a catalog row. Writes what it saw to `out_file` (JSON).
    """
    limit_sql_variables(LOW_SQL_VARIABLE_LIMIT)
    rng = np.random.default_rng(0)
    seen: dict[int, int] = {}
    errors: list[str] = []
    queries = 0
    ready = Path(out_file + ".ready")
    while True:
        stop = os.path.exists(stop_file)  # one last pass after the stop file appears
        try:
            snap = open_snapshot(index_dir, mmap=True)
            try:
                ids = set(snap.live_ids().tolist())
                if len(ids) != snap.generation.item_count:
                    errors.append(f"generation {snap.generation.id}: {len(ids)} ids in FAISS")
                xq = rng.standard_normal((4, snap.generation.dim)).astype(np.float32)
                for hits in snap.search_vectors(xq, k=10):
                    if len(hits) != min(10, len(ids)):
                        errors.append(f"generation {snap.generation.id}: {len(hits)} hits")
                    for h in hits:
                        if h.id not in ids or not h.item.path:
                            errors.append(f"generation {snap.generation.id}: hit {h.id} not in it")
                seen[snap.generation.id] = seen.get(snap.generation.id, 0) + 1
                queries += 4
            finally:
                snap.close()
        except Exception as e:  # noqa: BLE001 - every error is recorded and fails the test
            errors.append(f"{type(e).__name__}: {e}")
        ready.touch()
        if stop:
            break
    Path(out_file).write_text(json.dumps({"seen": seen, "errors": errors[:20], "queries": queries}))


# --- a seeded embedder: files whose bytes name the vector they embed to ---------------------------


def write_seed_file(path: Path, seed: int) -> Path:
    """A file (with an image extension) whose content is its vector's seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"seed %d" % seed)
    return path


def seed_vector(seed: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def seed_embedder(files, encoder, *, batch_size=32, workers=2, limits=None):  # noqa: ANN001, ANN201
    """An `embedder` for `run_index` that reads each file's seed instead of decoding an image.

    Lets the storage tests choose every vector (seeded) while the job, SQLite and FAISS run for real.
    """
    import hashlib

    from indexer.ingest import Decoded, EmbeddedBatch

    files = list(files)
    for start in range(0, len(files), batch_size):
        ok = []
        for f in files[start : start + batch_size]:
            data = Path(f.abs_path).read_bytes()
            st = os.stat(f.abs_path)
            ok.append(
                Decoded(f, "ok", sha256=hashlib.sha256(data).hexdigest(), size=st.st_size,
                        mtime_ns=st.st_mtime_ns, width=1, height=1)
            )  # fmt: skip
        xb = np.stack(
            [seed_vector(int(Path(d.file.abs_path).read_bytes().split()[1]), encoder.dim) for d in ok]
        )
        yield EmbeddedBatch(ok, xb, [])


def limit_sql_variables(n: int = 50) -> None:
    """Every SQLite connection opened from now on in this process allows at most `n` bound parameters
    per statement (SQLite's own limit, lowered): a statement with one parameter per file fails."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def _low_limit(dbapi_conn, _record):  # noqa: ANN001
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, n)

    if not event.contains(Engine, "connect", _LOW_LIMIT_LISTENERS.get(n, _low_limit)):
        _LOW_LIMIT_LISTENERS[n] = _low_limit
        event.listen(Engine, "connect", _low_limit)


def unlimit_sql_variables() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    for fn in _LOW_LIMIT_LISTENERS.values():
        if event.contains(Engine, "connect", fn):
            event.remove(Engine, "connect", fn)
    _LOW_LIMIT_LISTENERS.clear()


_LOW_LIMIT_LISTENERS: dict = {}
LOW_SQL_VARIABLE_LIMIT = 50


# --- product catalogs: the real migrations (Alembic, to head) on a real SQLite file, rows in bulk ---

ITEMS = Item.__table__


def products_database(path: Path) -> Engine:
    """A catalog at the migrations' head (`path` names the catalog file; its folder is the index dir)."""
    assert path.name == "catalog.sqlite", path
    return open_database(path.parent)


@dataclass
class ProductRow:
    key: str
    title: str | None = None
    url: str | None = None
    price: float | None = None
    attributes: dict[str, str | float | bool] = field(default_factory=dict)


@dataclass
class ItemRow:
    id: int
    label: str
    product: str | None = None  # a ProductRow key
    deleted: bool = False


def clear(session: Session) -> None:
    for table in ("product_attributes", "attribute_types", "items", "products"):
        session.execute(sa.text(f"DELETE FROM {table}"))


def insert_catalog(
    session: Session, attribute_types: dict[str, str], products: list[ProductRow], items: list[ItemRow]
) -> dict[str, int]:
    """Insert the rows (bulk); returns products.id by key."""
    now = dt.datetime(2026, 1, 1)
    if attribute_types:
        session.execute(
            sa.insert(AttributeType), [{"name": n, "type": t} for n, t in attribute_types.items()]
        )
    ids: dict[str, int] = {}
    if products:
        session.execute(
            sa.insert(Product),
            [
                dict(
                    id=i,
                    product_key=p.key,
                    title=p.title,
                    url=p.url,
                    price=p.price,
                    metadata_sha256="0" * 64,
                    added_generation=1,
                    deleted_generation=None,
                    created_at=now,
                    updated_at=now,
                )  # fmt: skip
                for i, p in enumerate(products, 1)
            ],
        )
        ids = {p.key: i for i, p in enumerate(products, 1)}
    rows = [
        {
            "product_id": ids[p.key],
            "name": name,
            **{c: None for c in VALUE_COLUMNS.values()},
            VALUE_COLUMNS[attribute_types[name]]: value,
        }  # fmt: skip
        for p in products
        for name, value in p.attributes.items()
    ]
    if rows:
        session.execute(sa.insert(ProductAttribute), rows)
    if items:
        session.execute(
            sa.insert(ITEMS),
            [
                dict(
                    id=it.id,
                    path=f"{it.label}/{it.id}.jpg",
                    label=it.label,
                    sha256="0" * 64,
                    size=1,
                    mtime_ns=0,
                    width=1,
                    height=1,
                    added_generation=1,
                    deleted_generation=2 if it.deleted else None,
                    created_at=now,
                    updated_at=now,
                    product_id=ids[it.product] if it.product is not None else None,
                )  # fmt: skip
                for it in items
            ],
        )
    return ids


# --- live writes: a watching indexer, waits with a generous deadline (never a timing assertion) ---


DEADLINE = 120.0  # seconds a wait may take on a loaded 2-core machine before the test fails


def wait_for(what: str, probe: Callable[[], object], deadline: float = DEADLINE) -> object:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def jobs_in(index: Path) -> list[tuple]:
    with sqlite3.connect(index / DATABASE_FILE) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is None:
            return []
        return db.execute("SELECT id, kind, state, path, item_id FROM jobs ORDER BY id").fetchall()


def start_watcher(cat: Catalog, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        *imgrec_command(), "index", "--inventory", str(cat.inventory), "--model", str(cat.model),
        "--index", str(cat.index), "--watch", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def stop_watcher(proc: subprocess.Popen, log: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the watcher did not stop on SIGTERM:\n{log.read_text()[-3000:]}") from None


def writer(api: Api, index: Path) -> None:
    """Send a new write key with every request of `api` (writes need one: docs/api.md)."""
    api.headers["Authorization"] = f"Bearer {create_key(index, 'writer', 'write')}"


@contextlib.contextmanager
def watched_copy(
    catalog: Catalog, root: Path, make_app: Callable, serve: Callable, *, with_shop: bool = False
) -> Iterator[tuple[Catalog, Api]]:
    """A private copy of the catalog's inventory, indexed (with a products file when `with_shop`),
    served by a real server with a write key, and watched by `imgrec index --watch` (the same
    `--catalog`); the watcher must stop cleanly on SIGTERM."""
    shutil.copytree(catalog.inventory, root / "inventory")
    extra: tuple[str, ...] = ()
    if with_shop:
        images = sorted(
            p.relative_to(root / "inventory").as_posix() for p in (root / "inventory").rglob("*.jpg")
        )
        shop = write_shop(root / "products.csv", images)
        run_index(root / "inventory", catalog.model, root / "index", IndexOptions(catalog=shop))
        extra = ("--catalog", str(shop))
    else:
        build_index(root / "inventory", catalog.model, root / "index")
    cat = dataclasses.replace(catalog, inventory=root / "inventory", index=root / "index")
    log = root / "watcher.log"
    proc = start_watcher(cat, log, *extra)
    app = make_app(INDEX=str(cat.index), RELOAD_INTERVAL=0.2)
    try:
        with Api(serve(app)) as api:
            writer(api, cat.index)
            yield cat, api
    finally:
        code = stop_watcher(proc, log)
    assert code == 0, log.read_text()[-3000:]


def job_when_done(api: Api, url: str) -> dict:
    def done() -> dict | None:
        job = api.get(url).json()["job"]
        return job if job["state"] != "queued" else None

    return wait_for(f"job {url}", done)


def add_images(catalog, inventory) -> int:
    """Copy the held-back queries into the inventory (new items for the next generation)."""
    paths = catalog.query_paths()
    for p in paths:
        shutil.copy(p, inventory / p.parent.name / f"new-{p.name}")
    return len(paths)


# --- API keys ---


@dataclass(frozen=True)
class Keys:
    """A copy of the session index with a read, a write and a revoked key (the `keys` fixture)."""

    index: Path
    read: str
    write: str
    revoked: str


# --- the web page (Playwright) ---


CHROMIUM = Path("/usr/bin/chromium")
DESKTOP = {"width": 860, "height": 640}
PHONE = {"width": 375, "height": 812}  # an iPhone X/11 Pro/12 mini-size screen, in CSS px


def wait_for_thumbnails(page, n: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#grid li.result")).to_have_count(n)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"
    )


def url_params(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


# --- a full disk (the `small_disk` fixture) ---


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


# --- damaging a real index at rest, the ways disks and people do (issue 10, items 6 and 7) ---
#
# damage(index_dir, "segment-bytes")      # random bytes over the vectors of the newest segment
# damage(index_dir, "segment-truncated")  # the newest segment cut to half its size
# damage(index_dir, "catalog")            # random bytes over catalog.sqlite's first page
# damage(index_dir, "model-missing")      # the index's model copy deleted

KINDS = ("segment-bytes", "segment-truncated", "catalog", "model-missing")


def newest_segment(index_dir: Path) -> tuple[Path, np.ndarray]:
    """The current generation's newest segment file, and its stored vectors (storage order)."""
    snap = open_snapshot(index_dir, mmap=False)
    try:
        part = max(snap.parts, key=lambda p: p.segment.info.id)
        return index_dir / part.segment.info.file, part.segment.all_vectors()
    finally:
        snap.close()


def overwrite_vectors(index_dir: Path, seed: int = 0) -> Path:
    """Random bytes over the stored vectors of the newest segment: same size, ids intact."""
    path, xb = newest_segment(index_dir)
    data = bytearray(path.read_bytes())
    at = data.find(xb.tobytes())
    assert at > 0, "the vectors were not found in the file"
    noise = np.random.default_rng(seed).integers(0, 256, xb.nbytes, dtype=np.uint8).tobytes()
    data[at : at + xb.nbytes] = noise
    path.write_bytes(bytes(data))
    return path


def truncate_segment(index_dir: Path) -> Path:
    path, _ = newest_segment(index_dir)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    return path


def overwrite_catalog(index_dir: Path, seed: int = 0) -> Path:
    """Random bytes over the first 4 KiB of catalog.sqlite (its header and schema page)."""
    path = index_dir / "catalog.sqlite"
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with open(path, "r+b") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def remove_model_copy(index_dir: Path) -> Path:
    (copy,) = (index_dir / "models").iterdir()
    shutil.rmtree(copy)
    return copy


def damage(index_dir: Path, kind: str) -> Path:
    """Damage `index_dir` (no process may have it open) in the way `kind` names; the file damaged."""
    return {
        "segment-bytes": overwrite_vectors,
        "segment-truncated": truncate_segment,
        "catalog": overwrite_catalog,
        "model-missing": remove_model_copy,
    }[kind](index_dir)


# --- hostile files built in the tests (nothing binary is committed): costly JPEGs, padded PNGs ---

EOB_RUN_14 = 0xE0  # AC symbol: end-of-band run of 2^14 + (14 extra bits) blocks


def many_scans_jpeg(scans: int, side: int = 64) -> bytes:
    """A valid grey progressive JPEG followed by `scans` extra (empty) AC scans.

    Each extra scan is 16 bytes: its header and one end-of-band run over every block. A decoder still
    walks every block once per scan, so the work grows with scans x blocks while the file stays small:
    100,000 scans over 2048 x 2048 pixels are 1.6 MB and minutes of one core.
    """
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    assert data.endswith(b"\xff\xd9")
    # AC table 1 with one 1-bit code, for the end-of-band run symbol
    dht = b"\xff\xc4" + struct.pack(">H", 20) + b"\x11" + bytes([1] + [0] * 15) + bytes([EOB_RUN_14])
    bits, left = "", ((side + 7) // 8) ** 2
    while left > 0:
        run = max(16384, min(left, 32767))
        bits += "0" + format(run - 16384, "014b")
        left -= run
    bits += "1" * (-len(bits) % 8)
    ecs = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    # SOS: 1 component (id 1), DC table 0 / AC table 1, coefficients 1..63, no successive approximation
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x01, 1, 63, 0) + ecs
    return data[:-2] + dht + scan * scans + b"\xff\xd9"


def padded_png(total: int, color: tuple[int, int, int] = (40, 160, 90)) -> bytes:
    """A small valid PNG followed by zero bytes up to `total` bytes (decoders ignore the padding)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    png = buf.getvalue()
    assert total >= len(png)
    return png + b"\0" * (total - len(png))


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", **save)
    return buf.getvalue()


def post_item(api: Api, data: bytes, key: str | None = None, **fields: str) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return api.post(
        "/v1/items", files={"image": ("photo.jpg", data, "image/jpeg")}, data=fields, headers=headers
    )


SHOP_FIELDS = ["product_id", "image", "title", "price", "color", "on_sale"]


def write_shop(path: Path, images: list[str], **override: dict) -> Path:
    """Two images per product SKU-0, SKU-1, ...; price 10 * (p + 1); colour red / blue;
    `override`: {product_id: {field: value}}."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, SHOP_FIELDS)
        w.writeheader()
        for i, image in enumerate(images):
            p = i // 2
            row = {
                "product_id": f"SKU-{p}",
                "image": image,
                "title": f"Thing {p}",
                "price": 10 * (p + 1),
                "color": "red" if p % 2 == 0 else "blue",
                "on_sale": "true" if p % 3 == 0 else "false",
            }
            row.update(override.get(row["product_id"], {}))
            w.writerow(row)  # fmt: skip
    return path
