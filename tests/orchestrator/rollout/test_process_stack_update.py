"""`wgpu up --backend process --gpus ... --comfyui-cmd`: Redis, the hub and per GPU a ComfyUI
process (here the simulator, run by that command line) pinned with CUDA_VISIBLE_DEVICES beside
its worker, without Docker; then `wgpu update` and `wgpu drain` on that stack."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from comfy_worker.version import tree_version

from orchestrator.hub_client.client import HubClient
from orchestrator.stack.lifecycle import free_port_block
from tests.orchestrator.rollout.load import worker_tree
from tests.orchestrator.stack.helpers import need_valkey, processes_under, wgpu


def test_up_with_a_comfyui_command_then_update_and_drain(tmp_path: Path) -> None:
    need_valkey()
    state = tmp_path / "state"
    base = free_port_block(4)
    old = worker_tree(tmp_path / "old", marker="old")
    comfyui = f"{sys.executable} -m comfyui_sim --host 127.0.0.1 --port {{port}}"
    common = ["--backend", "process", "--state-dir", str(state)]
    up = wgpu(
        "up", "--gpus", "0,1", "--comfyui-cmd", comfyui, "--worker-src", str(old), *common,
        "--hub-port", str(base), "--port-base", str(base + 1), "--machine-id", "rig", cwd=tmp_path,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        hub_url = f"http://127.0.0.1:{base}"
        hub = HubClient(hub_url)
        entries = {w["id"]: w for w in hub.get_workers() if w["connected"]}
        assert set(entries) == {"rig-gpu0", "rig-gpu1"}
        assert {w["version"] for w in entries.values()} == {tree_version(old)}
        # Each ComfyUI process is pinned to its own GPU.
        pid = int((state / "workers" / "worker_gpu1" / "comfyui.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=1" in environ

        new = worker_tree(tmp_path / "new", marker="new")
        workers_dir = ["--backend", "process", "--base-dir", str(state / "workers")]
        update = wgpu(
            "update", "all", "--worker-src", str(new), "--ready-timeout", "30", "--json",
            "--machine-id", "rig", *workers_dir, cwd=tmp_path,
        )  # fmt: skip
        assert update.returncode == 0, update.stdout + update.stderr
        outcomes = json.loads(update.stdout)["results"]
        assert [r["outcome"] for r in outcomes] == ["updated", "updated"]
        entries = {w["id"]: w for w in hub.get_workers() if w["connected"]}
        assert {w["version"] for w in entries.values()} == {tree_version(new)}
        # Only the workers were replaced: the ComfyUI processes ran on.
        assert int((state / "workers" / "worker_gpu1" / "comfyui.pid").read_text()) == pid

        drain = wgpu("drain", "0", "--hub-url", hub_url, "--machine-id", "rig", cwd=tmp_path)
        assert drain.returncode == 0 and "rig-gpu0: drained" in drain.stdout, drain.stderr
        status = wgpu("status", "--json", "--hub-url", hub_url, *workers_dir, cwd=tmp_path)
        rows = {row["index"]: row for row in json.loads(status.stdout)["slots"]}
        assert rows[0]["drain_state"] == "drained" and rows[1]["drain_state"] is None
        assert rows[1]["worker_version"] == tree_version(new)
    finally:
        down = wgpu("down", *common, cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_under(state) == []
