"""What models this worker's ComfyUI has on disk, and which it has loaded (warm).

On disk: ComfyUI's `/models` and `/models/{folder}` routes, or, where those are missing (an
older ComfyUI), the COMBO lists of the loader nodes in `/object_info`. Read at start, after each
ComfyUI restart and every MODEL_SCAN_S; the hub hears the full list only when it changed (the
digest goes with every heartbeat). Warm: per loader folder, the files the last job named (ComfyUI
keeps the last-used model of each loader loaded; another one costs a load).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from wgpu_protocol import models

from .comfy_client import ComfyClient, ComfyError, ComfyUnreachable

log = logging.getLogger(__name__)


class ModelInventory:
    def __init__(self, client: ComfyClient, loaders: models.LoaderTable) -> None:
        self._client = client
        self._loaders = loaders
        self.files: dict[str, list[str]] | None = None  # None: not read (yet)
        self.warm: dict[str, list[str]] = {}
        self.digest = ""

    async def scan(self) -> bool:
        """Read the model files again; True when they changed."""
        try:
            found = await self._read()
        except (ComfyUnreachable, ComfyError) as exc:
            log.info("could not read ComfyUI's models: %s", exc)
            return False
        try:
            found = models.check_inventory(found)
        except models.ModelSpecError as exc:
            log.warning("ComfyUI's model list is not usable: %s", exc)
            return False
        digest = models.digest(found)
        if self.files is not None and digest == self.digest:
            return False
        self.files, self.digest = found, digest
        log.info("models: %d files in %d folders", len(models.flatten(found)), len(found))
        return True

    async def _read(self) -> dict[str, list[str]]:
        folders = await self._client.model_folders()
        if folders is None:
            info = await self._client.object_info()
            return models.inventory_from_object_info(info, self._loaders)
        out: dict[str, list[str]] = {}
        for folder in folders:
            if folder in models.NOT_MODEL_FOLDERS:
                continue
            files = await self._client.model_files(folder)
            if files:
                out[folder] = files
        return out

    def note_job(self, workflow: Mapping[str, Any]) -> None:
        """The job about to run loads its models: per folder they replace what was loaded."""
        for folder, files in models.workflow_requirements(workflow, self._loaders).items():
            self.warm[folder] = files

    def forget_loaded(self) -> None:
        """ComfyUI restarted: nothing is loaded any more."""
        self.warm = {}
