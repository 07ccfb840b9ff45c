"""Where output files live. A small interface, so an S3-compatible store can replace the local
directory without touching dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .errors import ConfigError, StorageError

T = TypeVar("T")

READ_CHUNK_BYTES = 1 << 20
PRESIGN_MAX_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live

# The sweeper only ever deletes directories named like a job id (uuid4 hex), inside a root that
# holds this marker (written by the hub that made the root; it names the store it belongs to).
MARKER = ".wgpu-outputs"
_JOB_DIR = re.compile(r"[0-9a-f]{32}")


class OutputWriter(Protocol):
    """One output being received in chunks: nothing is visible under its name until `commit`.
    Failures raise StorageError."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self, name: str | None = None) -> None:
        """Make the file visible under its name, or under `name` in the same job (atomically;
        content-addressed inputs learn their name, the hash, only at the end)."""

    async def abort(self) -> None:
        """Drop what was written (idempotent, never raises)."""


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

    async def open_writer(self, job_id: str, name: str) -> OutputWriter:
        """Start receiving an output in chunks (bounded memory whatever its size)."""

    def read_chunks(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        """The output's bytes in chunks; FileNotFoundError when there is none."""

    async def names(self, job_id: str) -> list[str]:
        """The committed files of one job (or of the `inputs` store), for the sweeper."""

    async def delete_name(self, job_id: str, name: str) -> None:
        """Remove one file (idempotent)."""


def _safe(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"not a plain file name: {part!r}")
    return part


class LocalDirStorage:
    """`root/<job_id>/<name>`. File I/O runs in a thread so the event loop never blocks on disk."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def claim_root(self, owner: str) -> None:
        """Make the root ours (marker file naming `owner`), or refuse: a non-empty directory
        without the marker, or one marked for another store, may hold data that is not ours."""
        marker = self.root / MARKER
        try:
            if marker.is_file():
                found = marker.read_text().strip()
                if found != owner:
                    raise ConfigError(
                        f"OUTPUTS_DIR {self.root} belongs to another hub store ({found}), not "
                        f"{owner}: give this hub a directory of its own"
                    )
                return
            if self.root.exists() and any(self.root.iterdir()):
                raise ConfigError(
                    f"OUTPUTS_DIR {self.root} is not empty and has no {MARKER} marker: the hub "
                    "deletes expired outputs there, so point OUTPUTS_DIR at an empty directory"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            marker.write_text(owner + "\n")
        except OSError as exc:
            raise ConfigError(f"OUTPUTS_DIR {self.root} cannot be used: {exc}") from None

    def _path(self, job_id: str, name: str) -> Path:
        return self.root / _safe(job_id) / _safe(name)

    async def put(self, job_id: str, name: str, data: bytes) -> int:
        path = self._path(job_id, name)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                tmp.write_bytes(data)
                tmp.replace(path)  # a reader never sees half a file
            except BaseException:
                tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
                raise

        await _in_thread(write)
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

        return await _in_thread(read)

    async def size(self, job_id: str, name: str) -> int | None:
        try:
            return self._path(job_id, name).stat().st_size
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        except OSError as exc:
            raise StorageError(str(exc)) from exc

    async def delete_job(self, job_id: str) -> None:
        if _JOB_DIR.fullmatch(job_id):  # never anything the hub did not make
            await asyncio.to_thread(shutil.rmtree, self.root / job_id, True)

    async def open_writer(self, job_id: str, name: str) -> OutputWriter:
        path = self._path(job_id, name)
        await _in_thread(lambda: path.parent.mkdir(parents=True, exist_ok=True))
        return await _in_thread(_LocalWriter, path)

    async def read_chunks(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        try:
            path = self._path(job_id, name)
        except ValueError:
            raise FileNotFoundError(name) from None
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(name) from None
        except OSError as exc:
            raise StorageError(_describe(exc)) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
                yield chunk
        except OSError as exc:
            raise StorageError(_describe(exc)) from exc
        finally:
            handle.close()

    async def names(self, job_id: str) -> list[str]:
        folder = self.root / _safe(job_id)

        def scan() -> list[str]:
            try:
                return [p.name for p in folder.iterdir() if p.is_file() and p.name[0] != "."]
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await _in_thread(scan)

    async def delete_name(self, job_id: str, name: str) -> None:
        path = self._path(job_id, name)
        await _in_thread(path.unlink, True)

    async def job_ids(self) -> list[str]:
        """Job directories, only in a root marked as ours (see claim_root)."""

        def scan() -> list[str]:
            if not (self.root / MARKER).is_file():
                return []
            return [
                p.name for p in self.root.iterdir() if _JOB_DIR.fullmatch(p.name) and p.is_dir()
            ]

        return await _in_thread(scan)


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` off the event loop; a failing disk is a StorageError (the attempt ends as
    storage_error), never taken for anything else."""
    try:
        return await asyncio.to_thread(func, *args)
    except OSError as exc:
        raise StorageError(_describe(exc)) from exc


def _describe(exc: OSError) -> str:
    return f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc}"


class _LocalWriter:
    """Writes to a hidden temporary name beside the target, renamed on commit."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
        self._handle = open(self._tmp, "wb")  # noqa: SIM115 (closed by commit or abort)

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._handle.write, data)
        except OSError as exc:
            await self.abort()  # a full disk keeps no half-written file
            raise StorageError(_describe(exc)) from exc

    async def commit(self, name: str | None = None) -> None:
        target = self._path if name is None else self._path.with_name(_safe(name))

        def finish() -> None:
            self._handle.close()
            os.replace(self._tmp, target)  # a reader never sees half a file

        try:
            await asyncio.to_thread(finish)
        except OSError as exc:
            await self.abort()
            raise StorageError(_describe(exc)) from exc

    async def abort(self) -> None:
        def drop() -> None:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)

        # Nothing more to do on failure: the sweeper removes the job's directory later.
        with contextlib.suppress(OSError):
            await asyncio.to_thread(drop)
