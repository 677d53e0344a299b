"""A write is never lost: SIGKILL the watcher and, separately, the API server at random moments
while clients post uploads and deletes. Every write answered 202 is applied by a restarted watcher
(or still queued until it is), and no upload makes a second item.

Both processes are forked from a forkserver that has imported imgrec once (as in test_crash.py),
so a restart costs little; they are still real processes, killed with SIGKILL. The client retries
a write that got no answer with the same Idempotency-Key, as a real client would.
"""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from indexer import open_snapshot, run_index
from indexer.db import DATABASE_FILE
from search_api.keys import create_key
from tests.support import cli_child, forkserver, make_inventory

CI_KILLS = 8
LONG_KILLS = int(os.environ.get("IMGREC_LIVE_KILLS", "60"))
DEADLINE = 180.0  # seconds for everything accepted to be applied at the end (a loaded 2-core machine)


@dataclass
class LiveKillStats:
    kills: Counter = field(default_factory=Counter)  # "watcher" / "api" -> SIGKILLs
    adds: int = 0  # uploads answered 202
    deletes: int = 0  # deletes answered 202
    retries: int = 0  # writes sent again (same key) after no answer
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"kills {dict(self.kills)}, {self.adds} uploads and {self.deletes} deletes accepted, "
            f"{self.retries} retried, {self.seconds:.0f} s"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Services:
    """The watcher and the API as forked children, each restartable after a kill."""

    def __init__(self, tmp: Path, inventory: Path, model: Path, index: Path):
        self.ctx = forkserver()
        self.port = free_port()
        self.args = {
            "watcher": [
                "index", "--inventory", str(inventory), "--model", str(model), "--index", str(index), "--watch",
            ],
            "api": ["serve", "--index", str(index), "--port", str(self.port)],
        }  # fmt: skip
        self.logs = {name: str(tmp / f"{name}.log") for name in self.args}
        self.procs: dict = {}

    def start(self, name: str) -> None:
        p = self.ctx.Process(target=cli_child, args=(self.args[name], self.logs[name]))
        p.start()
        self.procs[name] = p

    def kill(self, name: str) -> None:
        p = self.procs[name]
        p.kill()
        p.join()

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name, p in self.procs.items():
            if p.is_alive():
                p.terminate()  # SIGTERM: the watcher finishes its batch and exits 0
                p.join(60)
            if p.is_alive():
                p.kill()
                p.join()
            codes[name] = p.exitcode
        return codes


class Client:
    """Posts uploads (and deletes of indexed uploads) until stopped; a write that gets no answer
    is sent again with the same key until it is answered."""

    def __init__(self, base: str, stats: LiveKillStats, write_key: str):
        self.base, self.stats = base, stats
        self.auth = {"Authorization": f"Bearer {write_key}"}
        self.accepted: dict[str, dict] = {}  # key -> the job of its first 202
        self.stop = threading.Event()
        self.errors: list[str] = []

    def send(self, method: str, url: str, key: str, **kw) -> requests.Response | None:  # noqa: ANN003
        while not self.stop.is_set():
            try:
                r = requests.request(
                    method, self.base + url, headers={"Idempotency-Key": key, **self.auth}, timeout=30, **kw
                )
            except requests.RequestException:
                self.stats.retries += 1
                time.sleep(0.1)
                continue
            if r.status_code == 503:  # the restarted server has not loaded the index yet
                time.sleep(0.1)
                continue
            return r
        return None

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            key = f"add-{n}"
            r = self.send("POST", "/v1/items", key, files={"image": (f"{n}.jpg", random_jpeg(n))})
            if r is None:
                break
            if r.status_code != 202:
                self.errors.append(f"{key}: {r.status_code} {r.text}")
                continue
            self.accepted[key] = r.json()["job"]
            self.stats.adds += 1
            if n % 4 == 0:  # delete an upload that is indexed by now
                self.delete_one(f"add-{n // 2}")

    def delete_one(self, add_key: str) -> None:
        job = self.accepted.get(add_key)
        if job is None:
            return
        r = self.send("GET", job["url"], f"get-{add_key}")
        if r is None or r.json()["job"]["state"] != "indexed":
            return
        item_id = r.json()["job"]["item_id"]
        key = f"delete-{item_id}"
        r = self.send("DELETE", f"/v1/items/{item_id}", key)
        if r is not None and r.status_code == 202:
            self.accepted[key] = r.json()["job"]
            self.stats.deletes += 1
        elif r is not None and r.status_code != 404:  # 404: a retry after a kill, already applied
            self.errors.append(f"{key}: {r.status_code} {r.text}")


def live_kill_loop(tmp: Path, model: Path, n_kills: int, seed: int) -> LiveKillStats:
    rng = np.random.default_rng(seed)
    inventory, index = tmp / "inventory", tmp / "index"
    make_inventory(inventory, 24)
    run_index(inventory, model, index)
    services = Services(tmp, inventory, model, index)
    stats = LiveKillStats()
    t0 = time.perf_counter()
    services.start("watcher")
    services.start("api")
    client = Client(f"http://127.0.0.1:{services.port}", stats, create_key(index, "writer", "write"))
    thread = threading.Thread(target=client.run, name="client")
    thread.start()
    try:
        while sum(stats.kills.values()) < n_kills:
            time.sleep(rng.uniform(0.3, 3.0))
            victim = "watcher" if rng.random() < 0.5 else "api"
            services.kill(victim)
            stats.kills[victim] += 1
            time.sleep(rng.uniform(0.0, 0.5))  # writes keep coming while it is down
            services.start(victim)
    finally:
        client.stop.set()
        thread.join(60)
    try:
        check_everything_applied(index, inventory, client, services)
    finally:
        codes = services.stop()
    stats.seconds = time.perf_counter() - t0
    assert codes["watcher"] == 0, Path(services.logs["watcher"]).read_text()[-3000:]
    assert not client.errors, client.errors[:5]
    return stats


def check_everything_applied(index: Path, inventory: Path, client: Client, services: Services) -> None:
    db = sqlite3.connect(index / DATABASE_FILE, timeout=30)
    try:
        end = time.monotonic() + DEADLINE
        while db.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0]:
            assert time.monotonic() < end, Path(services.logs["watcher"]).read_text()[-3000:]
            time.sleep(0.2)
        jobs = {
            key: db.execute(
                "SELECT kind, state, item_id, path, reason FROM jobs WHERE id = ?", (j["id"],)
            ).fetchone()
            for key, j in client.accepted.items()
        }
        deleted = {row[2] for row in jobs.values() if row[0] == "delete"}
        add_items = []
        for key, (kind, state, item_id, path, reason) in jobs.items():
            assert state == "indexed", (key, state, reason)
            live = db.execute(
                "SELECT deleted_generation IS NULL FROM items WHERE id = ?", (item_id,)
            ).fetchone()
            if kind == "add":
                add_items.append(item_id)
                assert live == ((item_id not in deleted),), (key, item_id)
                assert (inventory / path).exists() == (item_id not in deleted), (key, path)
            else:
                assert live == (False,), (key, item_id)
        assert len(set(add_items)) == len(add_items), "an upload made a second item"
        n_jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
        assert n_jobs == len(client.accepted), "a job without an accepted key (or the other way round)"
        live_uploads = db.execute(
            "SELECT count(*) FROM items WHERE path LIKE '\\_uploads/%' ESCAPE '\\' AND deleted_generation IS NULL"
        ).fetchone()[0]
        assert live_uploads == len(add_items) - len(deleted)
    finally:
        db.close()
    snap = open_snapshot(index, verify="full")
    try:
        assert snap.generation.item_count == 24 + len(add_items) - len(deleted)
    finally:
        snap.close()


@pytest.mark.slow
def test_killing_the_watcher_or_the_api_loses_no_accepted_write(tmp_path, model):
    stats = live_kill_loop(tmp_path, model, CI_KILLS, seed=1)
    print(stats)
    assert stats.adds > 0 and sum(stats.kills.values()) == CI_KILLS


@pytest.mark.slow
@pytest.mark.skipif("IMGREC_LIVE_KILLS" not in os.environ, reason="set IMGREC_LIVE_KILLS=N for the long loop")
def test_killing_the_watcher_or_the_api_long(tmp_path, model):
    stats = live_kill_loop(tmp_path, model, LONG_KILLS, seed=2)
    print(stats)
    assert sum(stats.kills.values()) == LONG_KILLS
