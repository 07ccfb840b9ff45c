"""ComfyUI's model-listing routes over the simulator's model folders, and the simulator's own
`/wgpu-sim/models` (add or remove files; how many loads it paid for).

Shapes as recorded from ComfyUI 0.3.64 (object_info_models.json): `GET /models` lists the folder
names, `GET /models/{folder}` a sorted list of relative paths (404 with an empty body for an
unknown folder), `GET /embeddings` names without extension, `/experiment/models[/{folder}]` and
`/internal/folder_paths` the search paths and file details.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from comfyui_sim.catalog import NodeClass
from comfyui_sim.catalog_models import MODEL_CLASSES, with_model_lists
from comfyui_sim.model_store import MODEL_FOLDERS, ModelStore, ModelStoreError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TEMPLATES = {cls.name: cls for cls in MODEL_CLASSES}


class ModelRoutes:
    def __init__(self, models: ModelStore, catalog: dict[str, NodeClass]) -> None:
        self.models = models
        self.catalog = catalog
        self._listed: dict[str, list[str]] | None = None

    def refresh(self) -> None:
        """Loader inputs list the files on disk now (a model copied in is usable at once)."""
        inventory = self.models.inventory()
        if inventory == self._listed:
            return
        self._listed = inventory
        for name, template in _TEMPLATES.items():
            if name in self.catalog:
                self.catalog[name] = with_model_lists(template, inventory)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/models", self.folders),
            ("GET", "/models/{folder}", self.folder),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/experiment/models", self.experiment_folders),
            ("GET", "/experiment/models/{folder}", self.experiment_folder),
            ("GET", "/internal/folder_paths", self.folder_paths),
        ]

    def control_routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", "/wgpu-sim/models", self.state), ("POST", "/wgpu-sim/models", self.change)]

    async def folders(self, request: web.Request) -> web.Response:
        return web.json_response(list(MODEL_FOLDERS))

    async def folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(self.models.files(folder))

    async def embeddings(self, request: web.Request) -> web.Response:
        names = [os.path.splitext(name)[0] for name in self.models.files("embeddings")]
        return web.json_response(names)

    async def experiment_folders(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"name": f, "folders": [str(self.models.root / f)]} for f in MODEL_FOLDERS]
        )

    async def experiment_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        out: list[dict[str, Any]] = []
        for name in self.models.files(folder):
            stat = (self.models.root / folder / name).stat()
            out.append(
                {
                    "name": name,
                    "pathIndex": 0,
                    "modified": stat.st_mtime,
                    "created": stat.st_ctime,
                    "size": stat.st_size,
                }
            )
        return web.json_response(out)

    async def folder_paths(self, request: web.Request) -> web.Response:
        return web.json_response({f: [str(self.models.root / f)] for f in MODEL_FOLDERS})

    # -- simulator control ---------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "loads": self.models.loads,
                "loaded": self.models.loaded,
                "load_time_s": self.models.load_time_s,
                "vram_models": self.models.vram_models,
                "models": {f: v for f, v in self.models.inventory().items() if v},
            }
        )

    async def change(self, request: web.Request) -> web.Response:
        """`{"add"?: {folder: [file, ...]}, "remove"?: {...}}`: like copying files in or out."""
        try:
            body = json.loads(await request.read() or b"{}")
            if not isinstance(body, dict) or set(body) - {"add", "remove"}:
                raise ModelStoreError('body must be {"add"?: {folder: [files]}, "remove"?: ...}')
            for key in ("add", "remove"):
                value = body.get(key) or {}
                if not isinstance(value, dict) or not all(
                    isinstance(v, list) and all(isinstance(n, str) for n in v)
                    for v in value.values()
                ):
                    raise ModelStoreError(f"{key} must be {{folder: [file, ...]}}")
            self.models.add(body.get("add") or {})
            self.models.remove(body.get("remove") or {})
        except (ValueError, ModelStoreError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.refresh()
        return await self.state(request)
