"""Shared fixtures: a real index built from generated images, and apps served over real HTTP.

def test_something(api, catalog):              # the search API on a live server, its index
    r = api.post("/v1/search", files={"image": catalog.query_bytes()})
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

TRAIN_EPOCHS = 2  # enough for the synthetic classes to cluster; these tests are not about quality


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
    from indexer import run_index

    return run_index(inventory, model, index).generation_id


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """Six classes x 8 generated images, a conv-ae trained on them, one published index generation."""
    from encoder.train import DEMO_PRESET, train
    from imgrec.synthetic import make_catalog

    root = tmp_path_factory.mktemp("catalog")
    inventory, queries = make_catalog(root / "catalog", per_class=8, queries_per_class=2, seed=0)
    train(inventory, root / "model", dataclasses.replace(DEMO_PRESET, epochs=TRAIN_EPOCHS))
    build_index(inventory, root / "model", root / "index")
    return Catalog(inventory, queries, root / "model", root / "index")


@pytest.fixture
def fresh_index(catalog: Catalog, tmp_path: Path) -> Catalog:
    """A private copy of the inventory and an index of its own (for tests that publish new generations)."""
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    build_index(inventory, catalog.model, tmp_path / "index")
    return dataclasses.replace(catalog, inventory=inventory, index=tmp_path / "index")


@pytest.fixture(scope="session")
def make_app() -> Iterator[Callable]:
    """create_app(test_config) for tests; every app's engine is closed at the end of the session."""
    from search_api import create_app

    apps = []

    def make(**config: object):
        # no rate limits unless a test asks: the session app answers every test from one address
        app = create_app({"TESTING": True, "RATE_LIMIT_ENABLED": False, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["imgrec"].close()


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., str]]:
    """serve(app) -> base URL: the app on a real WSGI server (waitress) on a free port."""
    from waitress.server import create_server

    running = []

    def start(app, threads: int = 8) -> str:
        server = create_server(app, host="127.0.0.1", port=0, threads=threads, ident="imgrec-test")
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server, thread in running:
        server.close()
        thread.join(timeout=5)


class Api(requests.Session):
    """A requests session whose paths are relative to a live server."""

    def __init__(self, base_url: str):
        super().__init__()
        self.base_url = base_url

    def request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base_url + url if url.startswith("/") else url, *args, **kwargs)


SMALL_BODY_LIMIT = 2 * 1024 * 1024  # the shared app's MAX_CONTENT_LENGTH: oversized bodies stay cheap


@pytest.fixture(scope="session")
def app(make_app: Callable, catalog: Catalog):
    """The search API on the session's index."""
    return make_app(INDEX=str(catalog.index), MAX_CONTENT_LENGTH=SMALL_BODY_LIMIT, RELOAD_INTERVAL=0)


@pytest.fixture(scope="session")
def base_url(app, serve: Callable[..., str]) -> str:
    return serve(app)


@pytest.fixture
def api(base_url: str) -> Iterator[Api]:
    """HTTP client for the live session app: `api.get("/healthz")`."""
    with Api(base_url) as session:
        yield session
