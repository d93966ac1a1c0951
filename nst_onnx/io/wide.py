"""16-bit RGB files for print, written here because Pillow writes 8-bit RGB only (its 16-bit
modes are greyscale): PNG (IHDR, iCCP, pHYs, iTXt, IDAT, IEND; rows with the "up" filter)
and baseline TIFF (one uncompressed strip, little-endian; ICC profile tag 34675, the
resolution in dots per inch, the settings as ImageDescription). Both are plain numpy,
struct and zlib: no dependency for a format this small.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + \
        struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(rgb: np.ndarray, icc: bytes | None = None, dpi: float | None = None,
          text: dict[str, str] | None = None) -> bytes:
    """(H, W, 3) uint16 → a 16-bit RGB PNG."""
    h, w, _ = rgb.shape
    rows = np.ascontiguousarray(rgb, ">u2").view(np.uint8).reshape(h, w * 6)
    up = rows.copy()
    up[1:] -= rows[:-1]  # filter 2 ("up"), modulo 256: smooth pictures compress far better
    body = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))]
    if icc:
        out.append(_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(icc)))
    if dpi:
        ppm = round(dpi / 0.0254)
        out.append(_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)))
    for k, v in (text or {}).items():
        out.append(_chunk(b"iTXt", k.encode("latin-1")[:79] + b"\x00\x00\x00\x00\x00"
                          + str(v).encode()))
    out += [_chunk(b"IDAT", zlib.compress(body.tobytes(), 6)), _chunk(b"IEND", b"")]
    return b"".join(out)


def tiff16(rgb: np.ndarray, icc: bytes | None = None, dpi: float | None = None,
           description: str | None = None) -> bytes:
    """(H, W, 3) uint16 → a baseline 16-bit RGB TIFF."""
    h, w, _ = rgb.shape
    pixels = np.ascontiguousarray(rgb, "<u2").tobytes()
    extra: list[tuple[int, int, bytes]] = []  # (tag, type, value bytes) stored out of line
    tags: list[tuple[int, int, int, bytes]] = []  # (tag, type, count, value or offset bytes)

    def short(tag, v):
        tags.append((tag, 3, 1, struct.pack("<HH", v, 0)))

    def long(tag, v):
        tags.append((tag, 4, 1, struct.pack("<I", v)))

    def blob(tag, kind, count, data):
        extra.append((tag, kind, data))
        tags.append((tag, kind, count, data))
    long(256, w)
    long(257, h)
    blob(258, 3, 3, struct.pack("<HHH", 16, 16, 16))
    short(259, 1)  # no compression
    short(262, 2)  # RGB
    if description:
        d = description.encode("ascii", "backslashreplace") + b"\x00"
        blob(270, 2, len(d), d)
    long(273, 0)  # the strip's offset: filled in below
    short(277, 3)
    long(278, h)
    long(279, len(pixels))
    res = struct.pack("<II", round((dpi or 72) * 100), 100)
    blob(282, 5, 1, res)
    blob(283, 5, 1, res)
    short(284, 1)
    short(296, 2)  # inch
    if icc:
        blob(34675, 7, len(icc), icc)
    tags.sort()
    ifd_size = 2 + 12 * len(tags) + 4
    offset = 8 + ifd_size
    placed, data = {}, b""
    for tag, _, value in extra:  # out-of-line values, word-aligned
        if len(value) > 4:
            placed[tag] = offset + len(data)
            data += value + (b"\x00" if len(value) % 2 else b"")
    strip = offset + len(data)
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        if tag == 273:
            value = struct.pack("<I", strip)
        elif tag in placed:
            value = struct.pack("<I", placed[tag])
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data + pixels
