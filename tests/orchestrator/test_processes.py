"""The one SIGTERM-then-SIGKILL sequence and the one PID-alive check, on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from orchestrator import processes

# Prints "ready" once its SIGTERM handler is in place, so the test never signals too early.
IGNORES_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
EXITS_ON_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); "
    "print('ready', flush=True); time.sleep(60)"
)


def _spawn(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_process_that_honours_sigterm_is_not_killed() -> None:
    proc = _spawn(EXITS_ON_SIGTERM)
    processes.stop_child(proc, timeout_s=10)
    assert proc.returncode == 3  # its own exit, not -SIGKILL


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    proc = _spawn(IGNORES_SIGTERM)
    started = time.monotonic()
    processes.stop_child(proc, timeout_s=0.3)
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started >= 0.3


def test_pid_alive_follows_the_process_and_counts_a_zombie_as_gone() -> None:
    proc = _spawn(IGNORES_SIGTERM)
    assert processes.pid_alive(proc.pid)
    ticks = processes.start_ticks(proc.pid)
    assert ticks is not None and ticks > 0
    assert "time.sleep" in (processes.command_line(proc.pid) or "")
    proc.kill()
    # Not reaped yet: a zombie. Wait for the kernel to mark it, then check before reaping.
    deadline = time.monotonic() + 10
    while processes.pid_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not processes.pid_alive(proc.pid)
    assert processes.start_ticks(proc.pid) is None
    proc.wait()


def test_terminate_pid_stops_a_process_that_is_not_a_popen_of_ours() -> None:
    proc = _spawn(IGNORES_SIGTERM)

    def alive() -> bool:
        return proc.poll() is None  # reaps it, as the owner would

    processes.terminate(processes.signal_pid(proc.pid), alive, timeout_s=0.2)
    assert proc.returncode == -signal.SIGKILL
    assert not processes.pid_alive(proc.pid)
    assert not processes.pid_alive(0)
