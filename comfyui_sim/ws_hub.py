"""The `/ws` sockets: who is connected, what each negotiated, and sending to one or all.

Stock ComfyUI sends an event to one socket when it has a client id and to every socket when the
id is None; nothing is buffered for a client that is not connected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

SERVER_FEATURES: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": 104857600}


class BinaryEvent:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class WsHub:
    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        # A client whose socket is "silent" (fault injection): nothing is sent to it.
        self.muted: set[str] = set()

    def supports(self, sid: str | None, feature: str) -> bool:
        return sid is not None and bool(self.flags.get(sid, {}).get(feature, False))

    def add(self, sid: str, ws: web.WebSocketResponse) -> web.WebSocketResponse | None:
        """Register `ws` as `sid`; returns the socket it replaced, if any."""
        old = self.sockets.pop(sid, None)
        self.sockets[sid] = ws
        self.flags[sid] = {}
        return old

    def remove(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
            self.flags.pop(sid, None)

    def _targets(self, sid: str | None) -> list[tuple[str, web.WebSocketResponse]]:
        if sid is None:
            chosen = list(self.sockets.items())
        else:
            ws = self.sockets.get(sid)
            chosen = [(sid, ws)] if ws is not None else []
        return [(s, w) for s, w in chosen if s not in self.muted and not w.closed]

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        text = json.dumps({"type": event, "data": data})
        for target_sid, ws in self._targets(sid):
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("dropping frame to %s: %s", target_sid, exc)

    async def send_binary(self, event: int, payload: bytes, sid: str | None = None) -> None:
        frame = struct.pack(">I", event) + payload
        for target_sid, ws in self._targets(sid):
            try:
                await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("dropping frame to %s: %s", target_sid, exc)

    async def close_all(self) -> None:
        sockets = list(self.sockets.values())
        self.sockets.clear()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        self.flags.clear()


def preview_frame(image: bytes) -> bytes:
    """Payload of event 1: image format (2 = PNG) then the bytes."""
    return struct.pack(">I", 2) + image


def preview_with_metadata_frame(image: bytes, metadata: dict[str, Any]) -> bytes:
    """Payload of event 4: JSON length, JSON metadata, image bytes."""
    meta = json.dumps(metadata).encode()
    return struct.pack(">I", len(meta)) + meta + image


def text_frame(node_id: str, text: str) -> bytes:
    """Payload of event 3: node id length, node id, UTF-8 text."""
    node = node_id.encode()
    return struct.pack(">I", len(node)) + node + text.encode()
