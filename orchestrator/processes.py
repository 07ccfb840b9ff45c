"""Stopping a child process this process started: politely first, firmly when it lingers."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_child(proc: subprocess.Popen[Any] | None, timeout_s: float) -> None:
    """SIGTERM `proc`, wait up to `timeout_s`, then SIGKILL; nothing when it has already exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM lets it flush and clean up before it exits
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
