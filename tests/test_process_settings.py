"""Process-wide settings (thread counts, the OpenMP wait policy, FAISS globals) belong to the entry
points (`encoder.compute`): importing the library changes none, an entry point sets them once.

Each check runs in a fresh interpreter, so that nothing the test session already did counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# The environment the children start from: no OpenMP setting of ours or of the machine.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "IMGREC_"))}

SETTINGS = """
import os, sys, faiss, torch
import onnxruntime  # noqa: F401 - loaded before the library, as a user's program may
def settings():
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "blas_threshold": faiss.cvar.distance_compute_blas_threshold,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_"))},
    }
"""


def run_child(code: str, prelude: str = SETTINGS) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=CLEAN_ENV, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_library_changes_no_process_setting():
    got = run_child(
        """
import importlib, json, pkgutil
before = settings()
names = []
for package in ("encoder", "indexer", "search_api", "imgrec"):
    root = importlib.import_module(package)
    for m in pkgutil.walk_packages(root.__path__, package + "."):
        # gunicorn's config file is an entry point: it sets OMP_NUM_THREADS for the workers on purpose
        if m.name != "search_api.gunicorn_conf" and not m.name.endswith("__main__"):
            importlib.import_module(m.name)
            names.append(m.name)
print(json.dumps({"before": before, "after": settings(), "modules": names}))
"""
    )
    assert len(got["modules"]) > 50, got["modules"]  # the whole library was imported
    assert got["after"] == got["before"]


def test_the_cli_sets_the_openmp_wait_policy_when_a_command_runs_not_for_help(tmp_path):
    got = run_child(
        f"""
import json
from click.testing import CliRunner
from imgrec.cli import cli
runner = CliRunner()
seen = {{"imported": os.environ.get("OMP_WAIT_POLICY")}}
assert runner.invoke(cli, ["--help"]).exit_code == 0
assert runner.invoke(cli, ["index", "--help"]).exit_code == 0
seen["help"] = os.environ.get("OMP_WAIT_POLICY")
result = runner.invoke(cli, ["status", {str(tmp_path / "no-index")!r}])
seen["command"] = os.environ.get("OMP_WAIT_POLICY")
print(json.dumps(seen))
""",
        prelude="import os\n",
    )
    assert got == {"imported": None, "help": None, "command": "PASSIVE"}


def test_the_app_factory_sets_compute_threads_once_not_per_request(catalog):
    """torch's and FAISS's setters are counted (each still runs): the factory sets each once, and
    requests (each a search: an embed and a FAISS call) set nothing again."""
    got = run_child(
        f"""
import io, json
from pathlib import Path
calls = {{"torch": 0, "faiss": 0}}
def counted(name, fn):
    def call(n):
        calls[name] += 1
        return fn(n)
    return call
torch.set_num_threads = counted("torch", torch.set_num_threads)
faiss.omp_set_num_threads = counted("faiss", faiss.omp_set_num_threads)
torch.set_num_threads(2)  # as on a 2-core machine, whatever this one has
faiss.omp_set_num_threads(2)
calls.update(torch=0, faiss=0)
from search_api import create_app
app = create_app({{"TESTING": True, "INDEX": {str(catalog.index)!r}, "COMPUTE_THREADS": 1,
                   "RELOAD_INTERVAL": 0, "RATE_LIMIT_ENABLED": False}})
factory = dict(calls)
client = app.test_client()
image = Path({str(catalog.query_paths()[0])!r}).read_bytes()
for _ in range(4):
    r = client.post("/v1/search", data={{"image": (io.BytesIO(image), "q.jpg")}})
    assert r.status_code == 200, r.get_data(as_text=True)
print(json.dumps({{"factory": factory, "requests": calls, **settings()}}))
app.extensions["imgrec"].close()
"""
    )
    assert got["factory"] == {"torch": 1, "faiss": 1}
    assert got["requests"] == got["factory"]
    assert (got["torch_threads"], got["faiss_threads"]) == (1, 1)


def test_faiss_blas_threshold_is_set_when_an_index_opens_not_per_search(catalog):
    """The threshold depends on the vectors' dimension: opening the index sets it; searches leave
    whatever value is there (a marker set after opening survives them)."""
    got = run_child(
        f"""
import json
import numpy as np
from indexer import open_snapshot
snap = open_snapshot({str(catalog.index)!r})
opened = faiss.cvar.distance_compute_blas_threshold
dim = snap.generation.dim
faiss.cvar.distance_compute_blas_threshold = 12345
xq = np.random.default_rng(0).standard_normal((5, dim)).astype(np.float32)
for n in (1, 5):
    snap.search_vectors(xq[:n], k=3)
print(json.dumps({{"opened": opened, "dim": dim, "after_searches": faiss.cvar.distance_compute_blas_threshold}}))
snap.close()
"""
    )
    from indexer.faiss_index import BLAS_MIN_QUERIES

    assert got["opened"] == BLAS_MIN_QUERIES * got["dim"]
    assert got["after_searches"] == 12345
