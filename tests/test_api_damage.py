"""The API refuses a damaged generation and keeps serving the old one (issue 10, item 6).

Real servers (waitress, `serve`), real index files damaged in real ways (`tests/support.py`).
The engine's poller is off (RELOAD_INTERVAL=0): each test calls `reload()` itself, as the poller
would, once the new generation has been damaged.
"""

from __future__ import annotations

import io

import pytest

from tests.support import KINDS, Api, add_images, build_index, copy_index, damage

REFUSED = 'imgrec_index_generations_refused_total{damage="%s"} 1.0'


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("segment-bytes", "does not match the sha256 recorded when it was written"),
        ("segment-truncated", "bytes, the catalog records"),
    ],
)
def test_a_damaged_new_generation_is_refused(kind, problem, make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)
    eng = app.extensions["imgrec"]
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        add_images(catalog, fresh_index.inventory)
        second = build_index(fresh_index.inventory, catalog.model, fresh_index.index)
        damaged = damage(fresh_index.index, kind)  # the segment only the new generation lists

        assert not eng.reload()
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index"]["generation"] == first
        reason = ready.json()["reload_error"]
        assert f"generation {second} refused: generation {second}: segment segments/{damaged.name}" in reason
        assert problem in reason
        assert "imgrec verify --repair INDEX" in reason and f"still serving generation {first}" in reason
        assert str(fresh_index.index) not in reason  # no server paths in answers

        body = api.post("/v1/search", files={"image": catalog.query_bytes()}).json()
        assert body["index"]["generation"] == first and body["results"]
        assert all(abs(hit["score"]) <= 1.0001 for hit in body["results"])  # cosine: no absurd scores
        assert REFUSED % "DamagedGenerationError" in api.get("/metrics").text
        assert not eng.reload()  # not retried at once, and counted once
        assert api.get("/metrics").text.count(REFUSED % "DamagedGenerationError") == 1


def test_a_damaged_catalog_while_serving(make_app, serve, fresh_index, catalog):
    app = make_app(INDEX=str(fresh_index.index), RELOAD_INTERVAL=0)
    eng = app.extensions["imgrec"]
    with Api(serve(app)) as api:
        first = api.get("/readyz").json()["index"]["generation"]
        damage(fresh_index.index, "catalog")
        assert not eng.reload()
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index"]["generation"] == first
        reason = ready.json()["reload_error"]
        assert reason.startswith("refused: catalog.sqlite is damaged") and "imgrec verify INDEX" in reason
        assert REFUSED % "CatalogDamagedError" in api.get("/metrics").text
        r = api.post("/v1/search", files={"image": catalog.query_bytes()})
        assert r.status_code in (200, 503), r.text  # 200: the rows it needs were still in SQLite's cache
        if r.status_code == 503:
            assert r.json()["message"].startswith("the index is damaged: catalog.sqlite is damaged")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("segment-bytes", "does not match the sha256 recorded when it was written"),
        ("segment-truncated", "bytes, the catalog records"),
        ("catalog", "catalog.sqlite is damaged"),
        ("model-missing", "the index's model copy models/"),
    ],
)
def test_a_server_started_on_a_damaged_index_says_why(kind, reason, make_app, catalog, tmp_path):
    assert kind in KINDS
    copy_index(catalog.index, tmp_path / "index")
    damage(tmp_path / "index", kind)
    client = make_app(INDEX=str(tmp_path / "index"), RELOAD_INTERVAL=0).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    message = ready.json["message"]
    assert message.startswith("no index loaded: ") and reason in message and "imgrec verify" in message
    stats = client.get("/v1/stats")
    assert stats.status_code == 503 and stats.json["message"] == message
    image = (io.BytesIO(catalog.query_bytes()), "image")
    assert client.post("/v1/search", data={"image": image}).status_code == 503
    assert client.get("/healthz").status_code == 200
    assert "imgrec_index_generations_refused_total" in client.get("/metrics").text


@pytest.mark.slow  # ~40 s: gunicorn's two workers load torch and the index
def test_gunicorn_workers_refuse_a_truncated_segment(fresh_index, catalog, tmp_path):
    """The SIGBUS case: 2 gunicorn workers map flat segments; a new generation whose segment is
    truncated is refused by both (its size is checked before mapping); they keep serving, none dies.

    The workers are stopped (SIGSTOP) while the generation is published and truncated, so that none
    opens it before the damage: then they continue and find it damaged.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    from tests.support import free_port

    served = fresh_index.index
    port, log_path = free_port(), tmp_path / "gunicorn.log"
    env = {**os.environ, "IMGREC_INDEX": str(served), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    (tmp_path / "prom").mkdir()
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:search_api.gunicorn_conf", "--workers", "2",
           "--bind", f"127.0.0.1:{port}", "search_api:create_app()"]  # fmt: skip
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def wait_for(ready, what: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if ready():
                    return
            except requests.RequestException:  # refused, or accepted while the workers still load
                pass
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    def both_workers_ready() -> bool:  # new connections spread over both workers
        return all(requests.get(base + "/readyz", timeout=10).status_code == 200 for _ in range(8))

    try:
        wait_for(both_workers_ready, "gunicorn never became ready")
        first = requests.get(base + "/readyz", timeout=10).json()["index"]["generation"]
        group = [*children(proc.pid), proc.pid]
        assert len(group) == 3
        for pid in group:
            os.kill(pid, signal.SIGSTOP)
        try:
            add_images(catalog, fresh_index.inventory)
            second = build_index(fresh_index.inventory, catalog.model, served)
            truncated = damage(served, "segment-truncated")
        finally:
            for pid in group:
                os.kill(pid, signal.SIGCONT)

        def refused_by_both() -> bool:
            answers = [requests.get(base + "/readyz", timeout=10).json() for _ in range(8)]
            return all(f"generation {second} refused" in (a.get("reload_error") or "") for a in answers)

        wait_for(refused_by_both, "the damaged generation was never refused")
        for _ in range(12):
            r = requests.post(base + "/v1/search", files={"image": catalog.query_bytes()}, timeout=30)
            assert r.status_code == 200 and r.json()["index"]["generation"] == first
        ready = requests.get(base + "/readyz", timeout=10).json()
        assert f"segment segments/{truncated.name} is " in ready["reload_error"]
        assert "bytes, the catalog records" in ready["reload_error"]
        metrics = requests.get(base + "/metrics", timeout=10).text
        assert 'imgrec_index_generations_refused_total{damage="DamagedGenerationError"} 2.0' in metrics
        assert proc.poll() is None and sorted(children(proc.pid)) == sorted(group[:2])  # no worker died
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    assert "SIGBUS" not in log_path.read_text()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out
