"""Stock ComfyUI's HTTP routes and `/ws` over one Executor, plus POST /wgpu-sim/faults."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import mimetypes
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from comfyui_sim.catalog import CATALOG, NodeClass, object_info
from comfyui_sim.catalog_media import with_file_lists
from comfyui_sim.config import SimConfig
from comfyui_sim.executor import Executor, QueueItem, new_prompt_id
from comfyui_sim.faults import parse_fault_request
from comfyui_sim.model_routes import ModelRoutes
from comfyui_sim.outputs import OutputStore
from comfyui_sim.uploads import (
    Upload,
    UploadRefused,
    merge_mask,
    original_of_mask,
    save_upload,
)
from comfyui_sim.validation import validate_prompt
from comfyui_sim.ws_hub import SERVER_FEATURES, WsHub

log = logging.getLogger(__name__)

SIM_VERSION = "0.3.64"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimServer:
    """Routes over one Executor. `crashed` is set when a `crash` fault stopped it in-process."""

    def __init__(self, config: SimConfig, catalog: dict[str, NodeClass] | None = None) -> None:
        self.config = config
        self.catalog = dict(catalog or CATALOG)
        self.ws = WsHub()
        self.store = OutputStore(config)
        self.crashed = asyncio.Event()
        self.executor = Executor(config, self.catalog, self.ws, self.store, self._crash)
        self.models = ModelRoutes(self.executor.models, self.catalog)
        self.models.refresh()
        self._on_crash: list[Callable[[], Awaitable[None]]] = []

    async def _crash(self) -> None:
        self.crashed.set()
        for callback in self._on_crash:
            await callback()

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/ws", self.websocket),
            ("POST", "/prompt", self.post_prompt),
            ("GET", "/prompt", self.get_prompt),
            ("GET", "/queue", self.get_queue),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.post_interrupt),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_item),
            ("POST", "/history", self.post_history),
            ("GET", "/view", self.view),
            ("HEAD", "/view", self.view),
            ("POST", "/upload/image", self.upload_image),
            ("POST", "/upload/mask", self.upload_mask),
            ("GET", "/internal/files/{kind}", self.internal_files),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/object_info", self.get_object_info),
            ("GET", "/object_info/{node_class}", self.get_object_info_class),
            ("POST", "/free", self.post_free),
            ("GET", "/features", self.features),
            *self.models.routes(),
            ("GET", "/extensions", self.empty_list),
        ]

    # ---- /ws ---------------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # A short close timeout: closing must not wait 10 s on a client that stopped reading.
        ws = web.WebSocketResponse(max_msg_size=0, timeout=1.0)
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        # A reconnect with the same clientId takes over; the old socket stays open but hears
        # nothing more. A `silent_ws` fault keeps the client muted until its prompt ends.
        self.ws.add(sid, ws)
        try:
            status = {"exec_info": {"queue_remaining": self.executor.queue_remaining()}}
            await ws.send_str(
                json.dumps({"type": "status", "data": {"status": status, "sid": sid}})
            )
            if self.executor.client_id == sid and self.executor.last_node_id is not None:
                data = {"node": self.executor.last_node_id}
                await ws.send_str(json.dumps({"type": "executing", "data": data}))
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    log.warning("invalid json on websocket from %s", sid)
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags: Any = data.get("data", {})
                    self.ws.flags[sid] = flags if isinstance(flags, dict) else {}
                    reply = {"type": "feature_flags", "data": SERVER_FEATURES}
                    await ws.send_str(json.dumps(reply))
                first = False
        finally:
            self.ws.remove(sid, ws)
        return ws

    # ---- prompts -----------------------------------------------------------------------------
    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()  # malformed JSON -> aiohttp's 500 text/plain, like stock
        if not isinstance(body, dict) or "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = self.executor.next_number(bool(body.get("front")))
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or new_prompt_id())
        targets = body.get("partial_execution_targets")
        self.models.refresh()
        result = validate_prompt(prompt, self.catalog, targets, self._file_exists)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            return web.json_response(
                {"error": result.error, "node_errors": result.node_errors}, status=400
            )
        item = QueueItem(number, prompt_id, prompt, extra_data, result.outputs)
        await self.executor.put(item)
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_prompt(self, request: web.Request) -> web.Response:
        remaining = self.executor.queue_remaining()
        return web.json_response({"exec_info": {"queue_remaining": remaining}})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [self.executor.running.as_list()] if self.executor.running else []
        pending = [item.as_list() for item in self.executor.pending_sorted()]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict):
            if body.get("clear"):
                await self.executor.clear_pending()
            if "delete" in body:
                await self.executor.delete_pending([str(i) for i in body["delete"]])
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.executor.interrupt(str(prompt_id) if prompt_id else None)
        return web.Response(status=200)

    # ---- history -----------------------------------------------------------------------------
    async def get_history(self, request: web.Request) -> web.Response:
        items = list(self.executor.history.items())
        offset = int(request.query.get("offset", "-1"))
        max_items = request.query.get("max_items")
        if max_items is not None:
            count = int(max_items)
            start = offset if offset >= 0 else max(0, len(items) - count)
            items = items[start : start + count]
        elif offset > 0:
            items = items[offset:]
        return web.json_response(dict(items))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.executor.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, dict):
            if body.get("clear"):
                self.executor.history.clear()
            for prompt_id in body.get("delete", []):
                self.executor.history.pop(str(prompt_id), None)
        return web.Response(status=200)

    # ---- files and info ----------------------------------------------------------------------
    async def view(self, request: web.Request) -> web.StreamResponse:
        if "filename" not in request.query:
            return web.Response(status=404)
        status, path = self.store.resolve_view(
            request.query["filename"],
            request.query.get("subfolder"),
            request.query.get("type", "output"),
        )
        if status != 200:
            return web.Response(status=status)
        if self.config.view_hook is not None:
            await self.config.view_hook(path.name)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # A static file response like stock: streamed from disk, Content-Length, Range, ETag.
        return web.FileResponse(
            path,
            headers={
                "Content-Type": content_type,
                "Content-Disposition": f'filename="{path.name}"',
            },
        )

    def _file_exists(self, kind: str, name: str) -> bool:
        # Stock's exists_annotated_filepath; the input dir itself (empty name) "exists".
        if name.endswith("]") and " [" in name:
            name, _, kind = name[:-1].rpartition(" [")
        root = self.store.dirs.get(kind)
        if root is None:
            return False
        path = os.path.abspath(os.path.join(root, name))
        if os.path.commonpath((str(root), path)) != str(root):
            return False
        return os.path.exists(path)

    def _top_level_files(self, kind: str) -> list[str]:
        root = self.store.dirs[kind]
        try:
            entries = [p for p in root.iterdir() if p.is_file()]
        except FileNotFoundError:
            return []
        return [p.name for p in entries]

    async def _read_upload(self, request: web.Request) -> tuple[dict[str, Any], Upload]:
        try:
            post = await request.post()
        except ValueError:
            raise UploadRefused("not a form") from None
        image = post.get("image")
        if not isinstance(image, web.FileField):
            raise UploadRefused("no image field")
        fields = {k: v for k, v in post.items() if isinstance(v, str)}
        return fields, Upload(image.filename or "", image.file.read())

    async def upload_image(self, request: web.Request) -> web.Response:
        try:
            fields, upload = await self._read_upload(request)
            answer, path = save_upload(self.store.dirs, fields, upload)
        except UploadRefused:
            return web.Response(status=400)
        if path is not None:
            await asyncio.to_thread(path.write_bytes, upload.data)
        return web.json_response(answer)

    async def upload_mask(self, request: web.Request) -> web.Response:
        try:
            fields, upload = await self._read_upload(request)
            original = original_of_mask(self.store.dirs, fields)
            answer, path = save_upload(self.store.dirs, fields, upload)
            if path is not None and original is not None:
                merged = merge_mask(original.read_bytes(), upload.data)
                await asyncio.to_thread(path.write_bytes, merged)
        except UploadRefused:
            return web.Response(status=400)
        return web.json_response(answer)

    async def internal_files(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in self.store.dirs:
            return web.json_response({"error": f"unknown directory type {kind}"}, status=400)
        root = self.store.dirs[kind]
        names = self._top_level_files(kind)
        names.sort(key=lambda n: (root / n).stat().st_mtime, reverse=True)
        return web.json_response(names)

    async def system_stats(self, request: web.Request) -> web.Response:
        vram = self.config.vram_total
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 64 * 1024**3,
                    "ram_free": 60 * 1024**3,
                    "comfyui_version": SIM_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "2.8.0+cu128 (wgpu-sim)",
                    "embedded_python": False,
                    "argv": list(self.config.argv),
                    "wgpu_sim": True,
                },
                "devices": [
                    {
                        "name": self.config.device_name,
                        "type": self.config.device_type,
                        "index": 0,
                        "vram_total": vram,
                        "vram_free": vram - 512 * 1024**2,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }
        )

    def _object_info(self, info: dict[str, Any]) -> dict[str, Any]:
        self.models.refresh()
        files = {"input": sorted(self._top_level_files("input"))}
        return with_file_lists(copy.deepcopy(info), self.catalog, files)

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._object_info(object_info(self.catalog)))

    async def get_object_info_class(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        node_class = self.catalog.get(name)
        if node_class is None:
            return web.json_response({})
        return web.json_response(self._object_info({name: node_class.object_info()}))

    async def post_free(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = {}
        if isinstance(body, dict) and body.get("unload_models"):
            self.executor.models.unload_all()
        return web.Response(status=200)

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(SERVER_FEATURES)

    async def empty_list(self, request: web.Request) -> web.Response:
        return web.json_response([])

    # ---- simulator control -------------------------------------------------------------------
    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            fault = parse_fault_request(await request.json())
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if fault is None:
            self.executor.injected_faults.clear()
        else:
            self.executor.injected_faults.append(fault)
        pending = [{"mode": f.mode, "after_s": f.after_s} for f in self.executor.injected_faults]
        return web.json_response({"pending": pending})
