"""`wgpu demo`, the README's main command, run as a user runs it: a real process tree.

Redis (the embedded Valkey, as on a fresh machine), the hub, simulated slots with their
workers; the examples submitted, followed and downloaded; then everything stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.backends.common import port_answers
from tests.fixtures.services import service_missing
from tests.orchestrator.stack.helpers import need_valkey, processes_under
from tests.paths import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def demo_env(redis: str = "valkey") -> dict[str, str]:
    return {**os.environ, "WGPU_LOCAL_REDIS": redis, "COLUMNS": "200", "TERM": "dumb"}


def wgpu_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def run_demo(cwd: Path, *args: str, redis: str = "valkey", expect_exit: int) -> str:
    """Run `wgpu demo ARGS` in `cwd` to its end; assert its exit code and return its output."""
    result = subprocess.run(
        wgpu_cmd("demo", *args),
        cwd=cwd,
        env=demo_env(redis),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == expect_exit, output
    return output


def state_dir_of(output: str) -> Path:
    match = re.search(r"state in (\S+?)\)", output)
    assert match, output
    return Path(match.group(1))


def hub_port_of(output: str) -> int:
    match = re.search(r"submitted \d+ job\(s\) to http://127\.0\.0\.1:(\d+)", output)
    assert match, output
    return int(match.group(1))


def test_demo_runs_every_example_to_images_on_disk_and_stops_everything(tmp_path: Path) -> None:
    need_valkey()
    out_dir = tmp_path / "out"
    output = run_demo(tmp_path, "--slots", "2", "--out", str(out_dir), expect_exit=0)
    assert "valkey on port" in output  # the embedded default, as on a fresh machine
    examples = sorted(p.stem for p in (REPO / "examples").glob("*.json"))
    assert examples, "examples/ holds the demo's workflows"
    for stem in examples:
        dirs = list(out_dir.glob(f"{stem}-*"))
        assert len(dirs) == 1, (stem, list(out_dir.iterdir()))
        images = list(dirs[0].iterdir())
        assert images and all(p.read_bytes().startswith(PNG_MAGIC) for p in images)
    assert f"all {len(examples)} job(s) succeeded" in output
    # Both slots did work: the status table ran with each worker's done count.
    assert "demo-gpu0" in output or "demo-gpu1" in output
    state_dir = state_dir_of(output)
    assert not state_dir.exists()  # removed after a clean run
    assert processes_under(state_dir) == []
    assert not port_answers(hub_port_of(output))


def test_demo_fails_when_a_job_fails(tmp_path: Path) -> None:
    need_valkey()
    broken = tmp_path / "broken.json"
    fault = {"class_type": "WgpuSimFault", "inputs": {"mode": "execution_error"}}
    broken.write_text(json.dumps({"1": fault}))
    quick = REPO / "examples" / "quick.json"
    output = run_demo(
        tmp_path, "--slots", "1", "-w", str(quick), "-w", str(broken), "-o", "out", expect_exit=1
    )
    assert re.search(r"x broken\.json \w+: (failed|dead)", output), output
    assert list((tmp_path / "out").glob("quick-*/*.png"))
    state_dir = state_dir_of(output)
    assert state_dir.exists()  # logs kept for a failed run
    assert processes_under(state_dir) == []


def test_ctrl_c_stops_every_part(tmp_path: Path) -> None:
    need_valkey()
    proc = subprocess.Popen(
        wgpu_cmd("demo", "--slots", "2", "--node-time", "5", "-o", "out"),
        cwd=tmp_path,
        env=demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("submitted"):
                break
            assert time.monotonic() < deadline, "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert re.search(r"stopped 6 process\(es\)", output), output
    state_dir = state_dir_of(output)
    assert processes_under(state_dir) == []
    assert not port_answers(hub_port_of(output))
    assert not list((tmp_path / "out").glob("*/*.png"))  # nothing finished in 5 s per node


@pytest.mark.parametrize("redis", ["redis"])
def test_demo_on_redis_server_when_installed(tmp_path: Path, redis: str) -> None:
    from orchestrator.errors import RedisUnavailable
    from orchestrator.stack.local_redis import find_server_binary

    try:
        find_server_binary("redis")
    except RedisUnavailable as exc:
        service_missing("redis-server", str(exc))
    output = run_demo(
        tmp_path, "--slots", "1", "-o", str(tmp_path / "o"), redis=redis, expect_exit=0
    )
    assert "redis on port" in output
    assert len(list((tmp_path / "o").glob("*/*.png"))) == len(
        list((REPO / "examples").glob("*.json"))
    )
