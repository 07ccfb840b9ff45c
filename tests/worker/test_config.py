"""Worker configuration from the environment, and the one-line errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from comfy_worker.config import ConfigError, WorkerConfig

from tests.paths import REPO
from wgpu_protocol import models


def test_defaults_follow_the_original_variables() -> None:
    config = WorkerConfig.from_env({"MACHINE_ID": "box1", "GPU_ID": "3", "NUM_GPUS": "4"})
    assert config.worker_id == "box1-gpu3"
    assert config.comfyui_port == 8191  # 8188 + GPU_ID
    assert config.comfyui_url == "http://127.0.0.1:8191"
    assert config.hub_ws_url == "ws://127.0.0.1:8001/ws/worker/box1-gpu3"
    assert config.worker_token is None
    assert config.comfyui_cmd is None


def test_the_id_is_stable_across_restarts() -> None:
    """Two separate processes (a restart: new hash seed, new pid, new clock) derive the same
    id from the same env, and it is the documented `{MACHINE_ID}-gpu{GPU_ID}`."""
    probe = "from comfy_worker.config import WorkerConfig; import os; "
    probe += "print(WorkerConfig.from_env(dict(os.environ)).worker_id)"
    ids = set()
    for seed in ("1", "2"):
        env = {
            **os.environ,
            "MACHINE_ID": "box1",
            "GPU_ID": "1",
            "NUM_GPUS": "2",
            "PYTHONHASHSEED": seed,
        }
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        ids.add(done.stdout.strip())
    assert ids == {"box1-gpu1"}


def test_explicit_values_win() -> None:
    config = WorkerConfig.from_env(
        {
            "MACHINE_ID": "m",
            "GPU_ID": "1",
            "NUM_GPUS": "2",
            "REDIS_API_HOST": "hub.internal",
            "REDIS_API_PORT": "9001",
            "EXECUTION_SERVICE_PORT": "9999",
            "COMFYUI_HOST": "::1",
            "WORKER_TOKEN": "s3cret",
            "LOG_LEVEL": "debug",
            "COMFYUI_CMD": "python main.py --port $EXECUTION_SERVICE_PORT",
            "WORKER_GRACE_S": "2.5",
            "WORKER_WATCHDOG_S": "0.5",
            "WORKER_PROGRESS_INTERVAL_S": "0.2",
            "WARM_MODELS": "3",
        }
    )
    assert config.hub_ws_url == "ws://hub.internal:9001/ws/worker/m-gpu1"
    assert config.comfyui_url == "http://[::1]:9999"
    assert config.worker_token == "s3cret"
    assert config.log_level == "DEBUG"
    assert config.comfyui_cmd == "python main.py --port $EXECUTION_SERVICE_PORT"
    assert (config.grace_s, config.watchdog_s) == (2.5, 0.5)
    assert config.progress_interval_s == 0.2
    assert config.warm_models == 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://hub:8001", "ws://hub:8001"),
        ("https://hub.example.com/", "wss://hub.example.com"),
        ("ws://10.0.0.1:8001", "ws://10.0.0.1:8001"),
    ],
)
def test_hub_url_overrides_host_and_port(url: str, expected: str) -> None:
    config = WorkerConfig.from_env({"MACHINE_ID": "m", "HUB_URL": url, "REDIS_API_HOST": "x"})
    assert config.hub_url == expected


@pytest.mark.parametrize(
    ("url", "http_url"),
    [
        ("ws://hub:8001", "http://hub:8001"),
        ("wss://hub.example.com/p", "https://hub.example.com/p"),
    ],
)
def test_the_hubs_http_base_goes_with_its_socket_url(url: str, http_url: str) -> None:
    assert WorkerConfig("m", hub_url=url).hub_http_url == http_url


def test_the_loader_table_is_parsed_once_into_the_config() -> None:
    config = WorkerConfig.from_env({"MACHINE_ID": "m", "MODEL_LOADERS": "MyLoader.ckpt=loras"})
    assert config.loaders["MyLoader"] == (("ckpt", "loras"),)
    assert config.loaders["CheckpointLoaderSimple"] == models.LOADERS["CheckpointLoaderSimple"]
    assert "MyLoader" not in config.replace(model_loaders="").loaders
    assert config.replace(gpu_id=1).loaders == config.loaders
    with pytest.raises(ConfigError, match=r"^MODEL_LOADERS="):
        WorkerConfig("m", model_loaders="not a table")  # however it is made, not only from env


@pytest.mark.parametrize(("raw", "on"), [(None, True), ("1", True), ("0", False), ("off", False)])
def test_pipelining_is_on_unless_turned_off(raw: str | None, on: bool) -> None:
    env = {"MACHINE_ID": "m"} | ({"WORKER_PIPELINE": raw} if raw is not None else {})
    assert WorkerConfig.from_env(env).pipeline is on


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GPU_ID": "one"}, "GPU_ID"),
        ({"GPU_ID": "-1"}, "GPU_ID"),
        ({"GPU_ID": "2", "NUM_GPUS": "2"}, "GPU_ID"),
        ({"REDIS_API_PORT": "70000"}, "REDIS_API_PORT"),
        ({"EXECUTION_SERVICE_PORT": "http"}, "EXECUTION_SERVICE_PORT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"HUB_URL": "hub:8001"}, "HUB_URL"),
        ({"WORKER_GRACE_S": "-3"}, "WORKER_GRACE_S"),
        ({"WORKER_PROGRESS_INTERVAL_S": "0"}, "WORKER_PROGRESS_INTERVAL_S"),
        ({"MACHINE_ID": "a b/c"}, "MACHINE_ID"),
        ({"WORKER_PIPELINE": "maybe"}, "WORKER_PIPELINE"),
        ({"WARM_MODELS": "0"}, "WARM_MODELS"),
        ({"MODEL_LOADERS": "MyLoader=checkpoints"}, "MODEL_LOADERS"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WorkerConfig.from_env({"MACHINE_ID": "m", **env})
    message = str(caught.value)
    assert message.startswith(names + "=")
    assert "\n" not in message


def test_the_command_exits_2_with_one_line_for_bad_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "comfy_worker"],
        env={"GPU_ID": "x", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: GPU_ID='x'")


def test_the_worker_imports_nothing_outside_its_allowed_set() -> None:
    # The image carries only websockets, aiohttp and nvidia-ml-py: no CLI or Redis libraries.
    code = (
        "import sys, comfy_worker, comfy_worker.__main__, comfy_worker.worker\n"
        "bad = {'typer', 'rich', 'docker', 'redis', 'orchestrator', 'redis_api'}\n"
        "print(sorted(bad & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
