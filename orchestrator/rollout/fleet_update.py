"""`wgpu fleet update`: the rolling update of `wgpu update`, host by host over an inventory.

Hosts go in inventory order; on each, GPUs are replaced as `wgpu update` does (drain, replace,
wait until ready, resume). The first host where a GPU rolls back (or the engine cannot be
reached) stops the update: later hosts are not touched. With `--worker-src`, DIR must exist at
the same path on every host (the engine bind-mounts it from its own filesystem); the version
waited for is the one of the local DIR, so a host whose copy differs rolls back instead of
running other code than asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import BackendError
from orchestrator.fleet.inventory import HostSpec, Inventory
from orchestrator.rollout.update import (
    FINAL_OK,
    Change,
    DrainingHub,
    Replaceable,
    RollingUpdate,
    SlotUpdate,
    UpdateError,
    UpdateSettings,
    prepare_update,
)


@dataclass
class HostUpdate:
    machine_id: str
    docker_host: str | None
    outcome: str = "waiting"  # updated | failed | skipped
    detail: str = ""
    gpus: list[SlotUpdate] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == "updated"

    def to_json(self) -> dict[str, Any]:
        return {
            "machine_id": self.machine_id,
            "docker_host": self.docker_host,
            "outcome": self.outcome,
            "detail": self.detail,
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }


HostConnector = Callable[[HostSpec], Replaceable]
HubFactory = Callable[[str], DrainingHub]


def fleet_update(
    inventory: Inventory,
    change: Change,
    settings: UpdateSettings,
    connect: HostConnector,
    hub_for: HubFactory,
    on_change: Callable[[HostUpdate, SlotUpdate], None] = lambda host, gpu: None,
) -> list[HostUpdate]:
    hosts = [HostUpdate(h.machine_id, h.docker_host) for h in inventory.hosts]
    for position, (spec, host) in enumerate(zip(inventory.hosts, hosts, strict=True)):
        _update_host(spec, host, change, settings, connect, hub_for, on_change)
        if not host.ok:
            for later in hosts[position + 1 :]:
                later.outcome, later.detail = "skipped", f"{host.machine_id} did not update"
            break
    return hosts


def _update_host(
    spec: HostSpec,
    host: HostUpdate,
    change: Change,
    settings: UpdateSettings,
    connect: HostConnector,
    hub_for: HubFactory,
    on_change: Callable[[HostUpdate, SlotUpdate], None],
) -> None:
    try:
        backend = connect(spec)
    except BackendError as exc:
        host.outcome, host.detail = "failed", str(exc)
        return
    try:
        pairs = prepare_update(backend, change, None, settings.containers)
        engine = RollingUpdate(
            backend, hub_for(spec.hub_url), settings, on_change=lambda gpu: on_change(host, gpu)
        )
        host.gpus = engine.run(pairs)
    except (UpdateError, BackendError) as exc:
        host.outcome, host.detail = "failed", str(exc)
        return
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    failed = [gpu for gpu in host.gpus if gpu.step not in FINAL_OK]
    if failed:
        host.outcome = "failed"
        host.detail = f"gpu{failed[0].index} {failed[0].step}: {failed[0].detail}"
    else:
        host.outcome = "updated"


def summary(hosts: Sequence[HostUpdate]) -> tuple[int, int]:
    """(hosts updated, hosts not updated)."""
    done = sum(1 for h in hosts if h.ok)
    return done, len(hosts) - done
