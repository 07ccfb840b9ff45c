"""Processes this CLI started: whether one still runs, and stopping it politely, then firmly.

`terminate` is the one SIGTERM-then-SIGKILL sequence (the process backend signals a process
group, the process stack a PID, `stop_child` a `Popen`); `pid_alive` and `start_ticks` are the
one way to ask /proc whether a PID is still the process it was (a zombie counts as gone).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

POLL_S = 0.05
KILL_WAIT_S = 5.0  # after SIGKILL: only the kernel is left to wait for


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name, None when the process has gone or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if not fields or fields[0] == "Z" else fields


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None when it has gone.

    Kept beside a PID, it tells a reused PID from the process that was started."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        return _stat_fields(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is someone else's
    return True


def command_line(pid: int) -> str | None:
    """The process's command line, words joined by spaces; None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def reap(pid: int) -> None:
    """Collect our own exited child (else it lingers as a zombie while this CLI runs)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(alive: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def terminate(
    send: Callable[[signal.Signals], None], alive: Callable[[], bool], timeout_s: float
) -> None:
    """SIGTERM (so it can flush and hand work back), wait up to `timeout_s` for `alive()` to
    turn false, then SIGKILL and wait for the kernel. `send` ignores a process already gone."""
    send(signal.SIGTERM)
    if not _wait_gone(alive, timeout_s):
        send(signal.SIGKILL)
        _wait_gone(alive, KILL_WAIT_S)


def signal_pid(pid: int) -> Callable[[signal.Signals], None]:
    """A `send` for `terminate` that signals one PID."""

    def send(signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    return send


def stop_child(proc: subprocess.Popen[Any] | None, timeout_s: float) -> None:
    """SIGTERM `proc`, wait up to `timeout_s`, then SIGKILL; nothing when it has already exited."""
    if proc is None or proc.poll() is not None:
        return
    terminate(proc.send_signal, lambda: proc.poll() is None, timeout_s)


def terminate_pid(pid: int, timeout_s: float) -> None:
    """`terminate` for one PID that is not our child (no Popen to ask)."""
    terminate(signal_pid(pid), lambda: pid_alive(pid), timeout_s)
