"""Access control against real servers: the key matrix on every endpoint, rate limits, CORS, the
keys CLI, keys never logged, and the api_keys migration of an existing index."""

from __future__ import annotations

import re
import shutil

import pytest
import requests
from click.testing import CliRunner

from imgrec.cli import cli
from search_api.auth import SAFE_METHODS, required_scope
from search_api.keys import KEY_PATTERN, create_key

# POSTs that only read: each one is a deliberate exception to "not GET means write".
READ_POSTS = {"search.search", "search.search_batch"}
# A sample value per URL variable, so every rule of the url_map can be requested.
URL_SAMPLES = {"item_id": "1", "job_id": "1", "product_id": "sku-1", "filename": {"static": "app.js", "apidocs.static": "swagger-ui.css"}}


@pytest.fixture(scope="module")
def open_app(make_app, keys):
    return make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0)


@pytest.fixture(scope="module")
def closed_app(make_app, keys):
    return make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0, REQUIRE_READ_KEY=True)


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def every_request(app) -> list[tuple[str, str, str]]:
    """(endpoint, method, URL path) for every rule and method of the app's url_map."""
    out = []
    for rule in app.url_map.iter_rules():
        values = {}
        for arg in rule.arguments:
            sample = URL_SAMPLES.get(arg)
            if isinstance(sample, dict):
                sample = sample.get(rule.endpoint)
            assert sample is not None, f"add a sample value for <{arg}> of {rule.rule} to URL_SAMPLES"
            values[arg] = sample
        path = rule.rule
        for arg, value in values.items():
            path = re.sub(rf"<(?:[^:>]+:)?{arg}>", value, path)
        for method in sorted(rule.methods - {"OPTIONS"}):
            out.append((rule.endpoint, method, path))
    return out


def expected(scope: str, reads_closed: bool, key: str) -> int | None:
    """The refusal (401/403) a request gets, or None when the key check lets it through."""
    if scope == "public":
        return None
    if key == "revoked":
        return 401
    if scope == "write":
        return {"none": 401, "read": 403, "write": None}[key]
    return 401 if key == "none" and reads_closed else None


def test_writes_need_a_write_key_unless_marked_as_reads(open_app):
    """Secure by default: a new non-GET endpoint is a write until someone marks it a read here."""
    for endpoint, method, _ in every_request(open_app):
        scope = required_scope(open_app, endpoint, method)
        if method not in SAFE_METHODS and scope != "write":
            assert endpoint in READ_POSTS, f"{method} {endpoint} is not a write: list it in READ_POSTS"
    assert required_scope(open_app, "search.search", "POST") == "read"
    assert required_scope(open_app, "ops.healthz", "GET") == "public"
    assert required_scope(open_app, "ops.readyz", "GET") == "public"
    assert required_scope(open_app, "pages.index", "GET") == "public"
    assert required_scope(open_app, "ops.metrics", "GET") == "read"
    assert required_scope(open_app, "items.get_item", "GET") == "read"


@pytest.mark.parametrize("reads_closed", [False, True], ids=["reads-open", "reads-closed"])
def test_the_key_matrix_on_every_endpoint(request, serve, keys, reads_closed):
    app = request.getfixturevalue("closed_app" if reads_closed else "open_app")
    base = serve(app)
    presented = {"none": None, "read": keys.read, "write": keys.write, "revoked": keys.revoked}
    checked = 0
    with requests.Session() as s:
        for endpoint, method, path in every_request(app):
            scope = required_scope(app, endpoint, method)
            for kind, key in presented.items():
                r = s.request(method, base + path, headers=auth(key), timeout=30)
                want = expected(scope, reads_closed, kind)
                where = f"{method} {path} ({scope}) with key {kind}: {r.status_code} {r.text[:200]}"
                if want is None:
                    assert r.status_code not in (401, 403) and r.status_code < 500, where
                else:
                    assert r.status_code == want, where
                    if method != "HEAD":
                        body = r.json()
                        assert set(body) >= {"error", "message"}, where
                        assert keys.revoked not in r.text and keys.read not in r.text
                    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="imgrec"'), where
                checked += 1
    assert checked >= 4 * 12  # every rule and method, four keys each


def test_refusals_say_why(serve, closed_app, keys):
    base = serve(closed_app)
    r = requests.get(f"{base}/v1/items/1", timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="imgrec"'
    r = requests.get(f"{base}/v1/items/1", headers=auth(keys.revoked), timeout=30)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    forged = keys.read[:-4] + ("0000" if not keys.read.endswith("0000") else "1111")
    r = requests.get(f"{base}/v1/items/1", headers=auth(forged), timeout=30)
    assert r.status_code == 401 and r.json()["message"] == "unknown API key"
    r = requests.get(f"{base}/v1/items/1", headers={"Authorization": f"Basic {keys.read}"}, timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["message"]
    # a write key's letter changed to r: its id and secret are real, the scope claim is not
    r = requests.get(f"{base}/v1/items/1", headers=auth(keys.write.replace("_w_", "_r_", 1)), timeout=30)
    assert r.status_code == 401


def test_a_new_unmarked_post_needs_a_write_key(make_app, serve, keys):
    """The default the write API relies on: a POST route without any auth code is a write."""
    app = make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0)
    from search_api import auth as access

    app.add_url_rule("/v1/test-only-write", "test_only_write", lambda: {"done": True}, methods=["POST"])
    app.add_url_rule("/v1/test-only-job", "test_only_job", access.writes(lambda: {"job": 1}), methods=["GET"])
    base = serve(app)
    job = f"{base}/v1/test-only-job"  # a GET marked @auth.writes: a write key, as for the write itself
    assert [requests.get(job, headers=auth(k), timeout=30).status_code for k in (None, keys.read)] == [
        401,
        403,
    ]
    assert requests.get(job, headers=auth(keys.write), timeout=30).json() == {"job": 1}
    url = f"{base}/v1/test-only-write"
    assert requests.post(url, timeout=30).status_code == 401
    r = requests.post(url, headers=auth(keys.read), timeout=30)
    assert (
        r.status_code == 403 and 'error="insufficient_scope", scope="write"' in r.headers["WWW-Authenticate"]
    )
    assert requests.post(url, headers=auth(keys.write), timeout=30).json() == {"done": True}
    assert requests.post(url, headers=auth(keys.revoked), timeout=30).status_code == 401


def test_a_revoke_takes_effect_without_a_restart(make_app, serve, keys):
    app = make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0, REQUIRE_READ_KEY=True)
    base = serve(app)
    key = create_key(keys.index, "short-lived", "read")
    assert requests.get(f"{base}/v1/items/1", headers=auth(key), timeout=30).status_code == 200
    result = CliRunner().invoke(cli, ["keys", "revoke", "short-lived", "--index", str(keys.index)])
    assert result.exit_code == 0, result.output
    r = requests.get(f"{base}/v1/items/1", headers=auth(key), timeout=30)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_metrics_count_requests_by_key_name(serve, closed_app, keys):
    base = serve(closed_app)
    for _ in range(3):
        assert requests.get(f"{base}/v1/items/2", headers=auth(keys.read), timeout=30).status_code == 200
    text = requests.get(f"{base}/metrics", headers=auth(keys.write), timeout=30).text
    counts = re.findall(r'imgrec_http_requests_by_key_total\{key="reader",status="200"\} (\S+)', text)
    assert counts and float(counts[0]) >= 3
    assert requests.get(f"{base}/metrics", timeout=30).status_code == 401  # key names are not public
    assert keys.read not in text and keys.write not in text


# --- rate limits ---------------------------------------------------------------------------------


def test_rate_limits_per_key_and_per_address(make_app, serve, keys):
    app = make_app(
        INDEX=str(keys.index),
        RELOAD_INTERVAL=0,
        RATE_LIMIT_ENABLED=True,
        RATE_LIMIT_KEY="3/hour",  # an hour-long window: the test cannot straddle two
        RATE_LIMIT_ANONYMOUS="2/hour",
    )
    base = serve(app)
    url = f"{base}/v1/items/1"
    for _ in range(2):
        assert requests.get(url, timeout=30).status_code == 200
    r = requests.get(url, timeout=30)
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "too_many_requests" and "2 per 1 hour" in r.json()["message"]
    assert int(r.headers["Retry-After"]) > 0
    for _ in range(3):  # the reader's key has its own count
        assert requests.get(url, headers=auth(keys.read), timeout=30).status_code == 200
    assert requests.get(url, headers=auth(keys.read), timeout=30).status_code == 429
    assert requests.get(url, headers=auth(keys.write), timeout=30).status_code == 200  # and the writer's
    for _ in range(5):  # health checks are never limited
        assert requests.get(f"{base}/healthz", timeout=30).status_code == 200


# --- CORS --------------------------------------------------------------------------------------


def test_cors_for_listed_origins_only(make_app, serve, keys):
    app = make_app(
        INDEX=str(keys.index),
        RELOAD_INTERVAL=0,
        REQUIRE_READ_KEY=True,
        CORS_ORIGINS="https://shop.example, https://admin.shop.example",
    )
    base = serve(app)
    url = f"{base}/v1/items/1"
    r = requests.get(url, headers={"Origin": "https://shop.example", **auth(keys.read)}, timeout=30)
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    r = requests.get(url, headers={"Origin": "https://evil.example", **auth(keys.read)}, timeout=30)
    assert "Access-Control-Allow-Origin" not in r.headers
    # the browser's preflight for a keyed search: answered without a key
    preflight = {
        "Origin": "https://admin.shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    r = requests.options(f"{base}/v1/search", headers=preflight, timeout=30)
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://admin.shop.example"
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    r = requests.options(
        f"{base}/v1/search", headers={**preflight, "Origin": "https://evil.example"}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in r.headers
    # a refusal carries the header too, so the page can read why
    r = requests.get(url, headers={"Origin": "https://shop.example"}, timeout=30)
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == "https://shop.example"


def test_no_cors_by_default_and_no_wildcard(api, make_app, keys):
    r = api.get("/v1/items/1", headers={"Origin": "https://shop.example"})
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    with pytest.raises(ValueError, match="no wildcards"):
        make_app(INDEX=str(keys.index), RELOAD_INTERVAL=0, CORS_ORIGINS="*")


# --- the keys CLI and the migration ------------------------------------------------------------


def test_keys_create_list_revoke(keys, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(keys.index, index)
    runner = CliRunner()
    result = runner.invoke(cli, ["keys", "create", "kiosk", "--scope", "read", "--index", str(index)])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert KEY_PATTERN.match(key) and key.startswith("imgrec_r_")
    secret = key.rsplit("_", 1)[1]
    catalog = (index / "catalog.sqlite").read_bytes() + b"".join(
        p.read_bytes() for p in index.glob("catalog.sqlite-*")
    )
    assert secret.encode() not in catalog  # only its hash is kept
    listed = runner.invoke(cli, ["keys", "list", "--index", str(index)])
    assert listed.exit_code == 0
    line = next(line for line in listed.output.splitlines() if line.startswith("kiosk "))
    assert " read " in line and line.rstrip().endswith("-")  # not revoked
    assert key not in listed.output and secret not in listed.output
    again = runner.invoke(cli, ["keys", "create", "kiosk", "--scope", "write", "--index", str(index)])
    assert again.exit_code == 1 and "exists already" in again.output
    bad = runner.invoke(cli, ["keys", "create", "kiosk2", "--scope", "admin", "--index", str(index)])
    assert bad.exit_code == 2
    assert runner.invoke(cli, ["keys", "revoke", "kiosk", "--index", str(index)]).exit_code == 0
    twice = runner.invoke(cli, ["keys", "revoke", "kiosk", "--index", str(index)])
    assert twice.exit_code == 0 and "already" in twice.output
    not_an_index = runner.invoke(cli, ["keys", "list", "--index", str(tmp_path)])
    assert not_an_index.exit_code == 1 and "not an index" in not_an_index.output
    assert not (tmp_path / "catalog.sqlite").exists()
    missing = runner.invoke(cli, ["keys", "revoke", "nobody", "--index", str(index)])
    assert missing.exit_code == 1 and "no key named" in missing.output
    listed = runner.invoke(cli, ["keys", "list", "--index", str(index), "--json"])
    rows = {r["name"]: r for r in __import__("json").loads(listed.output)}
    assert rows["kiosk"]["revoked_at"] is not None and rows["reader"]["revoked_at"] is None


@pytest.mark.parametrize("command", ["create", "list", "revoke"])
def test_keys_help(command):
    result = CliRunner().invoke(cli, ["keys", command, "--help"])
    assert result.exit_code == 0 and "Example:" in result.output


def test_an_existing_index_gains_the_keys_table(catalog, tmp_path, make_app, serve):
    """An index at the previous schema: `keys create` upgrades it in place, and the API uses the key."""
    from sqlalchemy import create_engine, inspect

    from indexer.db import database_url
    from indexer.migrate import current_revision, downgrade, head_revision

    index = tmp_path / "index"
    shutil.copytree(catalog.index, index)
    url = database_url(index)
    downgrade(url, "0002")
    engine = create_engine(url)
    assert "api_keys" not in inspect(engine).get_table_names()
    engine.dispose()
    # an API on the old catalog (it serves nothing until upgraded) refuses keys cleanly, no 500
    old = serve(make_app(INDEX=str(index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0))
    r = requests.get(f"{old}/v1/stats", headers=auth("imgrec_r_" + "0" * 12 + "_" + "1" * 64), timeout=30)
    assert r.status_code == 401 and r.json()["message"] == "unknown API key"

    result = CliRunner().invoke(cli, ["keys", "create", "first", "--scope", "write", "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert current_revision(url) == head_revision()
    assert requests.get(f"{old}/v1/stats", headers=auth(result.stdout.strip()), timeout=30).status_code == 503
    base = serve(make_app(INDEX=str(index), RELOAD_INTERVAL=0, KEY_CACHE_SECONDS=0, REQUIRE_READ_KEY=True))
    key = result.stdout.strip()
    assert requests.get(f"{base}/v1/items/1", headers=auth(key), timeout=30).status_code == 200
    assert requests.get(f"{base}/v1/items/1", timeout=30).status_code == 401


def test_the_openapi_document_declares_the_scheme_and_scopes(serve, closed_app, open_app):
    spec = requests.get(f"{serve(closed_app)}/openapi.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearerKey"] == {
        **spec["components"]["securitySchemes"]["bearerKey"],
        "type": "http",
        "scheme": "bearer",
    }
    search = spec["paths"]["/v1/search"]["post"]
    assert search["x-scope"] == "read" and search["security"] == [{"bearerKey": []}]
    assert "401" in search["responses"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    open_spec = requests.get(f"{serve(open_app)}/openapi.json", timeout=30).json()
    assert open_spec["paths"]["/v1/search"]["post"]["security"] == [{}, {"bearerKey": []}]


# --- keys never logged -------------------------------------------------------------------------


def test_keys_never_appear_in_logs(catalog, keys, tmp_path):
    """gunicorn with its access log, the app at debug level: every way a key can be sent, none logged."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support import free_port

    port = free_port()
    env = {
        **os.environ,
        "IMGREC_INDEX": str(keys.index),
        "IMGREC_REQUIRE_READ_KEY": "true",
        "IMGREC_KEY_CACHE_SECONDS": "0",
    }
    log_path = tmp_path / "gunicorn.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:search_api.gunicorn_conf", "--workers", "1",
           "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "--log-level", "debug",
           "search_api:create_app()"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if requests.get(base + "/readyz", timeout=10).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "gunicorn never became ready"
                time.sleep(0.2)
            sent = [
                requests.get(f"{base}/v1/items/1", headers=auth(keys.read), timeout=30),
                requests.get(f"{base}/v1/items/1", headers=auth(keys.revoked), timeout=30),
                requests.post(f"{base}/v1/search", headers=auth(keys.write), timeout=30),
                requests.get(f"{base}/v1/items/1", auth=(keys.read, keys.write), timeout=30),  # Basic
                requests.get(f"{base}/v1/items/1", headers={"Authorization": keys.read}, timeout=30),
            ]
            assert [r.status_code for r in sent] == [200, 401, 400, 401, 401]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    text = log_path.read_text()
    assert '"GET /v1/items/1 HTTP/1.1" 200' in text  # the access log was written
    for key in (keys.read, keys.write, keys.revoked):
        for part in (key, key.rsplit("_", 1)[1]):
            assert part not in text
