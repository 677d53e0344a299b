"""Scale: what building and updating an index costs from 10k to 1M items (issue 13).

For each size N, against real files on disk (N tiny files in N/1000 folders) and a real index:

- first build: wall time of `run_index` and the peak size of the index folder (sampled every 20 ms)
  against its final size;
- search p50: one query vector, k=10, `Snapshot.search_vectors` (in its own process);
- no-change run: `run_index` time and the peak RSS of its process;
- add 10 images: time from the start of `run_index` to the commit of the new generation (seen by
  polling the catalog), and the peak RSS of its process;
- served after commit: a real API server (`imgrec serve`, its default reload interval) polls the
  index; time from the commit to `/readyz` naming the new generation.

Vectors come from a fast synthetic embedder plugged in through `run_index(..., embedder=)`
(bench/_scale_child.py): decoding a million real images is not the subject here, the indexer's
bookkeeping is. The same measurements run against an older checkout with its own interpreter
(`--python`), through the same public API, for the figures before.

    python bench/scale.py --sizes 10000 100000 1000000 --out bench/results/scale.json
    python bench/scale.py --sizes 10000 100000 1000000 --first-build-max 100000 \\
        --python /tmp/old-main/.venv/bin/python --label before --out bench/results/scale.json
    python bench/scale.py --report bench/results/scale.json      # the markdown table of docs/scale.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import ROOT, machine, random_model_dir, results_path, table, write_json

CHILD = Path(__file__).resolve().parent / "_scale_child.py"
WORK = Path(os.environ.get("IMGREC_SCALE_WORK", "/tmp/imgrec-scale"))
FILES_PER_FOLDER = 1000


def make_inventory(n: int, work: Path = WORK) -> Path:
    """N tiny files (distinct bytes) in N/1000 folders; made once and reused."""
    root = work / f"inventory-{n}"
    if (work / f"inventory-{n}.READY").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    folders = max(1, n // FILES_PER_FOLDER)
    for f in range(folders):
        (root / f"f{f:05d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_file(root / f"f{i % folders:05d}" / f"item-{i:08d}.jpg", i)
    (work / f"inventory-{n}.READY").write_text("ok\n")
    return root


def write_file(path: Path, i: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, i.to_bytes(8, "little") * 4)
    finally:
        os.close(fd)


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # deleted while we walk
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


class DiskPeak:
    """Samples a folder's size every `every` seconds in a thread; `.peak` is the largest seen."""

    def __init__(self, path: Path, every: float = 0.02):
        self.path, self.every, self.peak = path, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.path.exists():
                self.peak = max(self.peak, folder_bytes(self.path))
            time.sleep(self.every)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.path))


def child(python: str, request: dict, timeout: float = 24 * 3600) -> dict:
    """Run one measured task in its own process (cwd outside any checkout)."""
    done = subprocess.run(
        [python, str(CHILD), json.dumps(request)],
        capture_output=True, text=True, timeout=timeout, cwd="/tmp",
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{request['task']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def current_generation(index: Path) -> int | None:
    """The committed current generation, read with plain sqlite3 (as any reader sees it)."""
    try:
        db = sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT current_generation_id FROM index_state WHERE id = 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


class ApiServer:
    """`imgrec serve` on a free port, for the chosen interpreter's code."""

    def __init__(self, python: str, index: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [python, "-c", "from imgrec.cli import cli; cli()", "serve", "--index", str(index)]
        cmd += ["--port", str(self.port)]
        env = {**os.environ, "IMGREC_COMPUTE_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd="/tmp", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def generation(self) -> int | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return json.loads(r.read())["index"]["generation"]
        except Exception:  # noqa: BLE001 - not up yet, or not ready
            return None

    def wait_for(self, generation: int, timeout: float = 1800) -> float:
        deadline = time.monotonic() + timeout
        while self.generation() != generation:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the API never served generation {generation}")
            time.sleep(0.01)
        return time.time()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def add_ten(python: str, inventory: Path, model: Path, index: Path, api: ApiServer, round_: int) -> dict:
    """Add 10 files, index them; time to commit (catalog polled) and to being served (API polled).

    Both are watched from threads started before the run, so neither waits for the indexer
    process to exit.
    """
    n = sum(1 for _ in inventory.iterdir())
    for i in range(10):
        write_file(inventory / f"f{i % n:05d}" / f"added-{round_:03d}-{i}.jpg", 10**9 + 100 * round_ + i)
    before = current_generation(index)
    seen: dict[str, float] = {}

    def watch(name: str, read, every: float) -> None:  # noqa: ANN001
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            gen = read()
            if gen is not None and gen != before:
                seen[name] = time.time()
                return
            time.sleep(every)

    watchers = [
        threading.Thread(target=watch, args=("committed", lambda: current_generation(index), 0.005)),
        threading.Thread(target=watch, args=("served", api.generation, 0.01)),
    ]
    for w in watchers:
        w.start()
    run = child(
        python, {"task": "index", "inventory": str(inventory), "model": str(model), "index": str(index)}
    )
    for w in watchers:
        w.join()
    return {
        "commit_s": seen["committed"] - run["started"],
        "run_s": run["seconds"],
        "cpu_s": run.get("cpu_seconds"),
        "served_after_commit_s": seen["served"] - seen["committed"],
        "peak_rss_mb": run["peak_rss_mb"],
        "rss_after_imports_mb": run["rss_after_imports_mb"],
    }


def measure(n: int, python: str, model: Path, work: Path, label: str, args: argparse.Namespace) -> dict:
    inventory = make_inventory(n, work)
    index = work / label / f"index-{n}"
    shutil.rmtree(index, ignore_errors=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    row: dict = {"items": n, "code": label}
    build_every = args.checkpoint_every
    if (
        n > args.first_build_max
    ):  # too slow (or too much disk) for this code: build coarsely, measure the rest
        build_every = args.coarse_checkpoint
        row["first_build_note"] = (
            f"not measured above {args.first_build_max:,} items (built with checkpoints of {build_every:,})"
        )
    base = {"inventory": str(inventory), "model": str(model), "index": str(index)}
    with DiskPeak(index) as disk:
        built = child(python, {"task": "index", **base, "checkpoint_every": build_every})
    final = folder_bytes(index)
    if n <= args.first_build_max:
        row.update(first_build_s=built["seconds"], first_build_peak_mb=disk.peak / 1e6, final_mb=final / 1e6)
        row["first_build_disk_ratio"] = disk.peak / final
    print(f"  {label} {n:,}: built in {built['seconds']:.1f} s", flush=True)

    found = child(python, {"task": "search", "index": str(index)})
    row.update(search_p50_ms=found["p50_ms"], search_p90_ms=found["p90_ms"], segments=found["segments"])
    row["load_average"] = [round(x, 2) for x in os.getloadavg()]

    runs = [child(python, {"task": "index", **base}) for _ in range(args.repeat)]
    row["no_change_s"] = statistics.median(r["seconds"] for r in runs)
    row["no_change_runs_s"] = [round(r["seconds"], 3) for r in runs]
    row["no_change_cpu_s"] = statistics.median(r.get("cpu_seconds", float("nan")) for r in runs)
    row["no_change_peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    row["rss_after_imports_mb"] = runs[0]["rss_after_imports_mb"]
    print(f"  {label} {n:,}: no change {row['no_change_s']:.2f} s", flush=True)

    api = ApiServer(python, index)
    try:
        api.wait_for(current_generation(index))
        adds = [add_ten(python, inventory, model, index, api, r) for r in range(args.repeat)]
    finally:
        api.stop()
        for r in range(args.repeat):  # the inventory is shared between codes and runs
            for p in inventory.glob(f"*/added-{r:03d}-*.jpg"):
                p.unlink()
    row["add10_commit_s"] = statistics.median(a["commit_s"] for a in adds)
    row["add10_peak_rss_mb"] = max(a["peak_rss_mb"] for a in adds)
    row["served_after_commit_s"] = statistics.median(a["served_after_commit_s"] for a in adds)
    row["add10_runs"] = adds
    print(
        f"  {label} {n:,}: add-10 {row['add10_commit_s']:.2f} s to commit, "
        f"served {row['served_after_commit_s']:.2f} s later",
        flush=True,
    )
    if not args.keep_index:
        shutil.rmtree(index, ignore_errors=True)
    return row


COLUMNS = [
    ("code", "code", ""),
    ("items", "items", ","),
    ("first_build_s", "build s", ".1f"),
    ("first_build_disk_ratio", "disk peak/final", ".2f"),
    ("final_mb", "index MB", ".0f"),
    ("search_p50_ms", "search p50 ms", ".2f"),
    ("no_change_s", "no-change s", ".2f"),
    ("no_change_cpu_s", "(cpu s)", ".2f"),
    ("no_change_peak_rss_mb", "no-change MB", ".0f"),
    ("add10_commit_s", "add-10 s", ".2f"),
    ("add10_peak_rss_mb", "add-10 MB", ".0f"),
    ("served_after_commit_s", "served s", ".2f"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--python", default=sys.executable, help="Interpreter whose imgrec is measured.")
    ap.add_argument("--label", default="after")
    ap.add_argument("--dim", type=int, default=128, help="Vector dimension (128 or 64).")
    ap.add_argument("--checkpoint-every", type=int, default=5000)
    ap.add_argument("--first-build-max", type=int, default=10**9, help="Skip measuring first builds above.")
    ap.add_argument(
        "--coarse-checkpoint",
        type=int,
        default=200_000,
        help="Checkpoints of an unmeasured build (the code before segments rewrites the whole index at "
        "each one, and passes one SQL parameter per file of a checkpoint: keep it under SQLite's limit).",
    )
    ap.add_argument("--append", action="store_true", help="Keep the other sizes' rows already in --out.")
    ap.add_argument("--repeat", type=int, default=3, help="No-change and add-10 runs per size.")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--keep-index", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=results_path("scale"), help="Results file; runs are kept by --label."
    )
    ap.add_argument("--report", type=Path, nargs="+", help="Print a markdown table of these result files.")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
        return

    model = random_model_dir(args.work / f"model-{args.dim}", code_channels=args.dim // 16)
    results = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    results = {"benchmark": "scale", "runs": {}, **results}
    rows = []
    if args.append and args.label in results["runs"]:
        rows = [r for r in results["runs"][args.label]["rows"] if r["items"] not in args.sizes]
    for n in args.sizes:
        rows.append(measure(n, args.python, model, args.work, args.label, args))
        rows.sort(key=lambda r: r["items"])
        print(table(rows, COLUMNS), flush=True)
        results["runs"][args.label] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "code": args.label,
            "python": args.python,
            "git": _git_head(args.python),
            "dim": args.dim,
            "rows": rows,
        }
        for key in ("date", "machine", "command"):  # the file's head says when it was last written
            results.pop(key, None)
        write_json(args.out, results)


FIGURES = [  # (key, label, format, target at 1M)
    ("first_build_s", "first build, s", ".1f", None),
    ("first_build_disk_ratio", "first build: peak disk / final index", ".2f", "<= 2"),
    ("final_mb", "index size, MB", ".0f", None),
    ("search_p50_ms", "search p50 (1 vector, k=10), ms", ".2f", None),
    ("no_change_s", "no-change run, s", ".2f", "<= 3"),
    ("no_change_cpu_s", "no-change run, CPU s", ".2f", None),
    ("no_change_peak_rss_mb", "no-change run, peak RSS MB", ".0f", "<= 500"),
    ("add10_commit_s", "add 10 images, start to commit, s", ".2f", "<= 3"),
    ("add10_peak_rss_mb", "add 10 images, peak RSS MB", ".0f", None),
    ("served_after_commit_s", "served after commit, s", ".2f", "<= 2"),
]


def report(paths: list[Path]) -> str:
    """A markdown table of the runs in `paths` (scale result files), sizes as columns."""
    runs = [run for p in paths for run in json.loads(Path(p).read_text())["runs"].values()]
    sizes = sorted({r["items"] for run in runs for r in run["rows"]})
    head = "| figure | code | " + " | ".join(f"{n:,}" for n in sizes) + " | 10k -> 1M | target at 1M |"
    lines = [head, "|" + "---|" * (len(sizes) + 4)]
    for key, label, fmt, target in FIGURES:
        for run in runs:
            by = {r["items"]: r.get(key) for r in run["rows"]}
            cells = [format(by[n], fmt) if by.get(n) is not None else "-" for n in sizes]
            lo, hi = by.get(min(sizes)), by.get(max(sizes))
            growth = f"x{hi / lo:.1f}" if lo and hi else "-"
            lines.append(
                f"| {label} | {run['code']} | " + " | ".join(cells) + f" | {growth} | {target or ''} |"
            )
    return "\n".join(lines)


def _git_head(python: str) -> str | None:
    code = subprocess.run(
        [python, "-c", "import indexer, pathlib; print(pathlib.Path(indexer.__file__).parents[1])"],
        capture_output=True, text=True, cwd="/tmp",
    ).stdout.strip()  # fmt: skip
    head = subprocess.run(
        ["git", "-C", code or str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return head.stdout.strip() or None


if __name__ == "__main__":
    main()
