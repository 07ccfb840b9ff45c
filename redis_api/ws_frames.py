"""Unmasked, uncompressed WebSocket text frames (RFC 6455 5.2), so that the hub can put several
frames in one transport write: the `ack` and the next `job` leave in one syscall instead of two."""

from __future__ import annotations

import struct

_TEXT = 0x81  # FIN + text opcode


def text_frame(text: str) -> bytes:
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _TEXT, n)
    elif n < 65536:
        header = struct.pack("!BBH", _TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _TEXT, 127, n)
    return header + payload


def text_frames(*texts: str) -> bytes:
    return b"".join(text_frame(text) for text in texts)
