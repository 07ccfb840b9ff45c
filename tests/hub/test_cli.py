"""`wgpu hub` as users run it: a separate process configured by flags and environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.stack.local_redis import free_port

pytestmark = pytest.mark.redis


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as response:
            return int(response.status)
    except OSError:
        return 0


def test_wgpu_hub_serves_until_sigterm(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, OUTPUTS_DIR=str(tmp_path), LEASE_S="7")
    wgpu = Path(sys.executable).parent / "wgpu"
    proc = subprocess.Popen(
        [str(wgpu), "hub", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while _health(url) != 200:
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the hub never became healthy"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0].decode()
        assert proc.returncode == 0, output
        assert f"listening on 127.0.0.1:{port}" in output and "hub stopping" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_wgpu_hub_rejects_bad_settings(redis_url: str) -> None:
    env = dict(os.environ, REDIS_URL=redis_url, LEASE_S="soon")
    wgpu = Path(sys.executable).parent / "wgpu"
    result = subprocess.run(
        [str(wgpu), "hub", "--port", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "LEASE_S='soon'" in result.stderr and result.stderr.count("\n") <= 2
