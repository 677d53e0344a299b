"""Slow clients against a running search API (issue 10, item 10).

N uploads send their request head, then one body byte every few seconds, and never finish; meanwhile
ordinary searches keep coming. Against gunicorn alone the slow uploads hold every worker thread and
the ordinary searches time out; behind a buffering proxy they are answered as usual.

    python scripts/slow_clients.py http://127.0.0.1:8000 photo.jpg            # figures as JSON

`scripts/compose_check.py` runs it against the compose stack and requires every ordinary search to
succeed within the client timeout (an outcome, not a latency threshold).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

BOUNDARY = "slowclientboundary"


@dataclass
class SlowFigures:
    """What happened, for the report (latencies in seconds)."""

    slow_uploads: int
    slow_interval_s: float
    slow_open_at_end: int  # slow uploads the server had not closed when the searches ended
    searches: int = 0
    searches_ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "timeout", "status 503", ...
    latency_p50_s: float | None = None
    latency_max_s: float | None = None
    duration_s: float = 0.0
    client_timeout_s: float = 0.0


def _slow_upload(host: str, port: int, interval: float, stop: threading.Event, opened: list) -> None:
    """A POST /v1/search that declares a body and sends one byte of it every `interval` s."""
    head = (
        f"POST /v1/search HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    body = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=image; filename=x.jpg\r\n\r\n".encode()
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError:
        return
    opened.append(sock)
    try:
        sock.sendall(head)
        for i in range(len(body)):
            sock.sendall(body[i : i + 1])
            if stop.wait(interval):
                return
    except OSError:
        pass  # the server closed it: it counts as not open at the end


def _still_open(sock: socket.socket) -> bool:
    """The server has not closed (or answered) this connection."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: answered (an error) before the body ended
        return False
    except BlockingIOError:
        return True  # nothing to read: still waiting for our body
    except OSError:
        return False


def run(
    base_url: str,
    image: bytes,
    *,
    slow: int = 32,
    interval: float = 5.0,
    duration: float = 30.0,
    client_timeout: float = 30.0,
    concurrency: int = 2,
    settle: float | None = None,
) -> SlowFigures:
    """Start `slow` slow uploads, then run ordinary searches for `duration` s; the figures."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stop = threading.Event()
    opened: list[socket.socket] = []
    threads = [
        threading.Thread(target=_slow_upload, args=(host, port, interval, stop, opened), daemon=True)
        for _ in range(slow)
    ]
    for t in threads:
        t.start()
    time.sleep(interval + 1 if settle is None else settle)  # every slow upload has its head and a byte in

    figures = SlowFigures(slow, interval, 0, client_timeout_s=client_timeout)
    latencies: list[float] = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def searcher() -> None:
        while time.monotonic() - t0 < duration:
            start = time.monotonic()
            try:
                r = requests.post(
                    f"{base_url}/v1/search",
                    params={"k": 3},
                    files={"image": ("query.jpg", image, "image/jpeg")},
                    timeout=client_timeout,
                )
                outcome = (
                    "ok" if r.status_code == 200 and r.json().get("results") else f"status {r.status_code}"
                )
            except requests.Timeout:
                outcome = "timeout"
            except requests.RequestException as e:
                outcome = type(e).__name__
            with lock:
                figures.searches += 1
                if outcome == "ok":
                    figures.searches_ok += 1
                    latencies.append(time.monotonic() - start)
                else:
                    figures.failures[outcome] = figures.failures.get(outcome, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(searcher)
    figures.duration_s = round(time.monotonic() - t0, 1)
    figures.slow_open_at_end = sum(_still_open(s) for s in list(opened))
    stop.set()
    for s in opened:
        s.close()
    for t in threads:
        t.join(timeout=5)
    if latencies:
        figures.latency_p50_s = round(statistics.median(latencies), 3)
        figures.latency_max_s = round(max(latencies), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("image", type=Path, help="a JPEG to search with")
    parser.add_argument("--slow", type=int, default=32, help="slow uploads in flight")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between their bytes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of ordinary searches")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per search")
    parser.add_argument("--concurrency", type=int, default=2, help="ordinary searches at a time")
    parser.add_argument("--record", type=Path, help="add the figures to this JSON file (bench/results/...)")
    parser.add_argument("--label", default="run", help="their key in that file, e.g. before / after")
    args = parser.parse_args()
    figures = run(
        args.base_url.rstrip("/"),
        args.image.read_bytes(),
        slow=args.slow,
        interval=args.interval,
        duration=args.duration,
        client_timeout=args.timeout,
        concurrency=args.concurrency,
    )
    print(json.dumps(asdict(figures), indent=2))
    if args.record:
        record(args.record, args.label, asdict(figures))


def record(path: Path, label: str, figures: dict) -> None:
    """Add `figures` under `label` to a results file, with the date, the machine and the command."""
    import datetime
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench._common import machine

    results = json.loads(path.read_text()) if path.exists() else {}
    results[label] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "figures": figures,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
