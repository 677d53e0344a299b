"""Hostile files: every kind is indexed correctly or skipped with a reason; none stops the job.

The corpus is generated here (nothing binary is committed) and indexed by the real `imgrec index`
command; races (a file deleted, replaced or rewritten while the run goes) use the pluggable
embedder to act between the scan and the read.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from imgrec.cli import cli
from indexer import IndexOptions, open_snapshot, run_index
from indexer.db import LedgerEntry, open_database
from indexer.ingest import IngestLimits, embed_files
from tests.support import (
    assert_same_index,
    full_rebuild,
    imgrec_command,
    index_contents,
    make_inventory,
    many_scans_jpeg,
    write_image,
)

INDEXED = ("indexed", None)
ROOT = os.geteuid() == 0


def picture(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    """An asymmetric RGB picture (so a rotation changes it)."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 3] = (220, 30, 30)
    arr[h // 2 :, w // 3 :] = (30, 30, 220)
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    return Image.fromarray(arr)


def _bytes(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A ~100-byte PNG declaring side x side pixels (10 billion): a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def rotated_with_exif(upright: Image.Image, path: Path) -> None:
    """Store `upright` turned 90 degrees with EXIF orientation 6, which turns it back on display."""
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)


def animated_gif(path: Path, frames: int = 150) -> None:
    first = picture(32, 32, seed=1).quantize(16)
    rest = [picture(32, 32, seed=100 + i).quantize(16) for i in range(frames - 1)]
    first.save(path, save_all=True, append_images=rest, duration=20, loop=0)


def make_corpus(root: Path, outside: Path) -> dict[str, tuple[str, str | None]]:
    """Write one file per hostile kind under `root`; return ledger path -> (outcome, reason part)."""
    good = root / "good"
    make_inventory(good, 6)
    expected: dict[str, tuple[str, str | None]] = {
        f"good/{p.relative_to(good).as_posix()}": INDEXED for p in good.rglob("*.*")
    }
    h = root / "hostile"
    h.mkdir()

    def add(name: str, outcome: tuple[str, str | None], write: Callable[[Path], object]) -> None:
        write(h / name)
        expected[f"hostile/{name}"] = outcome

    add("zero-byte.jpg", ("skipped", "empty file"), lambda p: p.write_bytes(b""))
    full_jpeg = _bytes(picture(), "JPEG")
    full_png = _bytes(picture(), "PNG")
    add(
        "truncated.jpg",
        ("skipped", "cannot decode"),
        lambda p: p.write_bytes(full_jpeg[: len(full_jpeg) // 2]),
    )
    add(
        "truncated.png", ("skipped", "cannot decode"), lambda p: p.write_bytes(full_png[: len(full_png) // 2])
    )
    add("random-bytes.jpg", ("skipped", "not a recognised image"), lambda p: p.write_bytes(os.urandom(5000)))
    add("notes.txt", ("skipped", "not an image file extension"), lambda p: p.write_text("price list\n"))
    add("text-named.png", ("skipped", "not a recognised image"), lambda p: p.write_text("not a picture\n"))
    add("bomb.png", ("skipped", "decompression bomb"), lambda p: p.write_bytes(bomb_png()))
    add("over-pixel-limit.png", ("skipped", "over the limit"), lambda p: Image.new("1", (8200, 8200)).save(p))
    add("one-pixel.png", INDEXED, lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p))
    add("extreme-aspect.png", INDEXED, lambda p: picture(10_000, 2).save(p))
    grey = np.asarray(picture().convert("L"))
    add("sixteen-bit.png", INDEXED, lambda p: Image.fromarray(grey.astype(np.uint16) * 257).save(p))
    add("eight-bit-twin.png", INDEXED, lambda p: Image.fromarray(grey).save(p))
    add("cmyk.jpg", INDEXED, lambda p: picture().convert("CMYK").save(p))
    add("grey.jpg", INDEXED, lambda p: picture().convert("L").save(p))

    def palette_alpha(p: Path) -> None:
        img = picture().quantize(8)
        img.save(p, transparency=0)

    add("palette-transparent.png", INDEXED, palette_alpha)
    add("la.png", INDEXED, lambda p: picture().convert("LA").save(p))
    add("rgba.webp", INDEXED, lambda p: picture().convert("RGBA").save(p))
    add("bitmap.bmp", INDEXED, lambda p: picture().save(p))
    add("scan.tiff", INDEXED, lambda p: picture().save(p))
    add("png-named.jpg", INDEXED, lambda p: p.write_bytes(full_png))
    add("UPPER.JPG", INDEXED, lambda p: p.write_bytes(full_jpeg))
    add("animated.gif", INDEXED, animated_gif)
    add("exif-rotated.png", INDEXED, lambda p: rotated_with_exif(picture(), p))
    add("upright.png", INDEXED, lambda p: picture().save(p))
    add("exif-rotated.jpg", INDEXED, lambda p: rotated_with_exif(picture(), p))
    add("upright.jpg", INDEXED, lambda p: picture().save(p, quality=95))
    add("progressive.jpg", INDEXED, lambda p: picture().save(p, progressive=True))
    add("many-scans.jpg", ("skipped", "more than 100 scans"), lambda p: p.write_bytes(many_scans_jpeg(3000)))

    def unreadable(p: Path) -> None:
        p.write_bytes(full_jpeg)
        p.chmod(0)

    # root reads any file whatever its mode: there the honest expectation is "indexed"
    add("unreadable.jpg", INDEXED if ROOT else ("failed", "permission denied"), unreadable)
    add("symlink-loop.jpg", ("skipped", "cannot stat"), lambda p: os.symlink(p.name, p))
    add("dangling-link.jpg", ("skipped", "cannot stat"), lambda p: os.symlink("nowhere.jpg", p))
    outside.mkdir(exist_ok=True)
    write_image(outside / "secret.jpg", seed=7)
    add(
        "outside-link.jpg",
        ("skipped", "outside the inventory"),
        lambda p: os.symlink(outside / "secret.jpg", p),
    )
    add("fifo.jpg", ("skipped", "not a regular file"), os.mkfifo)
    # a folder named like an image is a folder: its images are indexed under its name
    write_image(h / "folder.jpg" / "inside.png", seed=9)
    expected["hostile/folder.jpg/inside.png"] = INDEXED
    long_name = "long-" + "x" * 240 + ".jpg"
    add(long_name, INDEXED, lambda p: p.write_bytes(full_jpeg))
    with open(os.path.join(os.fsencode(h), b"caf\xe9-latin1.jpg"), "wb") as f:
        f.write(full_jpeg)
    expected["hostile/caf\\xe9-latin1.jpg"] = ("skipped", "not valid UTF-8")
    return expected


def ledger_of(index: Path) -> dict[str, tuple[str, str | None]]:
    engine = open_database(index, migrate=False)
    try:
        with Session(engine) as session:
            return {e.path: (e.state, e.reason) for e in session.scalars(select(LedgerEntry))}
    finally:
        engine.dispose()


def test_hostile_corpus(tmp_path, model):
    inventory = tmp_path / "inventory"
    expected = make_corpus(inventory, tmp_path / "outside")
    index = tmp_path / "index"
    cmd = imgrec_command() + ["index", "--inventory", str(inventory), "--model", str(model)]
    cmd += ["--index", str(index), "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)

    ledger = ledger_of(index)
    live = index_contents(index)  # opens verified: FAISS and SQLite agree
    outcomes = {}
    for path, (outcome, reason) in expected.items():
        state, why = ledger.get(path, ("missing", None))
        got = "indexed" if state == "embedded" and path in live else state
        outcomes[path[:40]] = got
        assert got == outcome, f"{path}: {state} ({why}), expected {outcome}"
        if reason:
            assert reason in (why or ""), f"{path}: reason {why!r} lacks {reason!r}"
    print("\nhostile outcomes:", json.dumps(outcomes, indent=1))
    n_indexed = sum(o == INDEXED for o in expected.values())
    assert summary["added"] == n_indexed == len(live)
    assert summary["skipped"] == sum(o[0] == "skipped" for o in expected.values())
    if ROOT:
        print("running as root: permissions do not stop root, so unreadable.jpg is indexed")

    # decoded correctly: upright, first frame, 16-bit scaled
    snap = open_snapshot(index, mmap=False)
    try:
        vec = {snap.items([i])[i].path: snap.vector(i) for i in snap.live_ids().tolist()}
        info = {snap.items([i])[i].path: snap.items([i])[i] for i in snap.live_ids().tolist()}
    finally:
        snap.close()
    np.testing.assert_allclose(vec["hostile/exif-rotated.png"], vec["hostile/upright.png"], atol=1e-5)
    assert (info["hostile/exif-rotated.png"].width, info["hostile/exif-rotated.png"].height) == (48, 32)
    rotated_jpg = vec["hostile/exif-rotated.jpg"]
    assert rotated_jpg @ vec["hostile/upright.jpg"] > 0.99  # JPEG re-encoding differs a little
    np.testing.assert_allclose(vec["hostile/sixteen-bit.png"], vec["hostile/eight-bit-twin.png"], atol=1e-5)

    # a second run decodes nothing and publishes nothing: every outcome is remembered
    again = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout)
    assert again["decoded"] == 0 and again["published"] == [], again
    assert again["unchanged"] == n_indexed

    status = CliRunner().invoke(cli, ["status", str(index), "--limit", "100"])
    assert status.exit_code == 0
    for path, (outcome, reason) in expected.items():
        if outcome != "indexed":
            assert f"{path}: " in status.output and reason in status.output, f"{path} missing from status"


def test_first_frame_of_an_animation_only(tmp_path, model):
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    animated_gif(inventory / "animated.gif", frames=300)
    with Image.open(inventory / "animated.gif") as gif:
        assert gif.n_frames == 300
        gif.convert("RGB").save(inventory / "first-frame.png")
    run_index(inventory, model, tmp_path / "index")
    got = index_contents(tmp_path / "index")
    np.testing.assert_allclose(got["animated.gif"], got["first-frame.png"], atol=1e-5)


def between_scan_and_read(act: Callable[[], None]) -> Callable:
    """An embedder that does `act` after the scan and plan, before any file is read."""

    def embedder(files, encoder, **kw):  # noqa: ANN001, ANN003
        act()
        yield from embed_files(files, encoder, **kw)

    return embedder


def test_file_deleted_between_scan_and_read(tmp_path, model):
    inventory = tmp_path / "inventory"
    paths = make_inventory(inventory, 8)
    victim = paths[3]
    summary = run_index(inventory, model, tmp_path / "index", embedder=between_scan_and_read(victim.unlink))
    rel = victim.relative_to(inventory).as_posix()
    assert ledger_of(tmp_path / "index")[rel] == ("failed", "file disappeared before it could be read")
    assert summary.added == 7 and summary.failed == 1
    run_index(inventory, model, tmp_path / "index")  # the next run sees the file gone
    assert ledger_of(tmp_path / "index")[rel][0] == "deleted"
    assert_same_index(index_contents(tmp_path / "index"), full_rebuild(inventory, model, tmp_path / "ref"))


def test_file_replaced_by_a_fifo_between_scan_and_read(tmp_path, model):
    inventory = tmp_path / "inventory"
    paths = make_inventory(inventory, 4)
    victim = paths[1]

    def swap() -> None:
        victim.unlink()
        os.mkfifo(victim)

    run_index(inventory, model, tmp_path / "index", embedder=between_scan_and_read(swap))  # must not block
    rel = victim.relative_to(inventory).as_posix()
    assert ledger_of(tmp_path / "index")[rel] == ("skipped", "not a regular file")
    assert len(index_contents(tmp_path / "index")) == 3


def test_file_rewritten_between_scan_and_read_is_indexed_as_read(tmp_path, model):
    inventory = tmp_path / "inventory"
    paths = make_inventory(inventory, 6)
    victim = paths[2]
    index = tmp_path / "index"
    rewrite = between_scan_and_read(lambda: write_image(victim, seed=999, size=40))
    run_index(inventory, model, index, embedder=rewrite)
    assert_same_index(index_contents(index), full_rebuild(inventory, model, tmp_path / "ref"))
    assert run_index(inventory, model, index).decoded == 0  # the ledger holds the stat of what was read


def test_files_rewritten_during_the_run(tmp_path, model):
    """A writer rewrites files (truncate, then write) all through the run; the next run converges."""
    inventory = tmp_path / "inventory"
    paths = make_inventory(inventory, 120)
    victims = paths[::10]
    stop = threading.Event()

    def writer() -> None:
        seed = 1000
        while not stop.is_set():
            for p in victims:
                with open(p, "wb") as f:  # truncates first: readers may see a partial file
                    f.write(b"")
                    f.flush()
                    f.write(_bytes(picture(seed=seed), "PNG"))
                seed += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        summary = run_index(
            inventory, model, tmp_path / "index", IndexOptions(batch_size=4, checkpoint_every=8)
        )
    finally:
        stop.set()
        t.join()
    print(f"\nrewritten during the run: {summary.problems}")
    assert summary.added + summary.skipped + summary.failed == 120
    index_contents(tmp_path / "index")  # consistent
    run_index(inventory, model, tmp_path / "index")
    assert_same_index(index_contents(tmp_path / "index"), full_rebuild(inventory, model, tmp_path / "ref"))


def test_file_over_the_size_limit_is_skipped_unread(tmp_path, model):
    inventory = tmp_path / "inventory"
    make_inventory(inventory, 3)
    big = inventory / "big.png"
    picture(400, 400).save(big)
    limits = IngestLimits(max_file_bytes=20_000)
    summary = run_index(inventory, model, tmp_path / "index", IndexOptions(limits=limits))
    state, reason = ledger_of(tmp_path / "index")["big.png"]
    assert state == "skipped" and "over 20,000" in reason
    assert summary.decoded == 3


def test_permission_denied_fails_and_is_retried(tmp_path, model, monkeypatch):
    """An unreadable file is `failed` (retried each run). Root reads any file, so there the open is
    made to fail the way it fails for other users."""
    inventory = tmp_path / "inventory"
    paths = make_inventory(inventory, 3)
    victim = paths[0]
    victim.chmod(0)
    if ROOT:
        real_open = os.open

        def refuse(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if os.fspath(path) == str(victim):
                raise PermissionError(13, "Permission denied", str(victim))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("indexer.ingest.os.open", refuse)
    summary = run_index(inventory, model, tmp_path / "index")
    rel = victim.relative_to(inventory).as_posix()
    assert ledger_of(tmp_path / "index")[rel] == ("failed", "permission denied")
    assert summary.failed == 1 and summary.added == 2
    monkeypatch.undo()
    victim.chmod(0o644)
    assert run_index(inventory, model, tmp_path / "index").added == 1  # retried, now readable
    assert_same_index(index_contents(tmp_path / "index"), full_rebuild(inventory, model, tmp_path / "ref"))


def test_jpeg_scans_are_counted_by_walking_the_segments():
    """Standard progressive scripts are far below the limit; a hostile file is refused before decoding."""
    from encoder.preprocess import DEFAULT_MAX_SCANS, ImageTooLargeError, jpeg_scan_count, load_image

    def scans(img: Image.Image, **save: object) -> int:
        buf = io.BytesIO()
        img.save(buf, "JPEG", **save)
        buf.seek(7)
        count = jpeg_scan_count(buf, DEFAULT_MAX_SCANS)
        assert buf.tell() == 7  # the position is kept
        return count

    assert scans(picture()) == 1
    assert scans(picture(), restart_marker_blocks=1) == 1  # RSTn inside the scan
    assert [scans(picture().convert(m), progressive=True) for m in ("L", "RGB", "CMYK")] == [6, 10, 18]
    assert jpeg_scan_count(io.BytesIO(_bytes(picture(), "PNG")), 10) == 0
    # a marker split across read chunks, fill bytes before it, garbage between segments
    base = many_scans_jpeg(0, side=16)
    padded = base[:-2] + b"\x00" * 5000 + b"\xff" * 4095 + base[-2:]
    assert jpeg_scan_count(io.BytesIO(padded), 100) == 6
    assert jpeg_scan_count(io.BytesIO(many_scans_jpeg(DEFAULT_MAX_SCANS - 6)), DEFAULT_MAX_SCANS) == 100
    load_image(many_scans_jpeg(DEFAULT_MAX_SCANS - 6))  # at the limit: decoded
    with pytest.raises(ImageTooLargeError, match="more than 100 scans"):
        load_image(many_scans_jpeg(DEFAULT_MAX_SCANS - 5))
    assert jpeg_scan_count(io.BytesIO(many_scans_jpeg(5000)), 100) == 101  # stops once past the limit
