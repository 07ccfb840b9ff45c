"""`wgpu up` / `wgpu down` without Docker: local Redis, the hub and simulated slots as processes
that outlive the CLI, found again and stopped by `wgpu down`."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.backends.common import port_answers
from orchestrator.hub_client.client import HubClient
from orchestrator.hub_client.job_watch import load_workflow
from orchestrator.stack.lifecycle import free_port_block
from tests.orchestrator.stack.helpers import need_valkey, processes_under, wgpu
from tests.paths import REPO
from tests.polling import eventually_blocking


def test_up_runs_detached_processes_and_down_stops_them(tmp_path: Path) -> None:
    need_valkey()
    state = tmp_path / "state"
    base = free_port_block(3)
    common = ["--backend", "process", "--state-dir", str(state)]
    up = wgpu(
        "up", "--simulate", "2", *common, "--hub-port", str(base), "--port-base", str(base + 1),
        "--machine-id", "proc", cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    hub_url = f"http://127.0.0.1:{base}"
    assert f"hub: {hub_url}" in up.stdout and f"dashboard: {hub_url}/" in up.stdout
    # The CLI has exited; the stack runs on.
    hub = HubClient(hub_url)
    workers = {w["id"] for w in hub.get_workers() if w["connected"]}
    assert workers == {"proc-gpu0", "proc-gpu1"}
    recorded = json.loads((state / "stack.json").read_text())
    assert recorded["hub_url"] == hub_url and recorded["redis_pid"] and recorded["hub_pid"]
    job = hub.submit(load_workflow(REPO / "examples" / "quick.json"))
    assert job["status"] == "queued"

    down = wgpu("down", *common, cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "removed 6" in down.stdout
    assert not port_answers(base) and not port_answers(base + 1) and not port_answers(base + 2)
    assert processes_under(state) == []
    assert not (state / "stack.json").exists()
    assert (state / "redis").is_dir()  # Redis' data is kept without --volumes
    again = wgpu("down", *common, "--volumes", cwd=tmp_path)
    assert again.returncode == 0 and "nothing was running" in again.stdout
    assert not (state / "redis").exists()


def test_up_sim_models_gives_each_simulated_slot_its_model_files(tmp_path: Path) -> None:
    need_valkey()
    state = tmp_path / "state"
    base = free_port_block(3)
    common = ["--backend", "process", "--state-dir", str(state)]
    up = wgpu(
        "up", "--simulate", "2", *common, "--hub-port", str(base), "--port-base", str(base + 1),
        "--machine-id", "mdl",
        "--sim-models", "0:checkpoints=a.safetensors;1:checkpoints=b.safetensors,c.safetensors",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        hub_url = f"http://127.0.0.1:{base}"
        hub = HubClient(hub_url)
        eventually_blocking(
            hub.get_workers,
            lambda workers: len(workers) == 2 and all(w["models"] is not None for w in workers),
            within=30,
            what="every worker reporting its models",
        )
        listed = wgpu("models", "--hub-url", hub_url, "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        on_disk = {r["model"]: r["on_disk"] for r in json.loads(listed.stdout)["models"]}
        # Each slot's simulator has exactly its own files (its worker reported them).
        assert on_disk == {
            "checkpoints/a.safetensors": ["mdl-gpu0"],
            "checkpoints/b.safetensors": ["mdl-gpu1"],
            "checkpoints/c.safetensors": ["mdl-gpu1"],
        }
    finally:
        down = wgpu("down", *common, cwd=tmp_path)
        assert down.returncode == 0, down.stdout + down.stderr


def test_up_refuses_sim_models_for_a_slot_it_does_not_simulate(tmp_path: Path) -> None:
    up = wgpu(
        "up", "--simulate", "1", "--backend", "process", "--state-dir", str(tmp_path / "s"),
        "--sim-models", "1:checkpoints=b.safetensors", cwd=tmp_path,
    )  # fmt: skip
    assert up.returncode != 0
    assert "--sim-models names slot 1, but --simulate 1 has 0..0" in up.stdout + up.stderr
