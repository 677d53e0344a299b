"""The OpenAPI document: valid, complete (through the test client), and true to the live server (schemathesis)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCHEMATHESIS_EXAMPLES = 25  # per operation and phase: enough to find shape errors, quick on 2 cores

# Bytes that satisfy `format: binary` but are not a decodable image are valid by the schema and
# still rejected (415/422; 400 when empty), and a string is not always a valid `filter` (400
# bad_filter, as the grammar says): tell the positive-data check so.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-path-regex = "^/v1/(search|products$)"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "415", "422"]

# an item id that fits the schema need not exist (the stateful phase follows ids of other answers)
[[operations]]
include-path-regex = "^/v1/items/.+/similar"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "415", "422"]
"""


@pytest.fixture(scope="module")
def spec(app) -> dict:
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200
    return r.json


def test_openapi_document_is_valid(spec):
    from openapi_spec_validator import validate

    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_api_route_is_documented(app, spec):
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("openapi.", "apidocs.", "pages.")) or rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, (path, method)


def test_every_error_is_documented_with_one_shape(spec):
    expected = {
        ("/v1/search", "post"): {"400", "413", "415", "422", "503"},
        ("/v1/search/batch", "post"): {"400", "413", "415", "422", "503"},
        ("/v1/items/{item_id}", "get"): {"404", "503"},
        ("/v1/items/{item_id}/image", "get"): {"404", "503"},
        ("/v1/items/{item_id}/thumbnail", "get"): {"404", "503"},
        ("/v1/items/{item_id}/similar", "get"): {"400", "404", "503"},
        ("/readyz", "get"): {"503"},
        ("/v1/stats", "get"): {"503"},
    }
    for (path, method), codes in expected.items():
        codes |= {"414", "431"}  # URL and header limits, checked before any view (search_api.limits)
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (path, codes - set(responses))
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
            assert schema["required"] == ["error", "message"]
    body = spec["paths"]["/v1/search"]["post"]["requestBody"]
    assert body["required"] and {"multipart/form-data", "image/jpeg", "image/png"} <= set(body["content"])
    k = next(p for p in spec["paths"]["/v1/search"]["post"]["parameters"] if p["name"] == "k")
    assert k["schema"]["minimum"] == 1 and k["schema"]["maximum"] == 100


def test_schemathesis_finds_no_server_error_and_no_schema_violation(base_url, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cmd = [
        exe, "--config-file", str(config), "run", f"{base_url}/openapi.json",
        "--checks", "all", "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--workers", "1",  # 2 trips a schemathesis race
        "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "30",
        "--seed", "1", "--no-color",
        "--exclude-tag", "Writes",  # they change the shared session inventory; tests/test_live.py covers them
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(report)
    summary = report[report.rfind("SUMMARY") :] if "SUMMARY" in report else report[-3000:]
    print(summary)  # shown with -s / -rA: what was run and found
    assert run.returncode == 0, summary
    assert re.search(r"Tested: 13\b", report), summary
