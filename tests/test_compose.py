"""docker-compose.yml and its helpers, the fast checks (no Docker engine needed).

The real run (build, up, search, slow clients, re-index on the dask profile, proxy errors, down) is
`scripts/compose_check.py` (`make compose-check`, and .ci/run when an engine can be started); these
checks cover what can be decided without one: the compose schema, .env.example, the proxy's error
pages, and the branches of deploy/compose-step run for real with sh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_STEP = ROOT / "deploy" / "compose-step"
NGINX_TEMPLATE = ROOT / "deploy" / "proxy" / "nginx.conf.template"
VENV_BIN = Path(sys.executable).parent
_DEFAULTED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def tool(name: str) -> str | None:
    """A command from this virtualenv, else from PATH."""
    own = VENV_BIN / name
    return str(own) if own.exists() else shutil.which(name)


def compose_text() -> str:
    """docker-compose.yml without its comments."""
    return "\n".join(ln for ln in COMPOSE_FILE.read_text().splitlines() if not ln.lstrip().startswith("#"))


def test_compose_file_matches_the_compose_spec():
    exe = tool("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_lists_every_setting_with_its_default():
    """.env.example names exactly the variables docker-compose.yml reads, each with the compose default."""
    example = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    uses = _DEFAULTED.findall(compose_text())
    assert {name for name, _ in uses} == set(example)
    for name, default in uses:
        assert example[name] == default, f"{name}: .env.example says {example[name]!r}, compose {default!r}"


def test_only_the_proxy_is_published_and_it_shares_the_api_body_limit():
    """Slow clients must meet nginx, never gunicorn; both refuse the same bodies (the app's default)."""
    from search_api import DEFAULTS

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    published = {name for name, spec in services.items() if spec.get("ports")}
    assert published == {"proxy"}
    limits = {services[s]["environment"]["IMGREC_MAX_CONTENT_LENGTH"] for s in ("api", "proxy")}
    assert limits == {f"${{IMGREC_MAX_CONTENT_LENGTH:-{DEFAULTS['MAX_CONTENT_LENGTH']}}}"}
    assert "client_max_body_size @MAX_CONTENT_LENGTH@;" in NGINX_TEMPLATE.read_text()


def test_proxy_error_pages_are_the_api_json_shape():
    """Every status nginx answers itself has a JSON body with the slug the API uses for it."""
    from search_api.errors import error_slug

    text = NGINX_TEMPLATE.read_text()
    pages = dict(re.findall(r"error_page (\d+)(?: =\d+)? (/_proxy/\d+\.json);", text))
    returns = re.findall(r"location = (/_proxy/\d+\.json) \{\s*return (\d+) '([^']*)'", text)
    bodies = {page: (int(status), body) for page, status, body in returns}
    assert {"400", "413", "414", "494", "502", "504"} <= set(pages)
    for code, page in pages.items():
        status, body = bodies[page]
        answer = json.loads(body.replace("\\n", "").replace("@MAX_CONTENT_LENGTH_TEXT@", "1"))
        assert set(answer) == {"error", "message"}
        assert answer["error"] == error_slug(status), f"{code} -> {status}: {answer}"
    assert pages["494"].endswith("431.json")  # nginx's "header too large" answers 431, as gunicorn does


# --- deploy/compose-step, run with sh and the real imgrec (what the train and indexer services run) ---


def compose_step(tmp_path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "IMGREC_INVENTORY": str(inventory),
        "IMGREC_INVENTORY_DIR": "./photos",  # the host folder, as compose passes it
        "IMGREC_MODEL": str(tmp_path / "models" / "default"),
        "IMGREC_INDEX": str(tmp_path / "index"),
        "IMGREC_TRAIN_MODEL": "conv-ae",
        "IMGREC_TRAIN_EPOCHS": "1",
    }
    return subprocess.run(
        ["sh", str(COMPOSE_STEP), *args], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.mark.parametrize("step", ["train", "index"])
def test_compose_step_refuses_an_empty_inventory_in_one_line(tmp_path, step):
    (tmp_path / "empty" / "sub").mkdir(parents=True)  # folders, but no file
    result = compose_step(tmp_path, tmp_path / "empty", step)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no files in the inventory folder ./photos" in result.stderr
    missing = compose_step(tmp_path, tmp_path / "nowhere", step)
    assert missing.returncode == 2 and "no files in the inventory folder" in missing.stderr


def test_compose_step_trains_once_then_indexes(tmp_path):
    from imgrec.synthetic import make_catalog

    if tool("imgrec") is None:
        pytest.skip("`imgrec` is not installed in this environment (pip install -e .)")
    photos, _ = make_catalog(tmp_path / "catalog", per_class=3, queries_per_class=0, size=32)
    no_model = compose_step(tmp_path, photos, "index")
    assert no_model.returncode == 2 and "no model in" in no_model.stderr

    first = compose_step(tmp_path, photos, "train")
    assert first.returncode == 0, first.stderr[-2000:]
    fingerprint = (tmp_path / "models" / "default" / "FINGERPRINT").read_text()
    again = compose_step(tmp_path, photos, "train")
    assert again.returncode == 0 and f"is there ({fingerprint[:12]})" in again.stdout
    assert (tmp_path / "models" / "default" / "FINGERPRINT").read_text() == fingerprint

    indexed = compose_step(tmp_path, photos, "index", "--json")  # extra arguments go to `imgrec index`
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    assert json.loads(indexed.stdout)["added"] == 18
    assert compose_step(tmp_path, photos, "serve").returncode == 2
