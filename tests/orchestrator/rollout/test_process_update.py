"""`wgpu update|drain|resume --backend process`: the rolling update on a host without Docker.
Real hub and Redis, real simulators and workers as processes, workers run from worker trees
(`--worker-src`), a steady load of 2 s jobs throughout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from comfy_worker.version import tree_version

from orchestrator.console import ExitCode
from orchestrator.stack.lifecycle import free_port_block
from tests.fixtures.hub import HubFactory
from tests.orchestrator.backends.helpers import wgpu
from tests.orchestrator.rollout.load import SteadyLoad, worker_tree, workers
from tests.polling import eventually

GPUS = 4


@pytest.fixture
async def fleet(tmp_path: Path, hub_factory: HubFactory) -> AsyncIterator[dict[str, object]]:
    """4 simulated GPUs as processes, workers from tree `old`, on a hub; stopped afterwards."""
    hub = await hub_factory(lease_s=10.0, heartbeat_s=1.0)
    base = tmp_path / "workers"
    old = worker_tree(tmp_path / "old", marker="old")
    common = ["--backend", "process", "--base-dir", str(base), "--machine-id", "pod"]
    started = await asyncio.to_thread(
        wgpu, "start", "--simulate", str(GPUS), "--hub-url", hub.url, "--worker-src", str(old),
        "--port-base", str(free_port_block(GPUS)), *common,
    )  # fmt: skip
    assert started.exit_code == 0, started.output
    yield {"hub": hub, "common": common, "old": old, "tmp": tmp_path}
    await asyncio.to_thread(
        wgpu, "stop", "-t", "10", "--backend", "process", "--base-dir", str(base)
    )


def versions(entries: list[dict[str, object]]) -> dict[str, object]:
    return {str(w["id"]): w["version"] for w in entries if w["connected"]}


async def test_update_all_moves_every_worker_to_the_new_tree_under_load(
    fleet: dict[str, object],
) -> None:
    hub_url, common = fleet["hub"].url, fleet["common"]  # type: ignore[attr-defined]
    tmp = fleet["tmp"]
    assert isinstance(tmp, Path) and isinstance(common, list)
    names = {f"pod-gpu{i}" for i in range(GPUS)}
    load = SteadyLoad(hub_url, names)
    await load.start()
    await load.wait_all_busy()
    old_version = tree_version(fleet["old"])  # type: ignore[arg-type]
    assert set(versions(await workers(hub_url)).values()) == {old_version}

    new = worker_tree(tmp / "new", marker="new")
    load.sampling = True
    result = await asyncio.to_thread(
        wgpu, "update", "all", "--worker-src", str(new), "--ready-timeout", "30", "--json", *common
    )
    load.sampling = False
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.stdout)["results"]
    assert [r["outcome"] for r in outcomes] == ["updated"] * GPUS
    assert {w: v for w, v in versions(await workers(hub_url)).items() if w in names} == {
        name: tree_version(new) for name in names
    }
    done = await load.check()
    print(f"process update: {done}")  # the numbers for the report
    assert done.statuses == {"succeeded": done.jobs}  # 0 lost, 0 failed
    assert done.attempts == {1: done.jobs} and done.histories == {1: done.jobs}  # 0 run twice
    assert done.samples > 20 and done.min_busy >= GPUS - 1


async def test_a_broken_version_rolls_one_gpu_back_and_stops(fleet: dict[str, object]) -> None:
    hub_url, common, tmp = fleet["hub"].url, fleet["common"], fleet["tmp"]  # type: ignore[attr-defined]
    assert isinstance(tmp, Path) and isinstance(common, list)
    names = {f"pod-gpu{i}" for i in range(GPUS)}
    old_version = tree_version(fleet["old"])  # type: ignore[arg-type]
    load = SteadyLoad(hub_url, names)
    await load.start()
    await load.wait_all_busy()
    broken = worker_tree(tmp / "broken", broken=True)
    result = await asyncio.to_thread(
        wgpu, "update", "all", "--worker-src", str(broken), "--ready-timeout", "4", "--json",
        *common,
    )  # fmt: skip
    assert result.exit_code == ExitCode.PARTIAL, result.output
    outcomes = [r["outcome"] for r in json.loads(result.stdout)["results"]]
    assert outcomes == ["rolled back", "skipped", "skipped", "skipped"]
    # Every worker is on the old version, in service, and the load goes on everywhere.
    await load.wait_all_busy()
    entries = [w for w in await workers(hub_url) if w["id"] in names]
    assert {w["version"] for w in entries} == {old_version}
    assert all(w["drain"] is None for w in entries)
    done = await load.check()
    assert done.statuses == {"succeeded": done.jobs}


async def test_drain_and_resume_survive_a_worker_restart(fleet: dict[str, object]) -> None:
    hub_url, common = fleet["hub"].url, fleet["common"]  # type: ignore[attr-defined]
    assert isinstance(common, list)
    names = {f"pod-gpu{i}" for i in range(GPUS)}
    load = SteadyLoad(hub_url, names)
    await load.start()
    await load.wait_all_busy()
    hub_args = ["--hub-url", hub_url, "--machine-id", "pod"]
    drained = await asyncio.to_thread(wgpu, "drain", "1", *hub_args)
    assert drained.exit_code == 0 and "pod-gpu1: draining" in drained.stdout, drained.output

    async def gpu1() -> dict[str, Any]:
        return next(w for w in await workers(hub_url) if w["id"] == "pod-gpu1")

    # Its running job finishes first.
    await eventually(gpu1, lambda w: (w["drain"] or {}).get("state") == "drained", within=20)
    restarted = await asyncio.to_thread(wgpu, "restart", "1", "-t", "10", *common[:4])
    assert restarted.exit_code == 0, restarted.output
    # Reconnected (a new process), still drained: idle while jobs wait in the queue.
    await eventually(gpu1, lambda w: w["connected"] and w["status"] == "idle", within=30)
    for _ in range(10):
        entry = await gpu1()
        assert entry["status"] == "idle" and entry["drain"]["state"] == "drained"
        await asyncio.sleep(0.1)
    status = await asyncio.to_thread(wgpu, "status", "--json", "--hub-url", hub_url, *common[:4])
    rows = {row["index"]: row for row in json.loads(status.stdout)["slots"]}
    assert rows[1]["drain_state"] == "drained" and rows[0]["drain_state"] is None
    resumed = await asyncio.to_thread(wgpu, "resume", "1", *hub_args)
    assert resumed.exit_code == 0 and "pod-gpu1: resumed" in resumed.stdout
    await load.wait_all_busy()
    done = await load.check()
    assert done.statuses == {"succeeded": done.jobs}


async def test_max_unavailable_replaces_that_many_gpus_at_once(fleet: dict[str, Any]) -> None:
    from orchestrator.backends.process_backend import ProcessBackend
    from orchestrator.hub_client.client import HubClient
    from orchestrator.rollout.update import (
        Change,
        RollingUpdate,
        SlotUpdate,
        UpdateSettings,
        prepare_update,
    )
    from orchestrator.rollout.worker_src import resolve_worker_src

    common, tmp = fleet["common"], fleet["tmp"]
    backend = ProcessBackend(Path(common[common.index("--base-dir") + 1]), machine_id="pod")
    new = resolve_worker_src(worker_tree(tmp / "new", marker="new"))
    settings = UpdateSettings(max_unavailable=2, ready_timeout_s=30.0, containers=False)
    pairs = prepare_update(backend, Change(worker_src=new), None, containers=False)
    events: list[tuple[int, str]] = []

    def record(update: SlotUpdate) -> None:
        events.append((update.index, str(update.step)))

    engine = RollingUpdate(backend, HubClient(fleet["hub"].url), settings, on_change=record)
    updates = await asyncio.to_thread(engine.run, pairs)
    assert [str(u.step) for u in updates] == ["updated"] * GPUS
    order = [event for event in events if event[1] in ("draining", "updated")]
    first = order.index((0, "updated"))
    second_wave = order.index((2, "draining"))
    # GPUs 0 and 1 were out together; 2 and 3 waited until both were back.
    assert order.index((1, "draining")) < first
    assert second_wave > max(order.index((0, "updated")), order.index((1, "updated")))
    assert order.index((3, "draining")) < order.index((2, "updated"))
