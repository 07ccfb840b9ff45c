"""`wgpu fleet update`: host by host, stopping at the first host that rolls back. Two "hosts"
here are two process backends (machine ids a and b) on one hub; the Docker path of each host is
what `wgpu update` runs, tested on the test engine in test_docker_update.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from comfy_worker.version import tree_version

from orchestrator.backends.process_backend import ProcessBackend
from orchestrator.fleet.inventory import HostSpec, Inventory
from orchestrator.hub_client.client import HubClient
from orchestrator.rollout.fleet_update import fleet_update
from orchestrator.rollout.update import Change, UpdateSettings
from orchestrator.rollout.worker_src import resolve_worker_src
from orchestrator.stack.lifecycle import free_port_block
from tests.fixtures.hub import HubFactory
from tests.orchestrator.backends.helpers import wgpu
from tests.orchestrator.rollout.load import worker_tree, workers


async def test_hosts_update_in_order_and_a_rollback_stops_the_rest(
    tmp_path: Path, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(lease_s=10.0, heartbeat_s=1.0)
    old = worker_tree(tmp_path / "old", marker="old")
    for machine in ("a", "b"):
        started = await asyncio.to_thread(
            wgpu, "start", "--simulate", "1", "--backend", "process", "--hub-url", hub.url,
            "--base-dir", str(tmp_path / machine), "--machine-id", machine,
            "--worker-src", str(old), "--port-base", str(free_port_block(1)),
        )  # fmt: skip
        assert started.exit_code == 0, started.output
    inventory = Inventory(
        "test", [HostSpec(machine_id=m, hub_url=hub.url, simulate=1) for m in ("a", "b")]
    )

    def connect(host: HostSpec) -> ProcessBackend:
        return ProcessBackend(tmp_path / host.machine_id, machine_id=host.machine_id)

    settings = UpdateSettings(ready_timeout_s=30.0, containers=False)
    try:
        new = resolve_worker_src(worker_tree(tmp_path / "new", marker="new"))
        hosts = await asyncio.to_thread(
            fleet_update, inventory, Change(worker_src=new), settings, connect, HubClient
        )
        assert [(h.machine_id, h.outcome) for h in hosts] == [("a", "updated"), ("b", "updated")]
        versions = {w["id"]: w["version"] for w in await workers(hub.url) if w["connected"]}
        assert versions == {"a-gpu0": tree_version(new.path), "b-gpu0": tree_version(new.path)}

        broken = resolve_worker_src(worker_tree(tmp_path / "broken", broken=True))
        settings.ready_timeout_s = 4.0
        hosts = await asyncio.to_thread(
            fleet_update, inventory, Change(worker_src=broken), settings, connect, HubClient
        )
        assert [(h.machine_id, h.outcome) for h in hosts] == [("a", "failed"), ("b", "skipped")]
        assert [g.step for g in hosts[0].gpus] == ["rolled back"]
        assert hosts[1].gpus == [] and "a did not update" in hosts[1].detail
        versions = {w["id"]: w["version"] for w in await workers(hub.url) if w["connected"]}
        assert versions == {"a-gpu0": tree_version(new.path), "b-gpu0": tree_version(new.path)}
    finally:
        for machine in ("a", "b"):
            await asyncio.to_thread(
                wgpu, "stop", "-t", "10", "--backend", "process",
                "--base-dir", str(tmp_path / machine),
            )  # fmt: skip


def test_fleet_update_needs_something_to_change(tmp_path: Path) -> None:
    inventory = tmp_path / "fleet.toml"
    inventory.write_text('[[hosts]]\nmachine_id = "a"\n')
    result = wgpu("fleet", "update", "--inventory", str(inventory))
    assert result.exit_code == 2 and "nothing to update" in result.stderr
