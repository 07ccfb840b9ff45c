"""Stock ComfyUI's HTTP API and its event WebSocket, as the worker uses them.

`ComfyClient` wraps the routes (see shared/comfyui/API.md); every failure to reach ComfyUI is a
`ComfyUnreachable`, every unexpected answer a `ComfyError`. `ComfyEvents` keeps the one
`/ws?clientId=` socket open for the worker's life and hands each prompt's events to whoever
subscribed to that prompt id. Execution events go only to the socket whose clientId submitted the
prompt, so the socket is reconnected with the same clientId after a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=3)
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=3)
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=2)
WS_MAX_MESSAGE = 64 * 1024 * 1024  # preview frames can be large; they are only counted

# Pseudo-event put into subscriber queues when the socket drops: the run must be checked by poll.
DISCONNECTED = "wgpu.socket_dropped"


class ComfyUnreachable(ConnectionError):
    """ComfyUI did not answer (refused, reset, timed out)."""


class ComfyError(RuntimeError):
    """ComfyUI answered with something unexpected."""


class PromptRejected(Exception):
    """POST /prompt answered 400: the workflow is invalid. `body` is ComfyUI's JSON answer."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("error")))
        self.body = body


@dataclass(frozen=True, slots=True)
class QueueState:
    running: frozenset[str]
    pending: frozenset[str]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str


class ComfyClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        limits: aiohttp.ClientTimeout = CONTROL_TIMEOUT,
    ) -> tuple[int, bytes, str]:
        try:
            async with self._session.request(
                method, self.base_url + path, json=json_body, params=params, timeout=limits
            ) as response:
                body = await response.read()
                return response.status, body, response.content_type
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise ComfyUnreachable(f"{method} {path}: {exc or type(exc).__name__}") from exc

    async def _json(self, method: str, path: str, json_body: Any = None) -> Any:
        status, body, _ = await self._request(method, path, json_body=json_body)
        if status != 200:
            raise ComfyError(f"{method} {path} answered HTTP {status}: {body[:300]!r}")
        try:
            return json.loads(body) if body else None
        except ValueError:
            raise ComfyError(f"{method} {path} answered non-JSON: {body[:300]!r}") from None

    async def system_stats(self) -> dict[str, Any]:
        status, body, _ = await self._request("GET", "/system_stats", limits=PROBE_TIMEOUT)
        if status != 200:
            raise ComfyError(f"GET /system_stats answered HTTP {status}")
        try:
            stats = json.loads(body)
        except ValueError:
            raise ComfyError("GET /system_stats answered non-JSON") from None
        if not isinstance(stats, dict):
            raise ComfyError("GET /system_stats answered something that is not an object")
        return stats

    async def is_up(self) -> bool:
        try:
            await self.system_stats()
        except (ComfyUnreachable, ComfyError):
            return False
        return True

    async def submit(self, workflow: dict[str, Any], client_id: str, prompt_id: str) -> str:
        """POST /prompt; returns the prompt id ComfyUI uses. 400 raises PromptRejected."""
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        status, raw, _ = await self._request("POST", "/prompt", json_body=body)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if status == 400 and isinstance(answer, dict):
            raise PromptRejected(answer)
        if status != 200 or not isinstance(answer, dict) or "prompt_id" not in answer:
            raise ComfyError(f"POST /prompt answered HTTP {status}: {raw[:300]!r}")
        if answer.get("node_errors"):
            log.warning("ComfyUI accepted prompt with node errors: %s", answer["node_errors"])
        return str(answer["prompt_id"])

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The finished run's record, or None while it is not finished (or unknown)."""
        answer = await self._json("GET", f"/history/{prompt_id}")
        if isinstance(answer, dict):
            entry = answer.get(prompt_id)
            if isinstance(entry, dict):
                return entry
        return None

    async def queue(self) -> QueueState:
        answer = await self._json("GET", "/queue")
        if not isinstance(answer, dict):
            raise ComfyError("GET /queue answered something that is not an object")
        return QueueState(_ids(answer.get("queue_running")), _ids(answer.get("queue_pending")))

    async def view(self, filename: str, subfolder: str, kind: str) -> Download:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        status, body, content_type = await self._request(
            "GET", "/view", params=params, limits=DOWNLOAD_TIMEOUT
        )
        if status != 200:
            raise ComfyError(f"GET /view of {subfolder}/{filename} answered HTTP {status}")
        if not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return Download(body, content_type)

    async def interrupt(self, prompt_id: str) -> None:
        # Always name the prompt: a bare interrupt can hit whatever runs now.
        await self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json_body={"delete": [prompt_id]})

    async def free_memory(self) -> None:
        await self._request("POST", "/free", json_body={"unload_models": True, "free_memory": True})


def _ids(items: Any) -> frozenset[str]:
    # Each item is [number, prompt_id, graph, extra, outputs]; only the id (index 1) is relied on.
    if not isinstance(items, list):
        return frozenset()
    return frozenset(
        str(item[1]) for item in items if isinstance(item, list | tuple) and len(item) > 1
    )


class ComfyEvents:
    """The worker's one ComfyUI event socket. Events are routed by their `prompt_id`."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, client_id: str, retry_s: float = 0.5
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + f"/ws?clientId={client_id}"
        self.client_id = client_id
        self._retry_s = retry_s
        self._subscribers: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {}
        self._connected = asyncio.Event()
        self.last_frame_at = time.monotonic()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._connected.wait()
        return self.connected

    def subscribe(self, prompt_id: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._subscribers[prompt_id] = queue
        return queue

    def unsubscribe(self, prompt_id: str) -> None:
        self._subscribers.pop(prompt_id, None)

    async def run(self) -> None:
        """Keep the socket open forever; reconnect after every drop."""
        while True:
            try:
                async with self._session.ws_connect(
                    self._url, heartbeat=None, max_msg_size=WS_MAX_MESSAGE
                ) as ws:
                    self._connected.set()
                    self.last_frame_at = time.monotonic()
                    log.debug("ComfyUI event socket open")
                    async for message in ws:
                        self.last_frame_at = time.monotonic()
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(message.data)
                        elif message.type == aiohttp.WSMsgType.ERROR:
                            break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("ComfyUI event socket unavailable: %s", exc)
            finally:
                if self._connected.is_set():
                    log.info("ComfyUI event socket closed")
                    self._connected.clear()
                    for queue in self._subscribers.values():
                        queue.put_nowait((DISCONNECTED, {}))
            await asyncio.sleep(self._retry_s)

    def _dispatch(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        data = frame.get("data")
        if not isinstance(data, dict):
            return
        prompt_id = data.get("prompt_id")
        queue = self._subscribers.get(prompt_id) if isinstance(prompt_id, str) else None
        if queue is not None:
            queue.put_nowait((str(frame.get("type")), data))
