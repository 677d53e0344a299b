"""The default encoder's speed, today's path against the new one, side by side in one run (issue 11).

    python bench/encoder_speed.py [--limit N] [--rounds 2] [--out bench/results/encoder_speed.json]

"today" = the pre-issue-11 path kept runnable by switches: `imgrec train --model effnet-lite02-pca
--runtime torch --no-feature-cache` (torch eager, no graph, no feature cache). "new" = `imgrec train`
with the default preset (`encoder.DEFAULT_MODEL`: onnxruntime graph exported at train time, features
kept for `index`). Both on ../shared/datasets/clothing-small (train/ = inventory, validation/ =
queries; generated JPEGs when absent), through the real CLI in subprocesses (imports included):

1. train + index wall time (`imgrec train`, then `imgrec index` into a fresh index); target new/today <= 0.4;
2. indexing throughput, img/s of `imgrec index` on images the model has not seen (no cached features),
   interleaved rounds; target new/today >= 2.3;
3. query p50 over HTTP, one client, both servers (`imgrec serve`) up at once and queried alternately;
   target new/today <= 0.5;
4. API worker start-up: from spawning a fresh process until its `create_app` has the index and model
   loaded and warm (the process prints when; its exit is not timed); target new < 2 s;
5. a no-change `imgrec index`; target new < 1.5 s;
plus `imgrec eval` P@5 of both indexes (the quality target, P@5 >= 0.83 on clothing, is the default's).
imgrec's own modules are byte-compiled first, as any install has them (`compile_bytecode`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CLOTHING, ROOT, compile_bytecode, inventory_images, machine, median, write_json

BIN = Path(sys.executable).parent
TODAY = ["--model", "effnet-lite02-pca", "--runtime", "torch", "--no-feature-cache"]


def cli(*args: str, env: dict | None = None) -> float:
    """Run `imgrec ARGS` to completion; its wall time in seconds."""
    t = time.perf_counter()
    subprocess.run([str(BIN / "imgrec"), *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def copy_model(src: Path, dst: Path) -> Path:
    """The model's own files, without its feature cache (indexing then decodes and embeds everything)."""
    from encoder.model_dir import model_files

    dst.mkdir(parents=True, exist_ok=True)
    for name in model_files(src):
        shutil.copy2(src / name, dst / name)
    return dst


def worker_startup(index: Path) -> float:
    """Seconds from spawning a Python process until its app has index and model loaded and warmed up
    (read when the process says so; its exit afterwards is not start-up)."""
    code = (
        "from search_api import create_app\n"
        f"app = create_app({{'INDEX': {str(index)!r}, 'RELOAD_INTERVAL': 0}})\n"
        "assert app.extensions['imgrec'].status().ready\n"
        "print('ready', flush=True)\n"
    )
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    ready = time.perf_counter() - t
    proc.stdout.close()
    if proc.wait() != 0 or line.strip() != "ready":
        raise RuntimeError(f"worker on {index} did not start (exit {proc.returncode})")
    return ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(index: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "imgrec"), "serve", "--index", str(index), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import requests

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def query_latencies(urls: dict[str, str], queries: list[Path], warmup: int = 5) -> dict[str, list[float]]:
    """One client, the servers queried alternately with the same images: ms per request."""
    import requests

    out: dict[str, list[float]] = {name: [] for name in urls}
    with requests.Session() as session:
        for i, path in enumerate(queries):
            data = path.read_bytes()
            for name, url in urls.items():
                t = time.perf_counter()
                r = session.post(
                    url + "/v1/search?k=10", files={"image": ("q.jpg", data, "image/jpeg")}, timeout=60
                )
                ms = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                if i >= warmup:
                    out[name].append(ms)
    return out


def eval_p5(index: Path, queries: Path) -> dict:
    """`imgrec eval` figures of an index (P@1, P@5, mAP@10) from its JSON output."""
    out = subprocess.run(
        [
            str(BIN / "imgrec"),
            "eval",
            "--index",
            str(index),
            "--queries",
            str(queries),
            "--json",
            "--baseline-size",
            "0",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(out.stdout)
    return {k: figures["metrics"][k] for k in ("P@1", "P@5", "mAP@10")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="inventory images (default: all of train/)")
    ap.add_argument("--throughput-images", type=int, default=480, help="images for the throughput rounds")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of throughput and start-up")
    ap.add_argument("--queries", type=int, default=120, help="HTTP queries per server")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "encoder_speed.json"))
    args = ap.parse_args()

    import encoder

    new_model = encoder.DEFAULT_MODEL
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "today": " ".join(["imgrec train", *TODAY]),
        "new": f"imgrec train --model {new_model} (the default)",
    }
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="imgrec-encoder-speed-") as tmp:
        work = Path(tmp)
        inventory, source = inventory_images(work / "inventory", args.limit)
        queries_dir = CLOTHING.parent / "validation" if CLOTHING.is_dir() else inventory
        small, _ = inventory_images(
            work / "throughput", args.throughput_images, queries_dir if CLOTHING.is_dir() else None
        )
        results["inventory"] = source
        paths = {"today": TODAY, "new": ["--model", new_model]}

        # 1. train + index, wall time (the model dirs and indexes are reused below)
        fig: dict = {}
        for name in ("today", "new"):
            model, index = work / f"model-{name}", work / f"index-{name}"
            t_train = cli("train", "--images", str(inventory), "--out", str(model), *paths[name], env=env)
            t_index = cli(
                "index", "--inventory", str(inventory), "--model", str(model), "--index", str(index), env=env
            )
            fig[name] = {
                "train_s": round(t_train, 1),
                "index_s": round(t_index, 1),
                "total_s": round(t_train + t_index, 1),
            }
            print(name, fig[name], flush=True)
        results["train_plus_index"] = {
            **fig,
            "ratio": round(fig["new"]["total_s"] / fig["today"]["total_s"], 3),
            "target": "<= 0.4",
        }

        # 5. a no-change index run
        nochange = {name: round(cli("index", "--inventory", str(inventory), "--model", str(work / f"model-{name}"),
                                    "--index", str(work / f"index-{name}"), env=env), 2) for name in ("today", "new")}  # fmt: skip
        results["no_change_index_s"] = {**nochange, "target": "new < 1.5"}
        print("no-change index", nochange, flush=True)

        # 2. indexing throughput on images the model has not seen (no cached features), interleaved
        bare = {name: copy_model(work / f"model-{name}", work / f"bare-{name}") for name in ("today", "new")}
        n_small = sum(1 for p in small.rglob("*") if p.is_file())
        rates: dict[str, list[float]] = {"today": [], "new": []}
        for r in range(args.rounds):
            for name in ("today", "new"):
                t = cli(
                    "index",
                    "--inventory",
                    str(small),
                    "--model",
                    str(bare[name]),
                    "--index",
                    str(work / f"tp-{name}-{r}"),
                    env=env,
                )
                rates[name].append(n_small / t)
            print("throughput round", r + 1, {k: round(v[-1], 1) for k, v in rates.items()}, flush=True)
        tp = {name: round(median(v), 1) for name, v in rates.items()}
        results["index_throughput_img_s"] = {**tp, "images": n_small, "rounds": rates, "ratio": round(tp["new"] / tp["today"], 2), "target": ">= 2.3"}  # fmt: skip

        # 4. API worker start-up, interleaved
        starts: dict[str, list[float]] = {"today": [], "new": []}
        for _ in range(args.rounds + 1):
            for name in ("today", "new"):
                starts[name].append(worker_startup(work / f"index-{name}"))
        su = {name: round(median(v), 2) for name, v in starts.items()}
        results["worker_startup_s"] = {**su, "rounds": starts, "target": "new < 2"}
        print("worker start-up", su, flush=True)

        # 3. query p50 over HTTP, one client, both servers up, alternating
        procs = {name: serve(work / f"index-{name}") for name in ("today", "new")}
        try:
            for proc, url in procs.values():
                wait_ready(url, proc)
            qpaths = sorted(p for p in queries_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
            qpaths = qpaths[:: max(1, len(qpaths) // args.queries)][: args.queries]
            lat = query_latencies({name: url for name, (_, url) in procs.items()}, qpaths)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
                proc.wait(timeout=30)
        import numpy as np

        q = {name: {"p50_ms": round(float(np.median(v)), 1), "p95_ms": round(float(np.percentile(v, 95)), 1)} for name, v in lat.items()}  # fmt: skip
        results["query_http_ms"] = {**q, "queries": len(qpaths), "ratio_p50": round(q["new"]["p50_ms"] / q["today"]["p50_ms"], 3), "target": "p50 ratio <= 0.5"}  # fmt: skip
        print("query", q, flush=True)

        if CLOTHING.is_dir():
            results["eval"] = {
                name: eval_p5(work / f"index-{name}", queries_dir) for name in ("today", "new")
            }
            print("eval", results["eval"], flush=True)
    results["machine_after"] = machine()
    results["met"] = {
        "train_plus_index": results["train_plus_index"]["ratio"] <= 0.4,
        "index_throughput": results["index_throughput_img_s"]["ratio"] >= 2.3,
        "query_p50": results["query_http_ms"]["ratio_p50"] <= 0.5,
        "worker_startup": results["worker_startup_s"]["new"] < 2,
        "no_change_index": results["no_change_index_s"]["new"] < 1.5,
    }
    print(json.dumps(results["met"]))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
