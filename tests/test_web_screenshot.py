"""scripts/screenshot.py: the README's picture of the page, made from real photos (skips without them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "screenshot.py"
CLOTHING = ROOT.parent / "shared" / "datasets" / "clothing-small"


def test_skips_with_a_clear_message_without_the_datasets(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--datasets",
            str(tmp_path / "absent"),
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("SKIP: ") and "clothing-small" in r.stdout
    assert not (tmp_path / "x.png").exists()


def test_refuses_a_work_folder_inside_the_project(tmp_path):
    if not (CLOTHING / "train").is_dir():
        pytest.skip(f"{CLOTHING} is absent")
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--work", str(ROOT / "tmp-photos"), "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "outside the project" in r.stderr
    assert not (ROOT / "tmp-photos").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_makes_a_small_png_of_a_real_search(tmp_path):
    """The whole script: real train, index and serve on 80 clothing photos, then the page in Chromium."""
    if not (CLOTHING / "train").is_dir() or not Path("/usr/bin/chromium").exists():
        pytest.skip(f"{CLOTHING} or /usr/bin/chromium is absent")
    out = tmp_path / "page.png"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--work",
        str(tmp_path / "work"),
        "--per-class",
        "8",
        "--out",
        str(out),
    ]
    # its own process group: if the test is stopped, the script's server goes with it
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=1700)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert out.stat().st_size < 300_000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width == 960
