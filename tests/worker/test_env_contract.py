"""What a launcher writes (wgpu_protocol.worker_env) is what the worker reads (WorkerConfig)."""

from __future__ import annotations

import pytest
from comfy_worker.config import WorkerConfig

from wgpu_protocol import ports, worker_env


@pytest.mark.parametrize("gpu_id", [0, 3])
def test_the_environment_a_launcher_writes_configures_the_worker_it_means(gpu_id: int) -> None:
    env = worker_env.worker_environment(
        machine_id="box-a",
        gpu_id=gpu_id,
        num_gpus=4,
        hub_host="10.0.0.5",
        hub_port=9001,
        comfyui_port_base=9100,
        worker_token="secret",
    )
    config = WorkerConfig.from_env(env)
    assert config.worker_id == ports.worker_id("box-a", gpu_id) == f"box-a-gpu{gpu_id}"
    assert (config.gpu_id, config.num_gpus) == (gpu_id, 4)
    assert config.hub_url == "ws://10.0.0.5:9001"
    assert config.comfyui_port == ports.comfyui_port(gpu_id, 9100) == 9100 + gpu_id
    assert config.comfyui_url == f"http://127.0.0.1:{9100 + gpu_id}"
    assert config.worker_token == "secret"


def test_a_full_hub_url_wins_over_host_and_port() -> None:
    env = worker_env.worker_environment(
        machine_id="m", gpu_id=0, num_gpus=1, hub_url="https://hub.example/prefix"
    )
    assert WorkerConfig.from_env(env).hub_url == "wss://hub.example/prefix"


def test_the_worker_defaults_are_the_protocol_defaults() -> None:
    config = WorkerConfig.from_env({"MACHINE_ID": "m", "GPU_ID": "2", "NUM_GPUS": "4"})
    assert config.hub_url == f"ws://{worker_env.DEFAULT_HUB_HOST}:{ports.HUB_PORT}"
    assert config.comfyui_port == ports.COMFYUI_PORT_BASE + 2
    assert config.grace_s == worker_env.DEFAULT_GRACE_S
    assert str(config.health_file) == worker_env.DEFAULT_HEALTH_FILE
    assert config.log_level == worker_env.DEFAULT_LOG_LEVEL
