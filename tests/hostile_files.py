"""Hostile files built in the tests (nothing binary is committed): costly JPEGs, padded PNGs."""

from __future__ import annotations

import io
import struct

from PIL import Image

EOB_RUN_14 = 0xE0  # AC symbol: end-of-band run of 2^14 + (14 extra bits) blocks


def many_scans_jpeg(scans: int, side: int = 64) -> bytes:
    """A valid grey progressive JPEG followed by `scans` extra (empty) AC scans.

    Each extra scan is 16 bytes: its header and one end-of-band run over every block. A decoder still
    walks every block once per scan, so the work grows with scans x blocks while the file stays small:
    100,000 scans over 2048 x 2048 pixels are 1.6 MB and minutes of one core.
    """
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    assert data.endswith(b"\xff\xd9")
    # AC table 1 with one 1-bit code, for the end-of-band run symbol
    dht = b"\xff\xc4" + struct.pack(">H", 20) + b"\x11" + bytes([1] + [0] * 15) + bytes([EOB_RUN_14])
    bits, left = "", ((side + 7) // 8) ** 2
    while left > 0:
        run = max(16384, min(left, 32767))
        bits += "0" + format(run - 16384, "014b")
        left -= run
    bits += "1" * (-len(bits) % 8)
    ecs = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    # SOS: 1 component (id 1), DC table 0 / AC table 1, coefficients 1..63, no successive approximation
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x01, 1, 63, 0) + ecs
    return data[:-2] + dht + scan * scans + b"\xff\xd9"


def padded_png(total: int, color: tuple[int, int, int] = (40, 160, 90)) -> bytes:
    """A small valid PNG followed by zero bytes up to `total` bytes (decoders ignore the padding)."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    png = buf.getvalue()
    assert total >= len(png)
    return png + b"\0" * (total - len(png))


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30), **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", **save)
    return buf.getvalue()
