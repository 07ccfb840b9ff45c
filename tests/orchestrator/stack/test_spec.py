"""One description of a slot's containers, rendered to the Engine API and to compose: both
renderings say the same thing, without a Docker daemon."""

from __future__ import annotations

import docker
import pytest

from orchestrator.backends.base import ROLE_COMFYUI, HubAddress, WorkerSettings, plan_slots
from orchestrator.backends.engine import create_args
from orchestrator.gpus.nvml import GpuDevice
from orchestrator.gpus.slots import select_slots
from orchestrator.stack.compose_render import (
    StackOptions,
    compose_service,
    interpolate_all,
    render_stack,
    stack_specs,
)
from orchestrator.stack.compose_runner import spec_of
from orchestrator.stack.spec import (
    LABEL_GPU_INDEX,
    LABEL_GPU_UUID,
    LABEL_ROLE,
    ContainerSpec,
    slot_containers,
)

DEVICES = [GpuDevice(i, f"GPU-{i}000", "NVIDIA H100", 81559) for i in range(4)]


def gpu3_containers(**settings: object) -> list[ContainerSpec]:
    selection = select_slots("GPU-3000", None, DEVICES)
    worker_settings = WorkerSettings(
        machine_id="box",
        hub=HubAddress("http://10.0.0.5:8001"),
        image="wgpu-local/comfy-worker:t",
        comfyui_image="comfy:t",
        **settings,  # type: ignore[arg-type]
    )
    (plan,) = plan_slots(selection.slots, worker_settings, selection.num_gpus)
    return slot_containers(plan)


def test_a_slot_named_by_uuid_is_pinned_to_that_gpu_under_its_own_index() -> None:
    comfyui, worker = gpu3_containers()
    for spec in (comfyui, worker):
        assert spec.gpu is not None and spec.gpu.device_id == "GPU-3000"
        assert spec.labels[LABEL_GPU_INDEX] == "3" and spec.labels[LABEL_GPU_UUID] == "GPU-3000"
    assert (comfyui.name, worker.name) == ("comfyui-gpu3", "comfy-worker-gpu3")
    assert worker.env["GPU_ID"] == "3" and worker.env["NUM_GPUS"] == "4"
    assert worker.stop_timeout_s == 40 and comfyui.stop_timeout_s is None
    assert worker.labels[LABEL_ROLE] == "worker" and comfyui.image == "comfy:t"


def test_the_engine_rendering_carries_every_part_of_the_spec() -> None:
    _, worker = gpu3_containers()
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.43")  # no daemon
    args = create_args(api, worker)
    assert args["name"] == "comfy-worker-gpu3" and args["image"] == worker.image
    assert args["environment"] == dict(worker.env) and args["labels"] == dict(worker.labels)
    assert args["stop_timeout"] == 40 and args["stop_signal"] == "SIGTERM"
    host = args["host_config"]
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"] == {"Name": "unless-stopped"}
    [request] = host["DeviceRequests"]
    assert (request["Driver"], request["DeviceIDs"]) == ("nvidia", ["GPU-3000"])
    assert request["Capabilities"] == [["gpu"]]


@pytest.mark.parametrize("simulate", [0, 2])
def test_compose_and_the_engine_path_of_wgpu_up_describe_the_same_containers(
    simulate: int,
) -> None:
    selection = select_slots("GPU-3000,GPU-1000", None, DEVICES)
    options = StackOptions(
        gpus=() if simulate else tuple(selection.slots),
        simulate=simulate,
        num_gpus=0 if simulate else selection.num_gpus,
        worker_token="t0ken",
        sim_node_time_s=0.01,
    )
    document = interpolate_all(render_stack(options), {})
    volumes = {key: value["name"] for key, value in document["volumes"].items()}
    for name, service in document["services"].items():
        spec = spec_of(service, volumes)
        # What wgpu up creates from the file, rendered back, is the file's service.
        expected = {k: v for k, v in service.items() if k != "depends_on"}
        rendered = compose_service(spec)
        if "volumes" in expected:  # the runner resolves volume keys to their names
            rendered["volumes"] = expected["volumes"]
        assert rendered == expected, name


def test_the_stack_gives_each_simulator_its_sim_models() -> None:
    options = StackOptions(
        simulate=2, num_gpus=0, sim_models=((1, ("checkpoints=b.safetensors", "loras=x.pt")),)
    )
    specs = stack_specs(options)
    commands = {name: spec.command for name, spec in specs.items() if spec.role == ROLE_COMFYUI}
    assert len(commands) == 2
    first, second = (commands[name] or () for name in sorted(commands))
    assert "--models" not in first
    assert list(second[-4:]) == ["--models", "checkpoints=b.safetensors", "--models", "loras=x.pt"]
