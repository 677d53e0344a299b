"""The shared fixtures, in the Flask tutorial's shape (docs/development.md, "Tests", says which is for what).

def test_stats(client):                          # API unit test: the app on the session's index, no server
    assert client.get("/v1/stats").json["items"] == 48

def test_stream(api, catalog):                   # only where the server matters: a real server (waitress)
    r = api.post("/v1/search", files={"image": catalog.query_bytes()})

Session, read-only: `catalog` (a generated inventory, a conv-ae trained on it, its published index),
`pretrained_model`, `model` (random weights, nothing trained). Per test: `fresh_index` (a private copy
to publish into). Helpers that are not fixtures live in tests/support.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from search_api.keys import create_key, revoke_key
from tests.support import (
    CHROMIUM,
    DESKTOP,
    LOW_SQL_VARIABLE_LIMIT,
    SMALL_BODY_LIMIT,
    TINY_TRAIN,
    Api,
    Catalog,
    Keys,
    build_index,
    limit_sql_variables,
    make_model_dir,
    unlimit_sql_variables,
)

# --- models, inventories, indexes (session-wide, read-only) --------------------------------------


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """Six classes x 8 generated images (+ 2 queries each), a conv-ae trained on them (TINY_TRAIN),
    one published index generation. Read-only: copy it (`fresh_index`) to change it."""
    from encoder.train import train
    from imgrec.synthetic import make_catalog

    root = tmp_path_factory.mktemp("catalog")
    inventory, queries = make_catalog(root / "catalog", per_class=8, queries_per_class=2, seed=0)
    train(inventory, root / "model", TINY_TRAIN)
    build_index(inventory, root / "model", root / "index")
    return Catalog(inventory, queries, root / "model", root / "index")


@pytest.fixture(scope="session")
def pretrained_model(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest pretrained preset (Lite0 at 64 px, 16-d PCA) fitted on the catalog, graph exported."""
    from encoder.config import PretrainedConfig
    from encoder.fit import fit_pretrained
    from encoder.images import find_images

    out = tmp_path_factory.mktemp("pretrained") / "model"
    fit_pretrained(
        find_images(catalog.inventory),
        out,
        PretrainedConfig(image_size=64, code_dim=16),
        "effnet-lite0-pca-tiny",
    )
    return out


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight conv-ae model folder (`make_model_dir`, seed 0): indexes without training."""
    return make_model_dir(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture
def fresh_index(catalog: Catalog, tmp_path: Path) -> Catalog:
    """A private copy of the inventory and an index of its own (for tests that publish new generations)."""
    inventory = tmp_path / "inventory"
    shutil.copytree(catalog.inventory, inventory)
    build_index(inventory, catalog.model, tmp_path / "index")
    return dataclasses.replace(catalog, inventory=inventory, index=tmp_path / "index")


# --- the API: an app, its test client, and real servers where the server matters ----------------


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
def app(make_app: Callable, catalog: Catalog):
    """The search API on the session's index (read-only: tests that write use `fresh_index`)."""
    return make_app(INDEX=str(catalog.index), MAX_CONTENT_LENGTH=SMALL_BODY_LIMIT, RELOAD_INTERVAL=0)


@pytest.fixture
def client(app):
    """The session app's test client: API unit tests, no server (`client.get("/v1/stats").json`)."""
    return app.test_client()


@pytest.fixture(scope="session")
def serve() -> Iterator[Callable[..., str]]:
    """serve(app) -> base URL: the app on a real WSGI server (waitress) on a free port."""
    from waitress import wasyncore
    from waitress.server import create_server

    running = []

    def start(app, threads: int = 8) -> str:
        server = create_server(app, host="127.0.0.1", port=0, threads=threads, ident="imgrec-test")
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    # Stop each loop before its sockets close: closing them under its select() raised EBADF in the
    # server thread (an unhandled thread exception, an error at teardown). An empty map ends the loop;
    # the trigger wakes it at once.
    opened = []
    for server, _ in running:
        opened.append(dict(server._map))
        server._map.clear()
        server.pull_trigger()
    for (server, thread), channels in zip(running, opened, strict=True):
        thread.join(timeout=5)
        wasyncore.close_all(channels)  # the listening socket, the trigger, open connections
        server.task_dispatcher.shutdown()


@pytest.fixture(scope="session")
def base_url(app, serve: Callable[..., str]) -> str:
    """The session app on a real server: for raw HTTP, concurrency, the browser, schemathesis."""
    return serve(app)


@pytest.fixture
def api(base_url: str) -> Iterator[Api]:
    """HTTP client for the session app on its real server: `api.get("/healthz")`."""
    with Api(base_url) as session:
        yield session


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Playwright), one per test module."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian package `chromium`; see DEVELOPERS.md)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser) -> Iterator[Callable]:
    """open_page(url, **context options) -> a page that has loaded `url` and the index's labels.

    The page records the URLs it requests (`page.requested`) and its console errors (`page.errors`); at the end
    of the test every error must be one the test expected (`page.expected_errors`, substrings).
    """
    contexts = []

    def open_(url: str, viewport: dict = DESKTOP, device_scale_factor: float = 1, **options):
        context = browser.new_context(viewport=viewport, device_scale_factor=device_scale_factor, **options)
        contexts.append(context)
        page = context.new_page()
        page.requested, page.errors, page.expected_errors = [], [], []
        page.on("request", lambda r: page.requested.append(r.url))
        page.on(
            "console", lambda m: m.type == "error" and page.errors.append(f"console: {m.text} {m.location}")
        )
        page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
        page.goto(url)
        page.wait_for_selector("#label[data-loaded]", state="attached")  # the labels are in (or failed)
        return page

    yield open_
    for context in contexts:
        pages = context.pages
        context.close()
        for page in pages:
            unexpected = [e for e in page.errors if not any(x in e for x in page.expected_errors)]
            assert not unexpected, unexpected


# --- API keys ---


@pytest.fixture(scope="module")
def keys(catalog, tmp_path_factory) -> Keys:
    """A copy of the session index with a read, a write and a revoked key."""
    index = tmp_path_factory.mktemp("keyed") / "index"
    shutil.copytree(catalog.index, index)
    read = create_key(index, "reader", "read")
    write = create_key(index, "writer", "write")
    revoked = create_key(index, "gone", "write")
    revoke_key(index, "gone")
    return Keys(index, read, write, revoked)


# --- the machine: SQLite's limits, a small disk --------------------------------------------------


@pytest.fixture
def low_sql_variable_limit() -> Iterator[None]:
    """SQLite's limit on parameters per statement lowered to 50 for the test (and its children)."""
    limit_sql_variables(LOW_SQL_VARIABLE_LIMIT)
    yield
    unlimit_sql_variables()


TMPFS_SIZE = "2m"


@pytest.fixture()
def small_disk(tmp_path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for the test (needs root and a kernel that lets it mount)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: the disk-full test cannot run here")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full test cannot run")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
