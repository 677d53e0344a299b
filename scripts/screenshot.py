"""The README's picture of the web page: a real search on real clothing photos, in real Chromium.

    python scripts/screenshot.py                       # writes docs/img/web-page.png
    python scripts/screenshot.py --per-class 0         # the whole clothing-small/train (slower to build)

It builds an index with the real commands and the default model, outside the project (`--work`, default
/tmp/imgrec-screenshot): copies the first `--per-class` photos of each class of
../shared/datasets/clothing-small/train into an inventory there, writes a small generated catalog for them
(`products.csv`: a product per 3 photos of a class, titled by the class, with a price and a colour), then
`imgrec train`, `imgrec index --catalog` and `imgrec serve`; opens the page in headless Chromium (Playwright),
searches with one validation photo (product cards, the filter bar) and saves the page as a palette PNG (under
300 KB). Re-runs reuse the work folder's model and index. Exits 0 with a
SKIP line when the datasets or Chromium are absent.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "docs" / "img" / "web-page.png"
MAX_BYTES = 300_000
QUERY = "validation/shirt"  # the query: the first photo (by name) of this folder
VIEWPORT = {"width": 960, "height": 700}  # the page grows to its content (full_page)
K = 12
PHOTOS_PER_PRODUCT = 3
COLOURS = ["black", "white", "navy", "red", "green", "beige", "grey"]


def make_catalog(inventory: Path) -> Path:
    """A generated catalog beside the inventory: a product per PHOTOS_PER_PRODUCT photos of a class (titled by
    the class), its price and colour drawn from a fixed pattern (the same every run)."""
    out = inventory.parent / "products.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image", "title", "url", "price", "color"])
        for c, folder in enumerate(sorted(p for p in inventory.iterdir() if p.is_dir())):
            for n, photo in enumerate(sorted(folder.glob("*.jpg"))):
                p = n // PHOTOS_PER_PRODUCT
                sku = f"{folder.name.upper()}-{p + 1:02d}"
                price = 9.9 + 5 * ((7 * p + 3 * c) % 12)
                title = f"{folder.name.replace('-', ' ').capitalize()} no. {p + 1}"
                w.writerow([sku, f"{folder.name}/{photo.name}", title, f"https://shop.example/{sku}",
                            f"{price:.2f}", COLOURS[(p + c) % len(COLOURS)]])  # fmt: skip
    return out


def imgrec(*args: str) -> None:
    """Run an imgrec command of this venv, echoing it."""
    cmd = [str(Path(sys.executable).with_name("imgrec")), *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_inventory(clothing: Path, work: Path, per_class: int) -> Path:
    """The first `per_class` photos (by name) of each class, copied under `work` (0: all of them)."""
    inventory = work / "inventory"
    for folder in sorted(p for p in (clothing / "train").iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        for photo in photos[:per_class] if per_class else photos:
            target = inventory / folder.name / photo.name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo, target)
    return inventory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base_url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    """Until /readyz answers 200 (the index is loaded); fails if the server exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"imgrec serve exited with {server.returncode}")
        try:
            if requests.get(base_url + "/readyz", timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s")


def shoot(base_url: str, query: Path, out: Path) -> int:
    """Search with `query` on the page and save it to `out`; its size in bytes."""
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.goto(f"{base_url}/?k={K}")
        page.wait_for_selector("#label[data-loaded]", state="attached")
        page.set_input_files("#file", str(query))
        expect(page.locator("#grid li.result")).to_have_count(K, timeout=120_000)
        # lazy images below the fold too: the screenshot is of the whole page
        page.eval_on_selector_all("#grid img", "imgs => imgs.forEach(i => { i.loading = 'eager'; })")
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#grid img, #query-image'))"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        png = page.screenshot(full_page=True)
        browser.close()
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    for colors in (256, 192, 128, 64):
        buf = io.BytesIO()
        shot.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, "PNG", optimize=True
        )
        if buf.tell() < MAX_BYTES:
            break
    if buf.tell() >= MAX_BYTES:
        raise SystemExit(f"the screenshot is {buf.tell():,} bytes even at 64 colours (limit {MAX_BYTES:,})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return buf.tell()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/imgrec-screenshot"), help="model, index, inventory"
    )
    ap.add_argument("--per-class", type=int, default=30, help="photos per class in the inventory (0: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--datasets", type=Path, default=DATASETS, help="the shared datasets folder")
    args = ap.parse_args()
    clothing = args.datasets / "clothing-small"
    for needed in (clothing / "train", clothing / QUERY, CHROMIUM):
        if not needed.exists():
            print(f"SKIP: {needed} is absent (see ../shared/datasets/README.md; Chromium: Debian `chromium`)")
            return 0
    work = args.work.resolve()
    if work == ROOT or ROOT in work.parents:
        raise SystemExit(f"--work must be outside the project ({ROOT}): the photos are never copied into it")
    inventory = make_inventory(clothing, work, args.per_class)
    model, index = work / "model", work / "index"
    if not (model / "config.json").exists():
        imgrec("train", "--images", str(inventory), "--out", str(model))
    products = make_catalog(inventory)
    imgrec("index", "--inventory", str(inventory), "--model", str(model), "--index", str(index),
           "--catalog", str(products))  # fmt: skip

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("imgrec")), "serve", "--index", str(index), "--port", str(port)]
    print("$", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd)
    try:
        wait_ready(base_url, server)
        query = sorted((clothing / QUERY).glob("*.jpg"))[0]
        size = shoot(base_url, query, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out} ({size:,} bytes): a search with {query.relative_to(clothing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
