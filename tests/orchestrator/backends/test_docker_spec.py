"""What the docker backend asks the engine for, per slot, checked without a daemon: each slot's
containers are pinned to that slot's GPU (by UUID), carry its env and labels, and a stop waits
longer than the worker's grace. The daemon tests (test_orch_docker.py) check the engine's side."""

from __future__ import annotations

import docker
import pytest
from comfy_worker.config import WorkerConfig

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    HubAddress,
    WorkerSettings,
    plan_slots,
    slot_plan_from_json,
)
from orchestrator.backends.docker_backend import DockerBackend
from orchestrator.gpus.slots import select_slots, simulated_slots
from tests.orchestrator.gpus.devices import DEVICES
from wgpu_protocol.credentials import worker_credential


def _backend() -> DockerBackend:
    # An explicit API version: the client asks the (absent) daemon nothing.
    return DockerBackend(docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41"))


def _settings(**overrides: object) -> WorkerSettings:
    values: dict[str, object] = {
        "machine_id": "box7",
        "hub": HubAddress("http://hub.internal:8001"),
        "image": "wgpu-worker:test",
        "comfyui_image": "comfyui:test",
        "worker_token": "wt-secret",
    }
    values.update(overrides)
    return WorkerSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("gpus", ["0,2", "GPU-bbb", "2,1,0"])
def test_each_slot_is_pinned_to_its_own_gpu_with_its_env_and_labels(gpus: str) -> None:
    selection = select_slots(gpus, None, DEVICES)
    plans = plan_slots(selection.slots, _settings(), selection.num_gpus)
    backend = _backend()
    pinned = []
    for plan in plans:
        device = DEVICES[plan.slot.index]
        assert plan.comfyui is not None
        for service in (plan.worker, plan.comfyui):
            spec = backend.container_spec(plan, service, config_hash="h")
            (request,) = spec["host_config"]["DeviceRequests"]
            assert request["Driver"] == "nvidia" and request["Capabilities"] == [["gpu"]]
            assert request["DeviceIDs"] == [device.uuid]  # by UUID: stable across reboots
            pinned.append((service.role, request["DeviceIDs"][0]))
            labels = dict(spec["labels"])
            # A worker also carries the plan its slot was started with (what `wgpu update`
            # changes one thing of).
            kept = labels.pop("wgpu.slot_plan", None)
            assert (kept is not None) == (service.role == ROLE_WORKER)
            if kept is not None:
                assert slot_plan_from_json(kept) == plan
            assert labels == {
                "wgpu.managed": "true",
                "wgpu.role": service.role,
                "wgpu.machine_id": "box7",
                "wgpu.gpu_index": str(device.index),
                "wgpu.gpu_uuid": device.uuid,
                "wgpu.config_hash": "h",
                "wgpu.simulated": "false",
            }
            suffix = f"gpu{device.index}"
            expected_name = "comfy-worker-" if service.role == ROLE_WORKER else "comfyui-"
            assert spec["name"] == expected_name + suffix
        env = backend.container_spec(plan, plan.worker, "h")["environment"]
        assert env["GPU_ID"] == str(device.index)
        assert env["EXECUTION_SERVICE_PORT"] == str(8188 + device.index)  # 8188 + GPU_ID
        assert (env["MACHINE_ID"], env["NUM_GPUS"]) == ("box7", str(len(DEVICES)))
        assert (env["REDIS_API_HOST"], env["REDIS_API_PORT"]) == ("hub.internal", "8001")
        assert "WORKER_TOKEN" not in env  # each worker gets its own credential
        own_id = f"box7-gpu{device.index}"
        assert env["WORKER_CREDENTIAL"] == worker_credential("wt-secret", own_id)
    # Every container of a slot on that slot's GPU, and no two slots on one GPU.
    for role in (ROLE_WORKER, ROLE_COMFYUI):
        ids = [device for r, device in pinned if r == role]
        assert ids == [DEVICES[p.slot.index].uuid for p in plans] and len(set(ids)) == len(ids)


def test_simulated_slots_ask_for_no_gpu() -> None:
    selection = simulated_slots(2)
    plans = plan_slots(selection.slots, _settings(comfyui_image=None), selection.num_gpus)
    backend = _backend()
    for plan in plans:
        assert plan.comfyui is not None
        for service in (plan.worker, plan.comfyui):
            spec = backend.container_spec(plan, service, "h")
            assert "DeviceRequests" not in spec["host_config"]
            assert spec["labels"]["wgpu.simulated"] == "true"
            assert spec["labels"]["wgpu.gpu_index"] == str(plan.slot.index)


@pytest.mark.parametrize("grace", [None, "0.5", "30", "120", "7.25"])
def test_a_stop_waits_longer_than_the_workers_grace(grace: str | None) -> None:
    """The promise (architecture.md): `docker stop` never kills a job inside the worker's grace
    period. The grace is what the worker itself reads from the same environment."""
    extra = () if grace is None else (("WORKER_GRACE_S", grace),)
    selection = select_slots("1", None, DEVICES)
    (plan,) = plan_slots(selection.slots, _settings(extra_env=extra), selection.num_gpus)
    spec = _backend().container_spec(plan, plan.worker, "h")
    worker_grace = WorkerConfig.from_env(spec["environment"]).grace_s
    assert isinstance(spec["stop_timeout"], int)  # the engine takes whole seconds
    assert spec["stop_timeout"] > worker_grace
    assert spec["stop_signal"] == "SIGTERM"  # the signal the worker's grace starts on
