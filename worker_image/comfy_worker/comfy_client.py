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
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import WorkerError

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=3)
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=3)
# A streamed output may take long in all; only a stall between reads is an error.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=3, sock_read=60)
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=3, connect=2)
WS_MAX_MESSAGE = 64 * 1024 * 1024  # preview frames can be large; they are only counted

# Pseudo-event put into subscriber queues when the socket drops: the run must be checked by poll.
DISCONNECTED = "wgpu.socket_dropped"
# Pseudo-event for a binary image frame (SaveImageWebsocket output or a preview).
IMAGE_FRAME = "wgpu.image"
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
_IMAGE_TYPES = {1: "image/jpeg", 2: "image/png"}


def parse_image_frame(
    data: bytes, executing: tuple[str, str] | None
) -> tuple[str, dict[str, Any]] | None:
    """(prompt_id, {node_id, image_type, data}) of a binary preview frame, else None. Event 4
    names its prompt and node; legacy event 1 belongs to the node executing now."""
    if len(data) < 8:
        return None
    (event,) = struct.unpack(">I", data[:4])
    if event == 4:
        (length,) = struct.unpack(">I", data[4:8])
        try:
            meta = json.loads(data[8 : 8 + length])
        except ValueError:
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("prompt_id"), str):
            return None
        node = meta.get("node_id")
        return meta["prompt_id"], {
            "node_id": None if node is None else str(node),
            "image_type": str(meta.get("image_type") or "image/png"),
            "data": data[8 + length :],
        }
    if event == 1 and executing is not None:
        (image_format,) = struct.unpack(">I", data[4:8])
        prompt_id, node = executing
        return prompt_id, {
            "node_id": node,
            "image_type": _IMAGE_TYPES.get(image_format, "image/png"),
            "data": data[8:],
        }
    return None


class ComfyUnreachable(WorkerError, ConnectionError):
    """ComfyUI did not answer (refused, reset, timed out)."""


class ComfyError(WorkerError):
    """ComfyUI answered with something unexpected."""


class PromptRejected(WorkerError):
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
class Submitted:
    prompt_id: str
    node_errors: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str


class ComfyClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    @property
    def http(self) -> aiohttp.ClientSession:
        """The worker's HTTP session (also used to reach the hub's input route)."""
        return self._session

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
        return (await self.submit_prompt(workflow, client_id, prompt_id)).prompt_id

    async def submit_prompt(
        self, workflow: dict[str, Any], client_id: str, prompt_id: str
    ) -> Submitted:
        """POST /prompt; the prompt id ComfyUI uses and the `node_errors` of outputs it will
        not run (a partly valid graph is accepted). 400 raises PromptRejected."""
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
        node_errors = answer.get("node_errors")
        if not isinstance(node_errors, dict):
            node_errors = {}
        return Submitted(str(answer["prompt_id"]), node_errors)

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

    @contextlib.asynccontextmanager
    async def open_view(
        self, filename: str, subfolder: str, kind: str
    ) -> AsyncIterator[tuple[str, int | None, aiohttp.StreamReader]]:
        """GET /view as a stream: (content type, Content-Length or None, body reader)."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        try:
            async with self._session.get(
                self.base_url + "/view", params=params, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status != 200:
                    raise ComfyError(
                        f"GET /view of {subfolder}/{filename} answered HTTP {response.status}"
                    )
                content_type = response.content_type
                if not content_type or content_type == "application/octet-stream":
                    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                yield content_type, response.content_length, response.content
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            TimeoutError,
            OSError,
        ) as exc:
            raise ComfyUnreachable(f"GET /view of {filename}: {exc or type(exc).__name__}") from exc

    async def upload_input(self, path: str, filename: str, subfolder: str) -> str:
        """POST /upload/image (type input, overwrite): streams the file; returns the name
        ComfyUI stored it under (inside `subfolder`)."""
        return await self._upload("/upload/image", path, filename, subfolder, {})

    async def upload_mask(self, path: str, filename: str, subfolder: str, original: str) -> str:
        """POST /upload/mask: ComfyUI saves the input `original` (a name in `subfolder`) with
        this file's alpha channel as an RGBA PNG named `filename`; returns that name. (Stock
        answers 200 even when the original is missing, and then writes nothing.)"""
        ref = {"filename": original, "subfolder": subfolder, "type": "input"}
        extra = {"original_ref": json.dumps(ref)}
        return await self._upload("/upload/mask", path, filename, subfolder, extra)

    async def _upload(
        self, route: str, path: str, filename: str, subfolder: str, extra: dict[str, str]
    ) -> str:
        try:
            with open(path, "rb") as handle:  # noqa: ASYNC230 (aiohttp reads it in chunks)
                form = aiohttp.FormData()
                form.add_field("image", handle, filename=filename)
                form.add_field("type", "input")
                form.add_field("subfolder", subfolder)
                form.add_field("overwrite", "true")
                for name, value in extra.items():
                    form.add_field(name, value)
                async with self._session.post(
                    self.base_url + route, data=form, timeout=STREAM_TIMEOUT
                ) as response:
                    body = await response.read()
                    status = response.status
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ComfyUnreachable(f"POST {route}: {exc or type(exc).__name__}") from exc
        if status != 200:
            raise ComfyError(f"POST {route} of {filename} answered HTTP {status}")
        try:
            answer = json.loads(body)
            return str(answer["name"])
        except (ValueError, KeyError, TypeError):
            raise ComfyError(f"POST {route} answered {body[:200]!r}") from None

    async def interrupt(self, prompt_id: str) -> None:
        # Always name the prompt: a bare interrupt can hit whatever runs now.
        await self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json_body={"delete": [prompt_id]})

    async def model_folders(self) -> list[str] | None:
        """GET /models: ComfyUI's model folder names; None when it has no such route."""
        status, body, _ = await self._request("GET", "/models")
        if status == 404:
            return None
        return _string_list(status, body, "/models")

    async def model_files(self, folder: str) -> list[str]:
        """GET /models/{folder}: relative paths of its files ([] for an unknown folder)."""
        status, body, _ = await self._request("GET", f"/models/{quote(folder, safe='')}")
        if status == 404:
            return []
        return _string_list(status, body, f"/models/{folder}")

    async def object_info(self) -> dict[str, Any]:
        answer = await self._json("GET", "/object_info")
        if not isinstance(answer, dict):
            raise ComfyError("GET /object_info answered something that is not an object")
        return answer

    async def free_memory(self) -> None:
        await self._request("POST", "/free", json_body={"unload_models": True, "free_memory": True})


def _string_list(status: int, body: bytes, path: str) -> list[str]:
    if status != 200:
        raise ComfyError(f"GET {path} answered HTTP {status}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise ComfyError(f"GET {path} answered non-JSON") from None
    if not isinstance(answer, list) or not all(isinstance(v, str) for v in answer):
        raise ComfyError(f"GET {path} answered something that is not a list of names")
    return answer


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
        self._executing: tuple[str, str] | None = None  # (prompt_id, node) now running

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
                    # Ask for preview metadata: binary image frames then name their prompt and
                    # node (SaveImageWebsocket outputs are told apart from sampler previews).
                    await ws.send_json(FEATURE_FLAGS)
                    self._connected.set()
                    self.last_frame_at = time.monotonic()
                    log.debug("ComfyUI event socket open")
                    async for message in ws:
                        self.last_frame_at = time.monotonic()
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(message.data)
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            self._dispatch_binary(message.data)
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
        kind = str(frame.get("type"))
        if kind == "executing" and isinstance(prompt_id, str):
            node = data.get("node")
            self._executing = (prompt_id, str(node)) if node is not None else None
        queue = self._subscribers.get(prompt_id) if isinstance(prompt_id, str) else None
        if queue is not None:
            queue.put_nowait((kind, data))

    def _dispatch_binary(self, data: bytes) -> None:
        """Image frames become IMAGE_FRAME events of their prompt: {node_id, image_type, data}."""
        image = parse_image_frame(data, self._executing)
        if image is None:
            return
        prompt_id, event = image
        queue = self._subscribers.get(prompt_id)
        if queue is not None:
            queue.put_nowait((IMAGE_FRAME, event))
