"""Every output a run produced, and streaming each one to the hub in chunks.

Kinds (see shared/comfyui/API.md): files under any key of a node's history output (images,
animated images and videos all come as `images`, with `animated: [true]`), SaveImageWebsocket
images (binary WebSocket frames only, spooled to a local file while the run goes on), and non-file
UI values (PreviewAny's `{"text": [...]}`), which become the job's `results`.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wgpu_protocol.messages import OutputRef
from wgpu_protocol.output_chunks import MAX_CHUNK_BYTES, OutputChunk, encode_chunk

from .comfy_client import ComfyClient
from .errors import OutputError

# UI keys that describe the files next to them rather than being values of their own.
FILE_METADATA_KEYS = frozenset({"animated"})
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class OutputTooLarge(OutputError):
    """An output is bigger than MAX_OUTPUT_BYTES."""


class OutputUnavailable(OutputError):
    """An output could not be read (ComfyUI's /view failed, the spool file is gone)."""


@dataclass(frozen=True, slots=True)
class OutputSource:
    """One output to relay: a file in ComfyUI (`filename`, `subfolder`, `kind`) or a local file
    (`local_path`, a SaveImageWebsocket image)."""

    name: str  # unique in the job
    node_id: str
    filename: str
    subfolder: str = ""
    kind: str = "output"
    content_type: str = ""
    local_path: str = ""


def unique_name(filename: str, node_id: str, taken: set[str]) -> str:
    """A plain file name (no path) not yet used in this job."""
    base = re.sub(r"[/\\]", "_", filename).strip() or "output"
    if base in (".", ".."):
        base = "output"
    candidate = base[-180:]
    counter = 1
    while candidate in taken:
        candidate = f"{node_id}-{counter}-{base}"[-180:]
        counter += 1
    return candidate


def collect(
    outputs: Any, ws_images: list[tuple[str, str, str]]
) -> tuple[list[OutputSource], dict[str, dict[str, Any]]]:
    """(files to relay, non-file results per node) from a history record's `outputs` and the
    spooled SaveImageWebsocket images [(node_id, image_type, path)]."""
    sources: list[OutputSource] = []
    results: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    if isinstance(outputs, dict):
        for node_id, node_output in outputs.items():
            if not isinstance(node_output, dict):
                continue
            values: dict[str, Any] = {}
            has_files = False
            for key, items in node_output.items():
                files = _files(items)
                if files:
                    has_files = True
                    for item in files:
                        name = unique_name(item["filename"], str(node_id), taken)
                        taken.add(name)
                        sources.append(
                            OutputSource(
                                name,
                                str(node_id),
                                item["filename"],
                                str(item.get("subfolder") or ""),
                                str(item.get("type") or "output"),
                            )
                        )
                else:
                    values[key] = items
            if has_files:
                values = {k: v for k, v in values.items() if k not in FILE_METADATA_KEYS}
            if values:
                results[str(node_id)] = values
    counters: dict[str, int] = {}
    for node_id, image_type, path in ws_images:
        counters[node_id] = counters.get(node_id, 0) + 1
        extension = _EXTENSIONS.get(image_type, "bin")
        filename = f"ws_{node_id}_{counters[node_id]:05}_.{extension}"
        name = unique_name(filename, node_id, taken)
        taken.add(name)
        sources.append(OutputSource(name, node_id, filename, "", "output", image_type, path))
    return sources, results


def _files(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        return []
    files = [i for i in items if isinstance(i, dict) and isinstance(i.get("filename"), str)]
    return files if len(files) == len(items) else []


SendFrame = Callable[[bytes], Awaitable[bool]]


async def stream_output(
    source: OutputSource,
    client: ComfyClient,
    job_id: str,
    token: int,
    max_bytes: int,
    send: SendFrame,
    on_length: Callable[[int | None], None] = lambda length: None,
) -> OutputRef | None:
    """Relay one output in chunks, hashing on the way. Memory: one chunk plus the socket's
    write buffer (send waits for it to drain). None when the socket closed meanwhile.
    `on_length` hears the output's size (None: not said) before its first byte is relayed."""
    digest = hashlib.sha256()
    offset = 0
    async with _open(source, client) as (content_type, length, chunks):
        on_length(length)
        if length is not None and length > max_bytes:
            raise OutputTooLarge(
                f"output {source.name} is {length} bytes; the limit is {max_bytes}"
            )
        pending = b""
        async for data in chunks:
            pending += data
            while len(pending) >= MAX_CHUNK_BYTES:
                piece, pending = pending[:MAX_CHUNK_BYTES], pending[MAX_CHUNK_BYTES:]
                if offset + len(piece) > max_bytes:
                    raise OutputTooLarge(f"output {source.name} exceeds {max_bytes} bytes")
                digest.update(piece)
                chunk = OutputChunk(job_id, token, source.name, content_type, offset, piece)
                if not await send(encode_chunk(chunk)):
                    return None
                offset += len(piece)
        if offset + len(pending) > max_bytes:
            raise OutputTooLarge(f"output {source.name} exceeds {max_bytes} bytes")
        digest.update(pending)
        size = offset + len(pending)
        sha256 = digest.hexdigest()
        last = OutputChunk(
            job_id,
            token,
            source.name,
            content_type,
            offset,
            pending,
            True,
            size,
            sha256,
        )
        if not await send(encode_chunk(last)):
            return None
    return OutputRef(
        source.name,
        content_type,
        size,
        sha256,
        source.node_id,
        source.kind if source.kind in ("output", "temp", "input") else "output",
        source.subfolder,
    )


class _open:
    """(content type, length or None, chunk iterator) of a source, as an async context."""

    def __init__(self, source: OutputSource, client: ComfyClient) -> None:
        self._source = source
        self._client = client
        self._view: Any = None

    async def __aenter__(self) -> tuple[str, int | None, AsyncIterator[bytes]]:
        source = self._source
        if source.local_path:
            try:
                size = await asyncio.to_thread(os.path.getsize, source.local_path)
            except OSError as exc:
                raise OutputUnavailable(f"{source.name}: {exc}") from None
            return source.content_type, size, _read_file(Path(source.local_path))
        self._view = self._client.open_view(source.filename, source.subfolder, source.kind)
        content_type, length, reader = await self._view.__aenter__()
        guessed = mimetypes.guess_type(source.filename)[0]
        return content_type or guessed or "application/octet-stream", length, _read_stream(reader)

    async def __aexit__(self, *exc: Any) -> None:
        if self._view is not None:
            await self._view.__aexit__(*exc)


async def _read_stream(reader: Any) -> AsyncIterator[bytes]:
    async for data in reader.iter_chunked(MAX_CHUNK_BYTES):
        yield data


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while data := await asyncio.to_thread(handle.read, MAX_CHUNK_BYTES):
            yield data
    finally:
        handle.close()
