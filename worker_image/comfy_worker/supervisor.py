"""Runs ComfyUI as the worker's child when COMFYUI_CMD is set, and keeps it running.

The command runs through /bin/sh (so `$EXECUTION_SERVICE_PORT` in it expands) in its own process
group, so that stopping it also stops anything it spawned. Its output is copied line by line into
the worker's log under the `comfyui` logger. When it dies it is restarted with backoff; the
worker is told at once (`on_exit`) so that a running job fails instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)
child_log = logging.getLogger("comfyui")

RESTART_BASE_S = 0.5
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a child that ran this long resets the backoff
STOP_TIMEOUT_S = 10.0


class ComfySupervisor:
    def __init__(
        self,
        command: str,
        env: Mapping[str, str] | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._command = command
        self._env = dict(os.environ if env is None else env)
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def run(self) -> None:
        """Start the child and restart it whenever it exits, until `stop()`."""
        delay = RESTART_BASE_S
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping:
                return
            if self._on_exit is not None:
                self._on_exit(code)
            if time.monotonic() - started > STABLE_AFTER_S:
                delay = RESTART_BASE_S
            log.warning("ComfyUI exited with code %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)
            self.restarts += 1

    async def _run_once(self) -> int:
        log.info("starting ComfyUI: %s", self._command)
        self._process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            self._command,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            child_log.info("%s", line.decode(errors="replace").rstrip())
        return await self._process.wait()

    async def stop(self) -> None:
        """Stop the child (SIGTERM to its group, SIGKILL after a timeout) and do not restart."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            log.warning("ComfyUI did not stop within %.0fs; killing it", STOP_TIMEOUT_S)
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
