"""Write-to-searchable latency: from a POST /v1/items 202 until a search finds the item (issue 14).

    .venv/bin/python bench/live_latency.py                     # 1000 items, 30 uploads, 8 search clients
    .venv/bin/python bench/live_latency.py --items 2000 --uploads 50

Real processes: the API (`imgrec serve`, waitress) and the watcher (`imgrec index --watch`) on an
index of a conv-ae model trained here (briefly) on ../shared/datasets/clothing-small, or on
generated photos when that is absent (said in the results). While 8 clients search without pause,
uploads are posted one at a time; for each, the time from its 202 until a search with the same
image returns the new item (polled every 50 ms). Then a burst: `--burst` files copied into the
inventory at once (one big publish) while uploads are posted, to see how long a 202 waits for the
catalog's write lock (the queue lives in catalog.sqlite; SQLite's busy timeout is 30 s).
Writes bench/results/live_latency.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from _common import ROOT, build_model_dir, inventory_images, machine

IMGREC = str(Path(sys.executable).parent / "imgrec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def summary(xs: list[float]) -> dict:
    return {
        "n": len(xs),
        "p50": round(percentile(xs, 50), 3),
        "p95": round(percentile(xs, 95), 3),
        "max": round(max(xs), 3) if xs else None,
        "mean": round(statistics.fmean(xs), 3) if xs else None,
    }


def photo(seed: int, size: int = 400) -> bytes:
    """A new product-like photo (not in the inventory): a generated item, JPEG."""
    from imgrec.synthetic import CLASSES, draw_item

    rng = np.random.default_rng(10_000 + seed)
    shape, color = list(CLASSES.values())[seed % len(CLASSES)]
    buf = io.BytesIO()
    draw_item(shape, color, rng, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def wait_ready(base: str, deadline: float = 300) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if requests.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the API did not get ready")


class Searchers:
    """N clients searching without pause (with inventory images), counting answers."""

    def __init__(self, base: str, images: list[bytes], n: int):
        self.base, self.images, self.n = base, images, n
        self.stop = threading.Event()
        self.count = 0
        self.errors = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]

    def run(self, i: int) -> None:
        with requests.Session() as s:
            k = i
            while not self.stop.is_set():
                data = self.images[k % len(self.images)]
                k += self.n
                try:
                    ok = (
                        s.post(self.base + "/v1/search", files={"image": data}, timeout=60).status_code == 200
                    )
                except requests.RequestException:
                    ok = False
                self.count += ok
                self.errors += not ok

    def __enter__(self) -> Searchers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_) -> None:  # noqa: ANN002
        self.stop.set()
        for t in self.threads:
            t.join(60)


def upload_until_found(base: str, data: bytes, s: requests.Session) -> tuple[float, float, float]:
    """(seconds the POST took, seconds from the 202 to the job indexed, to a search finding it)."""
    t0 = time.perf_counter()
    r = s.post(base + "/v1/items", files={"image": ("p.jpg", data, "image/jpeg")}, timeout=120)
    accepted = time.perf_counter()
    if r.status_code != 202:
        raise SystemExit(f"upload answered {r.status_code}: {r.text}")
    url = base + r.json()["job"]["url"]
    while (job := s.get(url, timeout=60).json()["job"])["state"] == "queued":
        time.sleep(0.05)
    indexed = time.perf_counter()
    if job["state"] != "indexed":
        raise SystemExit(f"upload failed: {job}")
    while True:
        hits = s.post(base + "/v1/search", files={"image": data}, params={"k": 5}, timeout=60).json()[
            "results"
        ]
        if job["item_id"] in [h["id"] for h in hits]:
            return accepted - t0, indexed - accepted, time.perf_counter() - accepted
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="inventory images indexed first")
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--clients", type=int, default=8, help="searching clients meanwhile")
    parser.add_argument("--burst", type=int, default=500, help="files copied in at once (0: no burst phase)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "live_latency.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgrec-live-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        inventory, source = inventory_images(work / "inventory", args.items)
        model = build_model_dir("conv-ae", inventory, work / "model")
        index = work / "index"
        t = time.perf_counter()
        subprocess.run(
            [IMGREC, "index", "--inventory", str(inventory), "--model", str(model), "--index", str(index)],
            check=True, capture_output=True,
        )  # fmt: skip
        print(f"indexed {source} in {time.perf_counter() - t:.0f} s")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        logs = {name: (work / f"{name}.log").open("wb") for name in ("api", "watcher")}
        procs.append(
            subprocess.Popen(
                [IMGREC, "serve", "--index", str(index), "--port", str(port), "--threads", "16"],
                stdout=logs["api"],
                stderr=subprocess.STDOUT,
                env={**_env(), "IMGREC_RELOAD_INTERVAL": "0.2"},
            )  # fmt: skip
        )
        procs.append(
            subprocess.Popen(
                [
                    IMGREC,
                    "index",
                    "--inventory",
                    str(inventory),
                    "--model",
                    str(model),
                    "--index",
                    str(index),
                    "--watch",
                ],
                stdout=logs["watcher"],
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
        wait_ready(base)
        queries = [p.read_bytes() for p in sorted(inventory.rglob("*.jpg"))[:64]]
        post_s, indexed_s, found_s = [], [], []
        with requests.Session() as s:
            from search_api.keys import create_key

            s.headers["Authorization"] = f"Bearer {create_key(index, 'bench', 'write')}"  # writes need one
            upload_until_found(base, photo(-1), s)  # the watcher is up and has caught up
            with Searchers(base, queries, args.clients) as searchers:
                t = time.perf_counter()
                for i in range(args.uploads):
                    a, b, c = upload_until_found(base, photo(i), s)
                    post_s.append(a)
                    indexed_s.append(b)
                    found_s.append(c)
                    print(f"upload {i}: 202 in {a:.3f} s, indexed after {b:.2f} s, found after {c:.2f} s")
                    time.sleep(0.5)
                steady_seconds = time.perf_counter() - t
                searches, search_errors = searchers.count, searchers.errors
            burst = burst_phase(base, inventory, args.burst, s) if args.burst else None
        results = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join([".venv/bin/python", "bench/live_latency.py", *sys.argv[1:]]),
            "inventory": source,
            "model": "conv-ae (trained 1 epoch here, 64 px)",
            "search_clients": args.clients,
            "searches_meanwhile": searches,
            "search_errors": search_errors,
            "searches_per_second": round(searches / steady_seconds, 1),
            "post_seconds": summary(post_s),
            "accepted_to_indexed_seconds": summary(indexed_s),
            "accepted_to_found_seconds": summary(found_s),
            "burst": burst,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def burst_phase(base: str, inventory: Path, n: int, s: requests.Session) -> dict:
    """Copy `n` photos into the inventory at once (one big publish) and post uploads every 0.1 s
    meanwhile: how long does a 202 wait while the publish holds the catalog's write lock?"""
    staging = inventory.parent / "burst"
    staging.mkdir()
    for i in range(n):
        (staging / f"b-{i:05d}.jpg").write_bytes(photo(100_000 + i))
    last = photo(100_000 + n - 1)
    post_s, jobs = [], []
    t0 = time.perf_counter()
    shutil.move(staging, inventory / "burst")  # one rename: the watcher sees a folder arrive
    searchable = None
    i = 0
    while time.perf_counter() - t0 < 300:
        i += 1
        t = time.perf_counter()
        r = s.post(
            base + "/v1/items", files={"image": ("p.jpg", photo(200_000 + i), "image/jpeg")}, timeout=120
        )
        post_s.append(time.perf_counter() - t)
        jobs.append(base + r.json()["job"]["url"])
        if searchable is None:
            hits = s.post(base + "/v1/search", files={"image": last}, params={"k": 1}).json()["results"]
            if hits and hits[0]["score"] > 0.99:
                searchable = time.perf_counter() - t0
        if searchable is not None and time.perf_counter() - t0 > searchable + 3:
            break
        time.sleep(0.1)
    while any(s.get(u).json()["job"]["state"] == "queued" for u in jobs):
        time.sleep(0.2)
    return {
        "files": n,
        "seconds_until_the_burst_was_searchable": round(searchable or float("nan"), 2),
        "uploads_meanwhile": len(post_s),
        "post_seconds": summary(post_s),
        "all_uploads_indexed_after_seconds": round(time.perf_counter() - t0, 2),
    }


def _env() -> dict:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    sys.exit(main())
