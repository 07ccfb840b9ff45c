"""The worker socket's one frame limit: 1 MiB for every frame, text or output chunk (a chunk
frame's header included). A larger frame is refused from its header, before any of its payload
is buffered; the largest chunk frame the protocol allows still passes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct

import pytest

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import get_job, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import MAX_TEXT_FRAME_BYTES, Ack, Completed, ErrorReply, OutputRef
from wgpu_protocol.output_chunks import (
    CHUNK_MAGIC,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_FRAME_BYTES,
    MAX_CHUNK_HEADER_BYTES,
    OutputChunk,
    decode_chunk,
    encode_chunk,
)

pytestmark = pytest.mark.redis

MESSAGE_TOO_BIG = 1009


async def _raw_upgrade(
    hub_url: str, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand, so that a test can send a frame header without its payload."""
    host, port = hub_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode, masked, 64-bit length, a zero mask: the header of a `length` frame."""
    return bytes([0x81, 0x80 | 127]) + struct.pack(">Q", length) + b"\0\0\0\0"


async def _close_code(reader: asyncio.StreamReader) -> int:
    """The code of the close frame the hub sends (server frames are not masked)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 10)
    assert first & 0x0F == 0x8, f"expected a close frame, got opcode {first & 0x0F}"
    payload = await reader.readexactly(second & 0x7F)
    code: int = struct.unpack(">H", payload[:2])[0]
    return code


async def test_a_frame_over_1_mib_is_refused_from_its_header(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    # Only the header of a 1 MiB + 1 byte text frame is sent: the hub must not wait for (and
    # buffer) the payload to refuse it. Before hello, and after.
    reader, writer = await _raw_upgrade(hub.url, "/ws/worker/m1-gpu0")
    writer.write(_text_frame_header(MAX_TEXT_FRAME_BYTES + 1))
    await writer.drain()
    assert await _close_code(reader) == MESSAGE_TOO_BIG
    writer.close()

    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assert worker.ws is not None
    # A frame of exactly 1 MiB is read (and answered: it is not a message).
    await worker.send_raw("x" * MAX_TEXT_FRAME_BYTES)
    assert (await worker.expect(ErrorReply)).code == "bad_message"
    await worker.send_raw("x" * (MAX_TEXT_FRAME_BYTES + 1))
    with pytest.raises(ConnectionError):
        await worker.recv(within=10)
    assert worker.ws.close_code == MESSAGE_TOO_BIG


def _largest_chunk(job_id: str, token: int, data: bytes) -> bytes:
    """A last chunk with MAX_CHUNK_BYTES of data and its header padded (an unknown key, which
    the hub ignores) to MAX_CHUNK_HEADER_BYTES: the largest chunk frame the protocol allows."""
    sha256 = hashlib.sha256(data).hexdigest()
    chunk = OutputChunk(job_id, token, "big.bin", "application/octet-stream", 0, data)
    header = {
        "job_id": job_id,
        "token": token,
        "name": chunk.name,
        "content_type": chunk.content_type,
        "offset": 0,
        "last": True,
        "size": len(data),
        "sha256": sha256,
        "pad": "",
    }
    short = len(json.dumps(header, separators=(",", ":")))
    header["pad"] = "p" * (MAX_CHUNK_HEADER_BYTES - short)
    raw = json.dumps(header, separators=(",", ":")).encode()
    return CHUNK_MAGIC + struct.pack(">I", len(raw)) + raw + data


async def test_the_largest_chunk_frame_passes(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    data = os.urandom(MAX_CHUNK_BYTES)
    frame = _largest_chunk(assigned.job_id, assigned.token, data)
    assert len(frame) == MAX_CHUNK_FRAME_BYTES == MAX_TEXT_FRAME_BYTES
    assert decode_chunk(frame).data == data
    # The encoder never makes a frame over the limit: its header has room to spare.
    plain = encode_chunk(OutputChunk(job["id"], assigned.token, "a" * 200, "b" * 200, 0, data))
    assert len(plain) <= MAX_CHUNK_FRAME_BYTES
    await worker.send_raw(frame)
    sha256 = hashlib.sha256(data).hexdigest()
    ref = OutputRef("big.bin", "application/octet-stream", len(data), sha256)
    await worker.send(Completed(assigned.job_id, assigned.token, (ref,)))
    assert (await worker.expect(Ack, job_id=assigned.job_id, of="completed")).ok
    stored = await get_job(hub.url, job["id"])
    assert stored["status"] == "succeeded"
    assert [(o["name"], o["size"], o["sha256"]) for o in stored["outputs"]] == [
        ("big.bin", MAX_CHUNK_BYTES, sha256)
    ]
    await worker.close()
