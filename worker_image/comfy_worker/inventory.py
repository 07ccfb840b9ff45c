"""What models this worker's ComfyUI has on disk, and which it has loaded (warm).

On disk: ComfyUI's `/models` and `/models/{folder}` routes, or, where those are missing (an
older ComfyUI), the COMBO lists of the loader nodes in `/object_info`. Read at start, after each
ComfyUI restart and every MODEL_SCAN_S; the hub hears the full list only when it changed (the
digest goes with every heartbeat). Warm: per loader folder, the files the most recent jobs named,
the last `keep` of them (ComfyUI keeps the last-used models of each loader loaded, WARM_MODELS of
them; another one costs a load). The worker is the hub's only source for what is warm: it sends
this set with each job's result when it changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from wgpu_protocol import models

from .comfy_client import ComfyClient, ComfyError, ComfyUnreachable

log = logging.getLogger(__name__)


class ModelInventory:
    def __init__(self, client: ComfyClient, loaders: models.LoaderTable, keep: int = 1) -> None:
        self._client = client
        self._loaders = loaders
        self._keep = max(1, keep)
        self.files: dict[str, list[str]] | None = None  # None: not read (yet)
        self.warm: dict[str, list[str]] = {}  # per folder, most recently used first
        self.digest = ""
        self._first_read: asyncio.Future[bool] | None = None

    async def read_once(self) -> None:
        """Read the model files unless they were read or tried before: whoever needs them
        before any scan did (the first `ready`) waits for that one attempt, shared. A failed
        attempt is retried by the periodic scans (scan()), not by every caller."""
        if self.files is not None:
            return
        if self._first_read is None:
            self._first_read = asyncio.ensure_future(self.scan())
        await asyncio.shield(self._first_read)

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
        """ComfyUI accepted the job: it loads the job's models, which become the most recently
        used of their folder; the least recently used beyond `keep` are unloaded."""
        for folder, files in models.workflow_requirements(workflow, self._loaders).items():
            recent = self.warm.get(folder, [])
            for name in files:
                recent = [name] + [other for other in recent if other != name]
            self.warm[folder] = recent[: self._keep]

    def warm_report(self) -> dict[str, list[str]]:
        """The warm set as the protocol carries it (sorted, so equal sets compare equal)."""
        return {folder: sorted(files) for folder, files in sorted(self.warm.items()) if files}

    def forget_loaded(self) -> None:
        """ComfyUI restarted: nothing is loaded any more."""
        self.warm = {}
