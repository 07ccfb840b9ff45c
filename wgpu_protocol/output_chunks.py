"""Output files in chunks: how a worker streams a file of any size to the hub.

A chunk frame is b"WGC1" + 4-byte big-endian header length + JSON header (at most
`MAX_CHUNK_HEADER_BYTES`) + up to `MAX_CHUNK_BYTES` of the file, so that a whole chunk frame fits
in `MAX_CHUNK_FRAME_BYTES`, the one frame limit of the worker socket (the text frame limit): the
hub can refuse any larger frame from its header, before buffering it. The header is
`{"job_id", "token", "name", "content_type", "offset", "last"}`; the last chunk also carries
the whole file's `size` and `sha256`, which the hub checks before it keeps the file. Chunks of
one file arrive in order, offsets contiguous. No I/O here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from .messages import MAX_ID_LENGTH, MAX_TEXT_FRAME_BYTES, ProtocolError

CHUNK_MAGIC = b"WGC1"
_PREFIX_BYTES = 8  # magic + header length
MAX_CHUNK_FRAME_BYTES = MAX_TEXT_FRAME_BYTES
# Room for the largest header the limits allow (three 200-character strings, each character
# escaped to at most 12 bytes by json.dumps, plus the numbers and the sha256).
MAX_CHUNK_HEADER_BYTES = 16 * 1024 - _PREFIX_BYTES
MAX_CHUNK_BYTES = MAX_CHUNK_FRAME_BYTES - _PREFIX_BYTES - MAX_CHUNK_HEADER_BYTES
# Outputs larger than this are refused by both sides (MAX_OUTPUT_BYTES overrides the default).
DEFAULT_MAX_OUTPUT_BYTES = 8 << 30
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class OutputChunk:
    job_id: str
    token: int
    name: str
    content_type: str
    offset: int
    data: bytes
    last: bool = False
    size: int = 0  # the whole file's, on the last chunk
    sha256: str = ""  # the whole file's, on the last chunk


def is_chunk_frame(blob: bytes) -> bool:
    return blob[:4] == CHUNK_MAGIC


def encode_chunk(chunk: OutputChunk) -> bytes:
    header: dict[str, object] = {
        "job_id": chunk.job_id,
        "token": chunk.token,
        "name": chunk.name,
        "content_type": chunk.content_type,
        "offset": chunk.offset,
        "last": chunk.last,
    }
    if chunk.last:
        header["size"] = chunk.size
        header["sha256"] = chunk.sha256
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > MAX_CHUNK_HEADER_BYTES:
        raise ProtocolError(f"a chunk header is at most {MAX_CHUNK_HEADER_BYTES} bytes")
    if len(chunk.data) > MAX_CHUNK_BYTES:
        raise ProtocolError(f"a chunk carries at most {MAX_CHUNK_BYTES} bytes", "too_large")
    return CHUNK_MAGIC + struct.pack(">I", len(raw)) + raw + chunk.data


def _text(header: dict[str, object], key: str, limit: int = MAX_ID_LENGTH) -> str:
    value = header.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"chunk.{key} must be a string of at most {limit} characters")
    return value


def _count(header: dict[str, object], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ProtocolError(f"chunk.{key} must be a non-negative integer")
    return value


def decode_chunk(blob: bytes) -> OutputChunk:
    if len(blob) > MAX_CHUNK_FRAME_BYTES:
        raise ProtocolError(
            f"chunk frame of {len(blob)} bytes exceeds {MAX_CHUNK_FRAME_BYTES}", "too_large"
        )
    if len(blob) < _PREFIX_BYTES or blob[:4] != CHUNK_MAGIC:
        raise ProtocolError("binary frame is not an output chunk")
    (length,) = struct.unpack(">I", blob[4:8])
    if length > MAX_CHUNK_HEADER_BYTES or _PREFIX_BYTES + length > len(blob):
        raise ProtocolError("chunk header length is invalid")
    try:
        header = json.loads(blob[_PREFIX_BYTES : _PREFIX_BYTES + length])
    except ValueError:
        raise ProtocolError("chunk header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("chunk header must be an object")
    name = _text(header, "name")
    if not name or "/" in name or "\\" in name or name in {".", ".."} or "\0" in name:
        raise ProtocolError("chunk.name must be a plain file name")
    last = header.get("last", False)
    if not isinstance(last, bool):
        raise ProtocolError("chunk.last must be true or false")
    data = blob[_PREFIX_BYTES + length :]
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError(f"a chunk carries at most {MAX_CHUNK_BYTES} bytes", "too_large")
    size, sha256 = 0, ""
    if last:
        size = _count(header, "size")
        sha256 = _text(header, "sha256", 64)
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise ProtocolError("chunk.sha256 must be a lowercase hex sha256")
    token = header.get("token")
    if isinstance(token, bool) or not isinstance(token, int):
        raise ProtocolError("chunk.token must be an integer")
    return OutputChunk(
        _text(header, "job_id"),
        token,
        name,
        _text(header, "content_type"),
        _count(header, "offset"),
        data,
        last,
        size,
        sha256,
    )
