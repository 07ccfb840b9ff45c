"""Real PNG files from zlib and struct only (the worker image has no Pillow)."""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def rgb_of(color: int) -> tuple[int, int, int]:
    """ComfyUI's `color` widget: 0xRRGGBB."""
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


def make_png(
    width: int,
    height: int,
    rgb: tuple[int, int, int],
    *,
    gradient: bool = False,
    text: dict[str, str] | None = None,
) -> bytes:
    """An 8-bit RGB PNG of `width` x `height`: solid `rgb`, or fading to black left to right."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if gradient:
        row = bytearray()
        for x in range(width):
            scale = 1.0 - x / max(1, width)
            row += bytes(int(c * scale) for c in rgb)
        line = b"\x00" + bytes(row)
    else:
        line = b"\x00" + bytes(rgb) * width
    raw = line * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        parts.append(
            _chunk(
                b"tEXt",
                key.encode("latin-1", "replace") + b"\x00" + value.encode("latin-1", "replace"),
            )
        )
    parts.append(_chunk(b"IDAT", zlib.compress(raw, 6)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
