"""Where output files live. A small interface, so an S3-compatible store can replace the local
directory without touching dispatch."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    async def put(self, job_id: str, name: str, data: bytes) -> int:
        """Store one output; returns its size."""

    async def get(self, job_id: str, name: str) -> bytes | None:
        """The output's bytes, or None if there is none."""

    async def size(self, job_id: str, name: str) -> int | None: ...

    async def delete_job(self, job_id: str) -> None:
        """Remove every output of a job (idempotent)."""

    async def job_ids(self) -> list[str]:
        """Jobs that have outputs stored (for the sweeper)."""


def _safe(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"not a plain file name: {part!r}")
    return part


class LocalDirStorage:
    """`root/<job_id>/<name>`. File I/O runs in a thread so the event loop never blocks on disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / _safe(job_id) / _safe(name)

    async def put(self, job_id: str, name: str, data: bytes) -> int:
        path = self._path(job_id, name)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # a reader never sees half a file

        await asyncio.to_thread(write)
        return len(data)

    async def get(self, job_id: str, name: str) -> bytes | None:
        try:
            path = self._path(job_id, name)
        except ValueError:
            return None

        def read() -> bytes | None:
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None

        return await asyncio.to_thread(read)

    async def size(self, job_id: str, name: str) -> int | None:
        try:
            return self._path(job_id, name).stat().st_size
        except (OSError, ValueError):
            return None

    async def delete_job(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / _safe(job_id), True)

    async def job_ids(self) -> list[str]:
        def scan() -> list[str]:
            try:
                return [p.name for p in self.root.iterdir() if p.is_dir()]
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(scan)
