"""Real PNG files from zlib and struct only (the worker image has no Pillow)."""

from __future__ import annotations

import struct
import zlib

from comfyui_sim.errors import SimError

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
    return _png(width, height, 2, raw, text, 6)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# ----------------------------------------------------------------------------- pixels

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel (8-bit only)


class PngError(SimError, ValueError):
    """Bytes that are not an 8-bit, non-interlaced PNG (what the simulator can decode)."""


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> bytearray:
    stride = width * bpp
    out = bytearray(stride * height)
    previous = bytearray(stride)
    offset = 0
    for y in range(height):
        kind = raw[offset]
        line = bytearray(raw[offset + 1 : offset + 1 + stride])
        offset += 1 + stride
        if len(line) != stride:
            raise PngError("PNG image data is truncated")
        if kind == 1:
            for x in range(bpp, stride):
                line[x] = (line[x] + line[x - bpp]) & 0xFF
        elif kind == 2:
            for x in range(stride):
                line[x] = (line[x] + previous[x]) & 0xFF
        elif kind == 3:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + ((left + previous[x]) >> 1)) & 0xFF
        elif kind == 4:
            for x in range(stride):
                left = line[x - bpp] if x >= bpp else 0
                up_left = previous[x - bpp] if x >= bpp else 0
                line[x] = (line[x] + _paeth(left, previous[x], up_left)) & 0xFF
        elif kind != 0:
            raise PngError(f"unknown PNG filter type {kind}")
        out[y * stride : (y + 1) * stride] = line
        previous = line
    return out


def decode_png(data: bytes) -> tuple[int, int, bytes, bytes | None]:
    """(width, height, RGB bytes, alpha bytes or None) of an 8-bit non-interlaced PNG.

    Grey images are widened to RGB, as ComfyUI's LoadImage converts to RGB."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("cannot identify image file")
    offset = 8
    header: bytes | None = None
    idat: list[bytes] = []
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = payload
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"IEND":
            break
        offset += 12 + length
    if header is None or len(header) < 13:
        raise PngError("PNG has no IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise PngError(f"unsupported PNG (depth {depth}, colour type {colour})")
    bpp = _CHANNELS[colour]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PngError(f"PNG image data is corrupt: {exc}") from None
    pixels = _unfilter(raw, width, height, bpp)
    if colour == 2:
        return width, height, bytes(pixels), None
    if colour == 6:
        rgb = bytearray(width * height * 3)
        rgb[0::3], rgb[1::3], rgb[2::3] = pixels[0::4], pixels[1::4], pixels[2::4]
        return width, height, bytes(rgb), bytes(pixels[3::4])
    grey = pixels[0::bpp]
    rgb = bytearray(width * height * 3)
    rgb[0::3] = rgb[1::3] = rgb[2::3] = grey
    return width, height, bytes(rgb), bytes(pixels[1::2]) if colour == 4 else None


def encode_png(
    width: int,
    height: int,
    pixels: bytes,
    *,
    alpha: bytes | None = None,
    text: dict[str, str] | None = None,
    level: int = 6,
) -> bytes:
    """An 8-bit RGB (or RGBA, with `alpha`) PNG of raw row-major `pixels`, filter 0."""
    if len(pixels) != width * height * 3:
        raise ValueError("pixels must be width * height * 3 bytes")
    channels = 3
    if alpha is not None:
        rgba = bytearray(width * height * 4)
        rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4] = (
            pixels[0::3],
            pixels[1::3],
            pixels[2::3],
            alpha,
        )
        pixels, channels = bytes(rgba), 4
    stride = width * channels
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    return _png(width, height, 6 if alpha is not None else 2, raw, text, level)


def _png(
    width: int, height: int, colour_type: int, raw: bytes, text: dict[str, str] | None, level: int
) -> bytes:
    """The PNG file of 8-bit filtered scanlines `raw` (colour type 2: RGB, 6: RGBA), with
    `text` as tEXt chunks."""
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header)]
    for key, value in (text or {}).items():
        parts.append(
            _chunk(
                b"tEXt",
                key.encode("latin-1", "replace") + b"\x00" + value.encode("latin-1", "replace"),
            )
        )
    parts.append(_chunk(b"IDAT", zlib.compress(raw, level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
