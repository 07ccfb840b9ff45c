"""Helpers for the tests of `wgpu setup|start|stop|restart|status|logs` (this folder)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable
from typing import Any

import docker
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from tests.polling import eventually_blocking

# A stand-in worker: prints its environment, then idles until SIGTERM (which it answers at once).
SLEEPER_CMD = "env | sort; echo ready; trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"


def wgpu(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process, as a user would type it."""
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def wgpu_json(*args: str) -> Any:
    result = wgpu(*args, "--json")
    return json.loads(result.stdout)


def build_sleeper_image(
    client: docker.DockerClient, base_image: str, tag: str, extra_label: str = ""
) -> str:
    """A tiny image FROM the base whose command is SLEEPER_CMD (`extra_label` makes another id)."""
    label = f'LABEL wgpu.test.variant="{extra_label}"\n' if extra_label else ""
    dockerfile = f'FROM {base_image}\n{label}CMD ["sh", "-c", "{SLEEPER_CMD}"]\n'.encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    return tag


def wait_for(condition: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout_s`."""
    return eventually_blocking(condition, bool, timeout_s, 0.05, what)


class FollowedCommand:
    """`wgpu ARGS` in a subprocess whose output is read line by line (for `logs -f`)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, line: str, timeout_s: float = 10.0) -> None:
        wait_for(lambda: line in self.lines, timeout_s, what=f"{line!r} in {self.lines[-5:]}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def close_hub(hub: Any, timeout_s: float = 15.0) -> None:
    """Close a test hub here, so that a close that hangs fails this test instead of stalling
    the fixture teardown (seen: a hub whose workers had just stopped, closing forever)."""
    await asyncio.wait_for(hub.close(), timeout_s)
