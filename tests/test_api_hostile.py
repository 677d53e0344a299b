"""Hostile requests and a hostile inventory against real servers (waitress, and gunicorn where the
production server matters): symlink races, awkward file names, unbounded search knobs, streamed
uploads past the limit, too many multipart parts, costly JPEGs, oversized URLs and headers.
(Issue 10, items 2, 3, 4, 8, 9 and 11; docs/api.md, "Limits and hostile input".)
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import requests

from indexer import IndexOptions, open_snapshot, run_index
from tests.support import Api, jpeg_bytes, make_inventory, many_scans_jpeg, padded_png, write_image

BODY_LIMIT = 2 * 1024 * 1024  # MAX_CONTENT_LENGTH of the servers here
ERROR_KEYS = {"error", "message"}

# Every name here can be indexed (valid UTF-8, an image extension), so every one must be servable.
AWKWARD_NAMES = [
    "new\nline.jpg", "carriage\rreturn.jpg", 'double"quote.jpg', "back\\slash.jpg",
    "caf\\xe9-escaped-looking.jpg", "café ünïcode.jpg", "日本語.png", "e\u0301-decomposed.jpg",
    "semi;colon=equals.jpg", "percent%20sign.jpg", "tab\tname.jpg", "emoji \U0001f642.png",
    "'single quotes'.jpg", " leading space.jpg", "comma,name.jpg", "\x01control.jpg", "del\x7f.jpg",
    "long-" + "x" * 240 + ".jpg", "plain-name.jpg",
]  # fmt: skip


@dataclass(frozen=True)
class Hostile:
    """An inventory with awkward names and symlinks, indexed; a file with the same names outside it."""

    inventory: Path
    index: Path
    outside: Path
    ids: dict[str, int]  # catalog path -> item id


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, model: Path) -> Hostile:
    root = tmp_path_factory.mktemp("hostile-api")
    inventory = root / "inventory"
    make_inventory(inventory, 12)
    for n, name in enumerate(AWKWARD_NAMES):
        write_image(inventory / "names" / name, seed=100 + n)
    links = inventory / "links"
    links.mkdir()
    os.symlink("../names/plain-name.jpg", links / "relative.jpg")  # stays inside: indexed
    os.symlink(inventory / "names" / "plain-name.jpg", links / "absolute.jpg")
    os.symlink("relative.jpg", links / "chain.jpg")  # a link to a link
    write_image(inventory / "race" / "victim.jpg", seed=300)
    write_image(inventory / "racedir" / "victim.jpg", seed=301)
    outside = root / "outside"
    write_image(outside / "victim.jpg", seed=999, size=40)  # what must never be served
    index = root / "index"
    run_index(inventory, model, index)
    snap = open_snapshot(index, mmap=False)
    try:
        ids = {info.path: info.id for info in snap.items(snap.live_ids().tolist()).values()}
    finally:
        snap.close()
    assert len(ids) == 12 + len(AWKWARD_NAMES) + 3 + 2, sorted(ids)
    return Hostile(inventory, index, outside, ids)


@pytest.fixture(scope="module")
def hostile_api(hostile: Hostile, make_app, serve) -> Iterator[Api]:
    """The API on the hostile index, served by waitress."""
    app = make_app(INDEX=str(hostile.index), RELOAD_INTERVAL=0, MAX_CONTENT_LENGTH=BODY_LIMIT)
    with Api(serve(app)) as api:
        yield api


def assert_error(response, status: int) -> dict:
    """The JSON error of a requests or a test-client response."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert set(body) >= ERROR_KEYS and body["message"], body
    return body


# --- raw HTTP: exactly the bytes a hostile client sends -----------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def is_json_error(self) -> bool:
        if not self.headers.get("content-type", "").startswith("application/json"):
            return False
        return set(json.loads(self.body)) >= ERROR_KEYS

    def json(self) -> dict:
        return json.loads(self.body)


def raw_request(base: str, head: bytes, body: Iterable[bytes] = ()) -> Reply:
    """Send `head` and `body` pieces as they are, then read the answer (the server may answer, and stop
    reading, before the body is all sent)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        try:
            sock.sendall(head)
            for piece in body:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early: the answer is still there to read
        response = http.client.HTTPResponse(sock)
        response.begin()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    """`data` as HTTP/1.1 chunks, and the last chunk."""
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary") -> bytes:
    """A multipart/form-data body of (field, file name or None, bytes) parts."""
    out = io.BytesIO()
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# --- gunicorn, the production server ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn_url(hostile: Hostile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn with search_api.gunicorn_conf (one gthread worker) on the hostile index."""
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    port = free_port()
    env = {
        **os.environ,
        "IMGREC_INDEX": str(hostile.index),
        "IMGREC_MAX_CONTENT_LENGTH": str(BODY_LIMIT),
        "IMGREC_RELOAD_INTERVAL": "0",
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", "python:search_api.gunicorn_conf", "--workers", "1",
           "--bind", f"127.0.0.1:{port}", "search_api:create_app()"]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                try:
                    if requests.get(base + "/readyz", timeout=10).status_code == 200:
                        break
                except requests.RequestException:  # refused, or accepted while the worker still loads
                    pass
                assert time.monotonic() < deadline, "gunicorn never became ready"
                time.sleep(0.2)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


# --- item 2: a symlink swapped in while an image is served ------------------------------------


def swapper(victim: Path, outside_target: Path, stop: threading.Event, swaps: Counter) -> None:
    """Replace `victim` by a symlink to `outside_target` and back, as fast as possible, atomically."""
    original = victim.read_bytes()
    link, copy = victim.with_name(".swap-link"), victim.with_name(".swap-copy")
    while not stop.is_set():
        os.symlink(outside_target, link)
        os.replace(link, victim)  # now a symlink out of the inventory
        copy.write_bytes(original)
        os.replace(copy, victim)  # the real file again
        swaps["file"] += 1


def dir_swapper(folder: Path, outside_dir: Path, stop: threading.Event, swaps: Counter) -> None:
    """Replace a folder of the inventory by a symlink to a folder outside it, and back."""
    parked = folder.with_name(folder.name + ".parked")
    while not stop.is_set():
        os.rename(folder, parked)
        os.symlink(outside_dir, folder)
        os.unlink(folder)
        os.rename(parked, folder)
        swaps["dir"] += 1


def test_symlink_race_never_serves_a_file_outside_the_inventory(hostile, hostile_api):
    outside_image = (hostile.outside / "victim.jpg").read_bytes()
    victims = [hostile.ids["race/victim.jpg"], hostile.ids["racedir/victim.jpg"]]
    inside = {i: hostile_api.get(f"/v1/items/{i}/image").content for i in victims}
    inside_thumbs = {i: hostile_api.get(f"/v1/items/{i}/thumbnail").content for i in victims}
    stop, swaps = threading.Event(), Counter()
    threads = [
        threading.Thread(
            target=swapper,
            args=(hostile.inventory / "race" / "victim.jpg", hostile.outside / "victim.jpg", stop, swaps),
        ),
        threading.Thread(
            target=dir_swapper, args=(hostile.inventory / "racedir", hostile.outside, stop, swaps)
        ),
    ]
    for t in threads:
        t.start()

    def client(n: int) -> Counter:
        seen: Counter = Counter()
        with Api(hostile_api.base_url) as api:
            for k in range(n):
                item = victims[k % 2]
                kind = "thumbnail" if k % 4 >= 2 else "image"
                r = api.get(f"/v1/items/{item}/{kind}")
                if r.status_code == 200:
                    expected = inside[item] if kind == "image" else inside_thumbs[item]
                    seen["outside" if r.content == outside_image or r.content != expected else "inside"] += 1
                elif r.status_code == 404 and r.json()["error"] == "not_found":
                    seen["refused"] += 1
                else:
                    seen[f"status {r.status_code}"] += 1
        return seen

    try:
        with ThreadPoolExecutor(4) as pool:
            seen = sum(pool.map(client, [600] * 4), Counter())
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"\nsymlink race: {sum(seen.values())} GETs, {dict(seen)}, swaps {dict(swaps)}")
    assert seen["outside"] == 0, seen
    assert seen["inside"] + seen["refused"] == sum(seen.values()), seen  # nothing else, no 500
    assert seen["inside"] > 0  # the real file kept being served between swaps
    for item in victims:  # and after the race, as before it
        assert hostile_api.get(f"/v1/items/{item}/image").content == inside[item]


def test_symlinks_that_stay_inside_the_inventory_are_served(hostile, hostile_api):
    target = (hostile.inventory / "names" / "plain-name.jpg").read_bytes()
    for path in ("links/relative.jpg", "links/absolute.jpg", "links/chain.jpg"):
        r = hostile_api.get(f"/v1/items/{hostile.ids[path]}/image")
        assert r.status_code == 200 and r.content == target, path
        assert hostile_api.get(f"/v1/items/{hostile.ids[path]}/thumbnail").status_code == 200


def test_image_from_a_descriptor_keeps_conditional_and_range_requests(hostile, hostile_api):
    item = hostile.ids["names/plain-name.jpg"]
    data = (hostile.inventory / "names" / "plain-name.jpg").read_bytes()
    full = hostile_api.get(f"/v1/items/{item}/image")
    assert full.content == data and int(full.headers["Content-Length"]) == len(data)
    assert full.headers["Accept-Ranges"] == "bytes" and full.headers["ETag"]
    again = hostile_api.get(f"/v1/items/{item}/image", headers={"If-None-Match": full.headers["ETag"]})
    assert again.status_code == 304 and not again.content
    part = hostile_api.get(f"/v1/items/{item}/image", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert_error(
        hostile_api.get(f"/v1/items/{item}/image", headers={"Range": f"bytes={len(data) + 5}-"}), 416
    )


def test_open_beneath_on_real_files(tmp_path):
    from search_api.files import open_beneath

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "b" / "img.jpg").write_bytes(b"inside")
    (outside / "secret.jpg").write_bytes(b"outside")
    links = {
        "a/up.jpg": "b/../b/img.jpg",  # `..` that stays inside
        "a/abs.jpg": str(root / "a" / "b" / "img.jpg"),
        "a/dirlink": "b",  # a folder link inside
        "a/out.jpg": str(outside / "secret.jpg"),
        "a/out-rel.jpg": "../../outside/secret.jpg",
        "a/outdir": str(outside),
        "a/loop.jpg": "loop.jpg",
        "a/dangling.jpg": "nowhere.jpg",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    for i in range(50):  # a chain longer than any sane inventory needs
        os.symlink(f"chain{i + 1}.jpg" if i < 49 else "b/img.jpg", root / "a" / f"chain{i}.jpg")
    os.mkfifo(root / "a" / "fifo.jpg")

    def read(rel: str) -> bytes:
        with os.fdopen(open_beneath(root, rel), "rb") as f:
            return f.read()

    for rel in (
        "a/b/img.jpg",
        "a/up.jpg",
        "a/abs.jpg",
        "a/dirlink/img.jpg",
        "./a//b/img.jpg",
        "a/chain40.jpg",
    ):
        assert read(rel) == b"inside", rel
    refused = ["a/out.jpg", "a/out-rel.jpg", "a/outdir/secret.jpg", "../outside/secret.jpg",
               "a/../../outside/secret.jpg", "/etc/passwd", "a/loop.jpg", "a/chain0.jpg", "a/b",
               "a/fifo.jpg", "a/dangling.jpg", "a/b/img.jpg/x", ""]  # fmt: skip
    for rel in refused:
        with pytest.raises(OSError):
            open_beneath(root, rel)


# --- item 4: every file name that can be indexed can be served --------------------------------


def disposition_names(header: str) -> tuple[str, str | None]:
    """(filename, filename*) of a Content-Disposition header (RFC 6266: a token or a quoted string;
    RFC 5987: UTF-8 percent-encoded)."""
    plain = re.search(r'filename=(?:"((?:[^"\\]|\\.)*)"|([^";\s]+))', header)
    extended = re.search(r"filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]+)", header)
    assert plain, header
    fallback = re.sub(r"\\(.)", r"\1", plain.group(1)) if plain.group(1) is not None else plain.group(2)
    return fallback, unquote(extended.group(1)) if extended else None


@pytest.mark.parametrize("name", AWKWARD_NAMES, ids=[ascii(n)[1:25] for n in AWKWARD_NAMES])
def test_every_indexed_file_name_is_servable(hostile, hostile_api, name):
    item = hostile.ids[f"names/{name}"]
    r = hostile_api.get(f"/v1/items/{item}/image")
    assert r.status_code == 200, r.text[:300]
    assert r.content == (hostile.inventory / "names" / name).read_bytes()
    header = r.headers["Content-Disposition"]
    assert header.isascii() and header.isprintable() and header.startswith("inline;"), header
    fallback, full = disposition_names(header)
    assert fallback.isascii() and fallback.isprintable()
    assert (full or fallback) == name  # the exact name, from filename* when the fallback lost anything
    assert hostile_api.get(f"/v1/items/{item}").json()["path"] == f"names/{name}"
    assert hostile_api.get(f"/v1/items/{item}/thumbnail").status_code == 200


def test_file_names_are_servable_through_gunicorn(hostile, gunicorn_url):
    for name in ("new\nline.jpg", "日本語.png", 'double"quote.jpg'):
        r = requests.get(f"{gunicorn_url}/v1/items/{hostile.ids[f'names/{name}']}/image", timeout=30)
        assert r.status_code == 200 and (disposition_names(r.headers["Content-Disposition"])[1]) == name


# --- item 3: search knobs are bounded ---------------------------------------------------------


@pytest.fixture(scope="module")
def ann_clients(hostile: Hostile, tmp_path_factory, make_app, model) -> dict:
    """The hostile inventory indexed as hnsw and as ivf, each app's test client."""
    root = tmp_path_factory.mktemp("ann")
    clients = {}
    for kind in ("hnsw", "ivf"):
        run_index(hostile.inventory, model, root / kind, IndexOptions(index_type=kind))
        clients[kind] = make_app(INDEX=str(root / kind), RELOAD_INTERVAL=0).test_client()
    return clients


HUGE = [str(2**31 - 1), str(2**31), str(2**63), str(2**64), "1" + "0" * 400]
PAST_BOUNDS = [("hnsw", "ef_search", v) for v in ["4097", *HUGE]] + [
    ("ivf", "nprobe", v) for v in ["65537", *HUGE]
]


@pytest.mark.parametrize(
    ("kind", "knob", "value"), PAST_BOUNDS, ids=[f"{k}-{v[:12]}" for _, k, v in PAST_BOUNDS]
)
def test_search_knobs_past_their_bounds_are_400(ann_clients, kind, knob, value):
    client = ann_clients[kind]
    data = jpeg_bytes((200, 40, 40))
    search = client.post(
        "/v1/search", query_string={knob: value}, data={"image": (io.BytesIO(data), "image")}
    )
    body = assert_error(search, 400)
    assert knob in body["message"]
    assert_error(client.get("/v1/items/1/similar", query_string={knob: value}), 400)
    batch = client.post(
        "/v1/search/batch", query_string={knob: value}, data={"images": (io.BytesIO(data), "images")}
    )
    assert_error(batch, 400)


@pytest.mark.parametrize(("kind", "knob", "top"), [("hnsw", "ef_search", 4096), ("ivf", "nprobe", 65536)])
def test_search_knobs_at_their_bounds_answer(ann_clients, kind, knob, top):
    image = (io.BytesIO(jpeg_bytes((9, 9, 9))), "image")
    r = ann_clients[kind].post("/v1/search", query_string={knob: top, "k": 5}, data={"image": image})
    assert r.status_code == 200 and len(r.json["results"]) == 5, r.text


def test_search_knob_bounds_are_in_the_openapi_document(client):
    spec = client.get("/openapi.json").json
    for path, method in (
        ("/v1/search", "post"),
        ("/v1/search/batch", "post"),
        ("/v1/items/{item_id}/similar", "get"),
    ):
        params = {p["name"]: p["schema"] for p in spec["paths"][path][method]["parameters"]}
        assert (params["nprobe"]["minimum"], params["nprobe"]["maximum"]) == (1, 65536)
        assert (params["ef_search"]["minimum"], params["ef_search"]["maximum"]) == (1, 4096)


# --- item 8: uploads past the limit -----------------------------------------------------------


def test_chunked_upload_over_the_limit_is_413_not_cut(gunicorn_url):
    over = padded_png(BODY_LIMIT + 1024 * 1024)
    raw = raw_request(
        gunicorn_url,
        request_head("POST", "/v1/search", [("Content-Type", "image/png"), ("Transfer-Encoding", "chunked")]),
        chunked(over),
    )
    assert raw.status == 413 and raw.is_json_error, (raw.status, raw.body[:300])
    assert f"{BODY_LIMIT:,}" in raw.json()["message"]
    form = multipart([("image", "big.png", over)])
    head = request_head(
        "POST", "/v1/search",
        [("Content-Type", "multipart/form-data; boundary=hostile-boundary"), ("Transfer-Encoding", "chunked")],
    )  # fmt: skip
    raw = raw_request(gunicorn_url, head, chunked(form))
    assert raw.status == 413 and raw.is_json_error, (raw.status, raw.body[:300])
    assert f"{BODY_LIMIT:,}" in raw.json()["message"]  # the body's limit, not a form limit


def test_chunked_upload_at_the_limit_is_searched(gunicorn_url):
    head = request_head(
        "POST", "/v1/search", [("Content-Type", "image/png"), ("Transfer-Encoding", "chunked")]
    )
    exact = raw_request(gunicorn_url, head, chunked(padded_png(BODY_LIMIT)))
    assert exact.status == 200, exact.body[:300]
    one_more = raw_request(gunicorn_url, head, chunked(padded_png(BODY_LIMIT + 1)))
    assert one_more.status == 413 and one_more.is_json_error


def test_too_many_multipart_parts_says_so(hostile_api, gunicorn_url):
    fields = [(f"note{i}", None, b"x") for i in range(1000)]
    body = multipart([("image", "q.jpg", jpeg_bytes((10, 200, 10)))] + fields)
    assert len(body) < BODY_LIMIT
    headers = {"Content-Type": "multipart/form-data; boundary=hostile-boundary"}
    for base in (hostile_api.base_url, gunicorn_url):
        r = requests.post(f"{base}/v1/search", data=body, headers=headers, timeout=60)
        message = assert_error(r, 413)["message"]
        assert "more than 1,000 multipart parts" in message and "bytes" not in message, message
    fewer = multipart([("image", "q.jpg", jpeg_bytes((10, 200, 10)))] + fields[:999])  # 1,000 parts
    assert (
        requests.post(f"{gunicorn_url}/v1/search", data=fewer, headers=headers, timeout=60).status_code == 200
    )


def test_a_huge_non_file_field_says_so(hostile_api):
    body = multipart([("image", None, b"x" * 600_000)])  # curl -F 'image=<file': a field, not a file
    r = requests.post(
        f"{hostile_api.base_url}/v1/search",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=hostile-boundary"},
        timeout=60,
    )
    assert "without a file name is over 500,000 bytes" in assert_error(r, 413)["message"]


# --- item 9: decoding has a work bound --------------------------------------------------------


def test_jpeg_with_thousands_of_scans_is_422(hostile_api):
    hostile_jpeg = many_scans_jpeg(5000)
    r = hostile_api.post("/v1/search", data=hostile_jpeg, headers={"Content-Type": "image/jpeg"})
    body = assert_error(r, 422)
    assert "more than 100 scans" in body["message"], body
    batch = hostile_api.post(
        "/v1/search/batch",
        files=[("images", ("scans.jpg", hostile_jpeg)), ("images", ("ok.jpg", jpeg_bytes((1, 2, 3))))],
    ).json()
    assert [a["status"] for a in batch["answers"]] == [422, 200]
    progressive = jpeg_bytes((200, 100, 30), size=(300, 200), progressive=True)
    assert hostile_api.post("/v1/search", files={"image": progressive}).status_code == 200


# --- item 11: oversized URLs and headers ------------------------------------------------------


def get_raw(base: str, target: str, headers: list[tuple[str, str]] = ()) -> Reply:
    return raw_request(base, request_head("GET", target, list(headers)))


def test_oversized_url_and_headers_answer_json_on_gunicorn(gunicorn_url):
    ok = get_raw(gunicorn_url, "/healthz?" + "a" * 3000, [(f"X-Fine-{i}", "v" * 100) for i in range(60)])
    assert ok.status == 200
    for reply, status in [
        (get_raw(gunicorn_url, "/healthz?pad=" + "a" * 5000), 414),
        (get_raw(gunicorn_url, "/v1/items/1" + "/x" * 3000), 414),
        (get_raw(gunicorn_url, "/healthz", [("X-Pad", "p" * 5000)]), 431),
        (get_raw(gunicorn_url, "/healthz", [(f"X-Many-{i}", "v") for i in range(150)]), 431),
    ]:
        assert reply.status == status and reply.is_json_error, (reply.status, reply.headers, reply.body[:200])


def test_past_gunicorns_own_limits_the_answer_is_its_html(gunicorn_url):
    """Documented (docs/api.md): gunicorn refuses these before the app sees them, in HTML."""
    for reply, status in [
        (get_raw(gunicorn_url, "/healthz?pad=" + "a" * 9000), 414),
        (get_raw(gunicorn_url, "/healthz", [("X-Pad", "p" * 9000)]), 431),
        (get_raw(gunicorn_url, "/healthz", [(f"X-Many-{i}", "v") for i in range(250)]), 431),
    ]:
        assert reply.status == status and reply.headers["content-type"].startswith("text/html"), reply


def test_oversized_url_and_headers_answer_json_on_waitress(hostile_api):
    base = hostile_api.base_url
    for reply, status in [
        (get_raw(base, "/healthz?pad=" + "a" * 5000), 414),
        (get_raw(base, "/healthz", [("X-Pad", "p" * 5000)]), 431),
        (get_raw(base, "/healthz", [(f"X-Many-{i}", "v") for i in range(150)]), 431),
    ]:
        assert reply.status == status and reply.is_json_error, (reply.status, reply.body[:200])
    past = get_raw(base, "/healthz", [("X-Pad", "p" * 300_000)])  # waitress's own 256 KiB limit
    assert past.status == 431 and past.headers["content-type"].startswith("text/plain")
