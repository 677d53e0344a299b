"""Work per hostile image: a progressive JPEG with 100,000 empty scans, decoded with and without the
scan bound (`encoder.preprocess.load_image(max_scans=)`; issue 10, item 9).

    python bench/hostile_decode.py [--scans 100000] [--side 2048] [--out bench/results/hostile_decode.json]

Figures: seconds of one core to decode the hostile file unbounded (what every request and the indexer
paid before the bound) and to refuse it with the bound; the cost of counting its scans; and, for the
worst file the bound still lets through (the largest image at exactly the scan limit), its decode time
next to a standard progressive file of the same size, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import time

from _common import machine, results_path, write_json

from encoder.preprocess import DEFAULT_MAX_SCANS, ImageTooLargeError, jpeg_scan_count, load_image
from tests.support import many_scans_jpeg

DRAFT = 64  # the API decodes queries at the model's input size (draft mode), as here


def seconds(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def refused(data: bytes) -> None:
    try:
        load_image(data, draft_size=DRAFT)
    except ImageTooLargeError:
        return
    raise AssertionError("the hostile file was decoded")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scans", type=int, default=100_000)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--limit-side", type=int, default=8000, help="side of the largest image at the limit")
    ap.add_argument("--out", default=str(results_path("hostile_decode")))
    args = ap.parse_args()

    hostile = many_scans_jpeg(args.scans, side=args.side)
    count = jpeg_scan_count(io.BytesIO(hostile), sys.maxsize)
    print(f"hostile JPEG: {len(hostile):,} bytes, {args.side}x{args.side}, {count:,} scans")
    bounded = min(seconds(lambda: refused(hostile)) for _ in range(5))
    counting = seconds(lambda: jpeg_scan_count(io.BytesIO(hostile), sys.maxsize))
    print(f"bounded: refused in {bounded * 1000:.2f} ms; counting all scans takes {counting * 1000:.0f} ms")
    unbounded = seconds(lambda: load_image(hostile, draft_size=DRAFT, max_scans=sys.maxsize))
    print(f"unbounded: decoded in {unbounded:.1f} s")

    extra = DEFAULT_MAX_SCANS - 6  # the base grey progressive file has 6 scans
    at_limit = many_scans_jpeg(extra, side=args.limit_side)
    standard = many_scans_jpeg(0, side=args.limit_side)
    rounds = [(seconds(lambda: load_image(standard, draft_size=DRAFT)),
               seconds(lambda: load_image(at_limit, draft_size=DRAFT))) for _ in range(3)]  # fmt: skip
    standard_s, at_limit_s = (min(r[i] for r in rounds) for i in range(2))
    print(
        f"{args.limit_side}x{args.limit_side}: 6 scans {standard_s:.3f} s, "
        f"{DEFAULT_MAX_SCANS} scans (the limit) {at_limit_s:.3f} s"
    )
    write_json(
        args.out,
        {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "command": " ".join(["python", *sys.argv]),
            "hostile": {"bytes": len(hostile), "side": args.side, "scans": count},
            "unbounded_decode_s": round(unbounded, 2),
            "bounded_refusal_ms": round(bounded * 1000, 3),
            "count_all_scans_ms": round(counting * 1000, 1),
            "speedup": round(unbounded / bounded),
            "at_limit": {
                "side": args.limit_side,
                "scans": DEFAULT_MAX_SCANS,
                "decode_s": round(at_limit_s, 3),
                "standard_6_scans_decode_s": round(standard_s, 3),
                "ratio": round(at_limit_s / standard_s, 1),
            },
        },
    )


if __name__ == "__main__":
    main()
