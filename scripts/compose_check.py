"""The real docker compose run: build, up, search, slow clients, re-index, down (issue 15).

    make compose-check                       # or: .venv/bin/python scripts/compose_check.py
    .venv/bin/python scripts/compose_check.py --remove-images --results bench/results/compose_check.json

Needs a Docker engine with Compose v2 (`eval "$(../shared/tools/container-engine)"` starts one here and
sets TORCH_INDEX_URL). Each run is its own compose project (containers, network and volumes removed at
the end, also on failure); the images are kept for a warm next run unless --remove-images. Steps:

1. build the imgrec and proxy images with `docker compose build` (TORCH_INDEX_URL as the build arg);
2. an empty inventory folder: the train and indexer services stop with one clear line (exit 2);
3. `docker compose up -d --wait` on a generated inventory (imgrec.synthetic): train fits the default
   model, the indexer builds the index, the api gets healthy, then the proxy;
4. a search over HTTP through the proxy finds the query's class and an inventory image itself;
5. errors the proxy answers itself (413, 414, 431) are `{error, message}` JSON; nothing gets past it
   to gunicorn's own HTML errors (500 headers are served, 3,000 get the proxy's 431);
6. 32 slow uploads (a byte every 5 s) in flight while ordinary searches run: every one succeeds;
7. the inventory changes (images added and removed): the watching indexer publishes them and the
   running api serves them (new images found, removed ones gone); an upload over the API (POST
   /v1/items) is indexed and found; a one-shot `--full` rebuild on the dask profile's scheduler and
   worker is served too;
8. with the api stopped, the proxy answers 502 or 504 as JSON; then `down -v`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slow_clients  # noqa: E402

IMAGE = "imgrec-compose-check:latest"
PROXY_IMAGE = "imgrec-compose-check-proxy:latest"
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


class CheckFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """One compose project of docker-compose.yml, with its settings and a log of every command."""

    def __init__(self, project: str, workdir: Path, env: dict[str, str], build_on_host_network: bool):
        self.project, self.workdir = project, workdir
        self.env = {**os.environ, **env}
        self.log = workdir / "compose.log"
        self.files = ["-f", str(ROOT / "docker-compose.yml")]
        if build_on_host_network:  # the torch index is on this host's loopback: the build must see it
            override = workdir / "build-network.yml"
            override.write_text(
                "services:\n  api: {build: {network: host}}\n  proxy: {build: {network: host}}\n"
            )
            self.files += ["-f", str(override)]

    def compose(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 900, project: str | None = None
    ) -> subprocess.CompletedProcess:
        """`docker compose -p PROJECT ... ARGS`; output to the log (and returned)."""
        argv = ["docker", "compose", "-p", project or self.project, *self.files, *args]
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
        result = subprocess.run(
            argv, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        with open(self.log, "a") as log:
            log.write(result.stdout + result.stderr + f"[exit {result.returncode}]\n")
        return result

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
        result = self.compose(*args, **kw)
        check(result.returncode == 0, f"docker compose {' '.join(args)} failed:\n{tail(result)}")
        return result

    def down(self) -> None:
        self.compose(
            "--profile", "dask", "down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=300
        )


def image_id(tag: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True
    )
    return result.stdout.strip() or None


def build_images(stack: Stack) -> None:
    """`docker compose build` under one project name for every run (compose labels images with the
    project: a name per run would make a new image each time); the image it replaces is removed."""
    before = {tag: image_id(tag) for tag in (IMAGE, PROXY_IMAGE)}
    result = stack.compose("build", timeout=1800, project="imgrec-compose-check")
    check(
        result.returncode == 0,
        f"docker compose build failed (is TORCH_INDEX_URL={stack.env['TORCH_INDEX_URL']} reachable?):\n{tail(result)}",
    )
    for tag, old in before.items():
        if old and old != image_id(tag):
            subprocess.run(["docker", "rmi", old], capture_output=True, check=False)  # fails if still in use


def tail(result: subprocess.CompletedProcess, n: int = 30) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-n:])


def make_inventory(root: Path) -> tuple[Path, Path, Path]:
    """A generated inventory, its held-back queries and a second catalog (new images for step 7)."""
    from imgrec.synthetic import make_catalog

    inventory, queries = make_catalog(root / "catalog", per_class=8, queries_per_class=2, size=96)
    extra, _ = make_catalog(root / "extra", per_class=2, queries_per_class=0, size=96, seed=1)
    for path in [root, *root.rglob("*")]:  # the containers run as uid 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    return inventory, queries, extra


def search(base: str, image: Path, k: int = 5) -> dict:
    with open(image, "rb") as f:
        r = requests.post(f"{base}/v1/search", params={"k": k}, files={"image": f}, timeout=60)
    check(r.status_code == 200, f"search answered {r.status_code}: {r.text[:300]}")
    return r.json()


def hit_paths(base: str, answer: dict) -> list[str]:
    """The inventory paths of an answer's hits (from their item records)."""
    return [requests.get(f"{base}{h['item_url']}", timeout=30).json()["path"] for h in answer["results"]]


def proxy_errors(base: str) -> dict[int, dict]:
    """Requests the proxy refuses itself: status -> JSON body."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:  # a declared 1 GB upload
        s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        raw = b""
        while b"}" not in raw and (chunk := s.recv(65536)):  # the answer, without nginx's lingering close
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    check(head.split()[1] == b"413" and b"application/json" in head, f"a 1 GB upload got {head!r}")
    answers = {413: json.loads(body)}
    within = {f"X-Header-{i}": "1" for i in range(80)}  # with requests' and the proxy's own, under 100
    r = requests.get(f"{base}/readyz", headers=within, timeout=30)
    check(r.status_code == 200, f"80 header fields answered {r.status_code}: {r.text[:200]}")
    for status, kw in (
        # past the app's MAX_HEADERS (100): the app's JSON 431, not gunicorn's HTML (its limit is lifted)
        (431, {"url": f"{base}/readyz", "headers": {f"X-Header-{i}": "1" for i in range(500)}}),
        (414, {"url": f"{base}/{'a' * 9000}"}),
        (431, {"url": f"{base}/readyz", "headers": {"X-Big": "a" * 9000}}),
        (431, {"url": f"{base}/readyz", "headers": {f"X-Header-{i}": "1" for i in range(3000)}}),
    ):
        r = requests.get(timeout=30, **kw)
        check(r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:200]}")
        check(r.headers["Content-Type"] == "application/json", f"{status}: {r.headers['Content-Type']}")
        answers[status] = r.json()
    for status, body in answers.items():
        check(set(body) == {"error", "message"}, f"{status}: {body}")
    return answers


def wait_for(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        check(time.monotonic() < deadline, f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.5)


def generation(base: str) -> int | None:
    try:
        r = requests.get(f"{base}/readyz", timeout=10)
    except requests.RequestException:
        return None
    return r.json()["index"]["generation"] if r.status_code == 200 else None


def run_check(args: argparse.Namespace, work: Path, times: dict[str, float], figures: dict) -> None:
    torch_index = os.environ.get("TORCH_INDEX_URL") or DEFAULT_TORCH_INDEX
    loopback = urlsplit(torch_index).hostname in ("127.0.0.1", "localhost", "::1")
    port = free_port()
    inventory, queries, extra = make_inventory(work / "data")
    uploads = inventory / "_uploads"  # the api (uid 10001) writes uploads here
    uploads.mkdir()
    uploads.chmod(0o777)
    env = {
        "IMGREC_IMAGE": IMAGE,
        "IMGREC_PROXY_IMAGE": PROXY_IMAGE,
        "TORCH_INDEX_URL": torch_index,
        "IMGREC_INVENTORY_DIR": str(inventory),
        "IMGREC_PORT": str(port),
        "IMGREC_RELOAD_INTERVAL": "1",
        "IMGREC_DASK_WORKERS": "1",
        "IMGREC_TRAIN_MODEL": args.model,
        # the slow-clients step searches as fast as one address can (a load test, not a rate-limit
        # test: tests/test_access.py covers 429s); the default 300/minute per address would refuse it
        "IMGREC_RATE_LIMIT_ANONYMOUS": "1000000/minute",
    }
    stack = Stack(args.project, work, env, build_on_host_network=loopback)
    base = f"http://127.0.0.1:{port}"
    step = Steps(times)
    try:
        with step("build"):
            build_images(stack)

        with step("empty inventory refused"):
            empty = work / "empty"
            empty.mkdir(mode=0o755)
            empty.chmod(0o755)
            for service, extra_args in (("train", ()), ("indexer", ("--no-deps",))):
                r = stack.compose(
                    "run", "--rm", *extra_args, service, env={"IMGREC_INVENTORY_DIR": str(empty)}
                )
                lines = [ln for ln in r.stderr.splitlines() if ln.startswith("imgrec:")]
                check(r.returncode == 2, f"{service} on an empty inventory exited {r.returncode}:\n{tail(r)}")
                check(
                    len(lines) == 1 and "no files in the inventory folder" in lines[0], f"{service}: {lines}"
                )

        with step("up (train, index, api, proxy healthy)"):
            stack.ok("up", "--detach", "--wait", "--wait-timeout", "900", "proxy", timeout=1000)

        with step("search"):
            answer = search(base, queries / "mugs" / "mugs-000.jpg")
            labels = [h["label"] for h in answer["results"]]
            check(labels[0] == "mugs", f"a mug query found {labels}")
            first_gen = answer["index"]["generation"]
            itself = search(base, inventory / "rugs" / "rugs-003.jpg", k=1)
            path, score = hit_paths(base, itself)[0], itself["results"][0]["score"]
            # first, and near 1 (the default preset's query expansion blends in the query's neighbours)
            check(path == "rugs/rugs-003.jpg" and score > 0.95, f"an inventory image found {path} ({score})")

        with step("proxy errors are JSON"):
            figures["proxy_errors"] = proxy_errors(base)

        with step("slow clients"):
            slow = slow_clients.run(
                base, (queries / "mugs" / "mugs-001.jpg").read_bytes(), slow=32, interval=5.0, duration=20.0
            )
            figures["slow_clients"] = vars(slow)
            check(slow.slow_open_at_end == 32, f"the proxy closed slow uploads early: {vars(slow)}")
            check(slow.searches > 0 and slow.searches_ok == slow.searches, f"searches failed: {vars(slow)}")

        with step("the watching indexer serves folder changes"):
            added = []
            for src in sorted((extra / "scarves").glob("*.jpg")):
                added.append(inventory / "scarves" / f"new-{src.name}")
                shutil.copy(src, added[-1])
                added[-1].chmod(0o644)
            removed = work / "removed.jpg"  # kept aside: the query for "is it gone"
            shutil.move(inventory / "rugs" / "rugs-003.jpg", removed)

            def changes_served() -> bool:
                new_found = hit_paths(base, search(base, added[0], k=1))[0] == f"scarves/{added[0].name}"
                return new_found and "rugs/rugs-003.jpg" not in hit_paths(base, search(base, removed, k=10))

            wait_for("the api to serve the added and removed files", changes_served, 120)
            figures["watched_generation"] = generation(base)
            check((generation(base) or 0) > first_gen, f"generation {generation(base)} after {first_gen}")

        with step("an upload over the API is found"):
            upload = sorted(queries.rglob("*.jpg"))[-1]  # held back: not in the inventory
            r = requests.post(f"{base}/v1/items", files={"image": upload.read_bytes()}, timeout=60)
            check(r.status_code == 401, f"an upload without a key: {r.status_code} {r.text[:300]}")
            key = stack.ok(
                "exec", "-T", "api", "imgrec", "keys", "create", "compose-check", "--scope", "write",
                "--index", "/data/index",
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            auth = {"Authorization": f"Bearer {key}"}
            r = requests.post(
                f"{base}/v1/items", files={"image": upload.read_bytes()}, headers=auth, timeout=60
            )
            check(r.status_code == 202, f"upload: {r.status_code} {r.text[:300]}")
            job_url = base + r.json()["job"]["url"]
            t_post = time.monotonic()
            wait_for(
                "the upload indexed",
                lambda: requests.get(job_url, headers=auth, timeout=30).json()["job"]["state"] != "queued",
                120,
            )
            job = requests.get(job_url, headers=auth, timeout=30).json()["job"]
            check(job["state"] == "indexed", f"upload job: {job}")
            wait_for(
                "the upload found",
                lambda: job["item_id"] in [h["id"] for h in search(base, upload, k=5)["results"]],
                60,
            )
            figures["upload_to_found_seconds"] = round(time.monotonic() - t_post, 1)

        with step("a one-shot rebuild on dask, api serves it"):
            before = generation(base) or 0
            stack.ok("--profile", "dask", "up", "--detach", "dask-worker")
            r = stack.ok(
                "--profile", "dask", "run", "--rm", "indexer", "compose-step", "index", "--full", "--json",
                env={"IMGREC_DASK": "tcp://dask-scheduler:8786"},
            )  # fmt: skip
            summary = json.loads(r.stdout[r.stdout.index("{") :])
            check(summary["generation_id"] > before, f"indexer: {summary}")
            prefixes = stack.ok(
                "--profile", "dask", "exec", "-T", "dask-scheduler", "python", "-c",
                "from distributed import Client; c = Client('tcp://127.0.0.1:8786', timeout=30); "
                "print(sorted(c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))))",
            ).stdout  # fmt: skip
            check("embed_partition" in prefixes, f"the indexer did not use the Dask worker: {prefixes}")
            wait_for("the api to serve the rebuilt generation", lambda: (generation(base) or 0) > before, 60)
            path = hit_paths(base, search(base, added[0], k=1))[0]
            check(path == f"scarves/{added[0].name}", f"the new image found {path}")

        with step("api stopped: the proxy answers 502/504 JSON"):
            stack.ok("stop", "api")
            r = requests.get(f"{base}/readyz", timeout=30)  # 502 refused / 504 gone (connect timeout)
            body = r.json() if r.headers.get("Content-Type") == "application/json" else {}
            expected = {502: "bad_gateway", 504: "gateway_timeout"}
            check(body.get("error") == expected.get(r.status_code), f"{r.status_code} {r.text[:200]}")
            figures["api_stopped"] = {"status": r.status_code, **body}
    except BaseException:
        print(f"compose log: {stack.log}", file=sys.stderr)
        for line in stack.compose("logs", "--no-color", "--tail", "40").stdout.splitlines()[-120:]:
            print(f"  {line}", file=sys.stderr)
        raise
    finally:
        with step("down -v"):
            stack.down()
        if args.remove_images:
            subprocess.run(["docker", "rmi", IMAGE, PROXY_IMAGE], capture_output=True, check=False)


class Steps:
    """`with steps("name"):` prints each step and records its seconds."""

    def __init__(self, times: dict[str, float]):
        self.times = times

    def __call__(self, name: str):  # noqa: ANN204
        steps = self

        class _Step:
            def __enter__(self) -> None:
                self.t0 = time.monotonic()
                print(f"compose-check: {name} ...", flush=True)

            def __exit__(self, kind, *_) -> None:  # noqa: ANN001
                seconds = round(time.monotonic() - self.t0, 1)
                steps.times[name] = seconds
                print(
                    f"compose-check: {name}: {'ok' if kind is None else 'FAILED'} ({seconds} s)", flush=True
                )

        return _Step()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=f"imgrec-check-{os.getpid()}", help="compose project name")
    parser.add_argument("--model", default="", help="IMGREC_TRAIN_MODEL (empty: the default model)")
    parser.add_argument("--remove-images", action="store_true", help="remove the built images at the end")
    parser.add_argument("--results", type=Path, help="add the times and figures to this JSON file")
    parser.add_argument("--label", default="run", help="their key in that file, e.g. cold / warm")
    args = parser.parse_args()
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        print("compose-check: docker with the compose plugin is not available", file=sys.stderr)
        return 2
    times: dict[str, float] = {}
    figures: dict = {}
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="imgrec-compose-check-"))
    run_check(args, work, times, figures)  # on failure the folder stays, with compose.log
    shutil.rmtree(work)
    times["total"] = round(time.monotonic() - t0, 1)
    print(f"compose-check: passed in {times['total']} s")
    if args.results:
        slow_clients.record(args.results, args.label, {"seconds": times, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
