"""Slot selection, the per-slot plan (env, config hash) and small parsing helpers. No I/O."""

from __future__ import annotations

import pytest

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    HubAddress,
    WorkerSettings,
    plan_slots,
)
from orchestrator.backends.common import humanize_duration, parse_since
from orchestrator.backends.docker_backend import parse_docker_time
from orchestrator.errors import GpuNotFound, SlotError
from orchestrator.gpus.slots import parse_target, select_slots, slot_indices
from tests.orchestrator.gpus.devices import DEVICES
from wgpu_protocol.credentials import worker_credential


def test_all_gpus_nvml_sees_are_pinned_by_uuid() -> None:
    selection = select_slots(None, None, DEVICES)
    assert [s.device_id for s in selection.slots] == ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    assert selection.num_gpus == 3 and selection.note is None


def test_gpus_by_index_or_uuid_keep_nvml_indices() -> None:
    selection = select_slots("2,GPU-aaa", None, DEVICES)
    assert [(s.index, s.uuid) for s in selection.slots] == [(2, "GPU-ccc"), (0, "GPU-aaa")]
    assert selection.num_gpus == 3  # NUM_GPUS is the machine's count


def test_unknown_gpu_says_which_exist() -> None:
    with pytest.raises(GpuNotFound, match=r"GPU 7 not found: this machine has GPUs 0, 1, 2"):
        select_slots("7", None, DEVICES)


def test_without_nvml_indices_pin_by_index_and_say_so() -> None:
    selection = select_slots("0,2", None, [], "NVML library not found")
    assert [s.device_id for s in selection.slots] == ["0", "2"]
    assert selection.note and "NVML library not found" in selection.note
    with pytest.raises(SlotError, match="UUIDs need NVML"):
        select_slots("GPU-aaa", None, [])


def test_no_gpus_and_no_selection_explains_what_to_do() -> None:
    with pytest.raises(GpuNotFound, match=r"no NVIDIA GPU found \(no driver\).*--simulate N"):
        select_slots(None, None, [], "no driver")


def test_simulate_makes_slots_without_gpus() -> None:
    selection = select_slots(None, 2, DEVICES)
    assert [(s.index, s.simulated, s.uuid) for s in selection.slots] == [
        (0, True, None),
        (1, True, None),
    ]
    with pytest.raises(SlotError, match="either --gpus or --simulate"):
        select_slots("0", 2, DEVICES)


def test_duplicate_and_empty_gpu_lists_are_refused() -> None:
    with pytest.raises(SlotError, match="twice"):
        select_slots("0,0", None, DEVICES)
    with pytest.raises(SlotError, match="twice"):
        select_slots("0,GPU-aaa", None, DEVICES)
    with pytest.raises(SlotError, match="names no GPU"):
        select_slots(",", None, DEVICES)


def test_a_single_number_is_that_gpu_and_count_takes_the_first_n() -> None:
    assert [s.index for s in select_slots("2", None, DEVICES).slots] == [2]
    first_two = select_slots(None, None, DEVICES, count=2)
    assert [s.device_id for s in first_two.slots] == ["GPU-aaa", "GPU-bbb"]
    assert first_two.num_gpus == 3
    with pytest.raises(GpuNotFound, match="--count 4: this machine has 3 GPU"):
        select_slots(None, None, DEVICES, count=4)
    with pytest.raises(SlotError, match="either --gpus or --count"):
        select_slots("0", None, DEVICES, count=1)


def test_without_nvml_a_count_or_an_index_pins_by_index_with_room_for_it() -> None:
    counted = select_slots(None, None, [], "no driver", count=2)
    assert [s.device_id for s in counted.slots] == ["0", "1"] and counted.note
    # NUM_GPUS must exceed GPU_ID, or the worker refuses to start.
    assert select_slots("3", None, [], "no driver").num_gpus == 4


def test_stop_and_friends_take_gpus_beside_the_positional_target() -> None:
    assert slot_indices("all", None) is None
    assert slot_indices("1", None) == [1]
    by_uuid = select_slots("GPU-ccc,GPU-aaa", None, DEVICES)
    assert slot_indices("all", by_uuid) == [2, 0]
    assert slot_indices("2", select_slots("GPU-ccc", None, DEVICES)) == [2]
    with pytest.raises(SlotError, match="different GPUs"):
        slot_indices("1", by_uuid)


def test_targets() -> None:
    assert parse_target("all") is None
    assert parse_target("3") == 3
    with pytest.raises(SlotError):
        parse_target("gpu3")


def test_plan_env_matches_the_original_layout() -> None:
    slots = select_slots("1", None, DEVICES).slots
    settings = WorkerSettings(
        machine_id="box", hub=HubAddress("http://hub.local:9000"), image="img:1", worker_token="t"
    )
    [plan] = plan_slots(slots, settings, num_gpus=3)
    assert plan.worker.env == {
        "REDIS_API_HOST": "hub.local",
        "REDIS_API_PORT": "9000",
        "EXECUTION_SERVICE_PORT": "8189",
        "COMFYUI_HOST": "127.0.0.1",
        "MACHINE_ID": "box",
        "GPU_ID": "1",
        "NUM_GPUS": "3",
        # Its own credential, never the fleet token (wgpu_protocol.credentials).
        "WORKER_CREDENTIAL": worker_credential("t", "box-gpu1"),
    }
    assert plan.comfyui is None


def test_hub_url_with_tls_or_path_also_travels_whole() -> None:
    settings = WorkerSettings(machine_id="box", hub=HubAddress("https://hub.example/wgpu"))
    [plan] = plan_slots(select_slots("0", None, DEVICES).slots, settings, num_gpus=1)
    assert plan.worker.env["HUB_URL"] == "https://hub.example/wgpu"
    assert plan.worker.env["REDIS_API_PORT"] == "443"


def test_simulated_slots_get_the_simulator_on_their_port() -> None:
    settings = WorkerSettings(machine_id="box", image="img:1", port_base=9000)
    plans = plan_slots(select_slots(None, 2, []).slots, settings, num_gpus=2, python="python3")
    comfyui = plans[1].comfyui
    assert comfyui is not None and comfyui.role == ROLE_COMFYUI and comfyui.port == 9001
    assert comfyui.command == (
        "python3",
        "-m",
        "comfyui_sim",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
    )
    assert plans[1].worker.env["EXECUTION_SERVICE_PORT"] == "9001"


def test_config_hash_follows_image_env_and_command() -> None:
    slots = select_slots("0", None, DEVICES).slots
    base = WorkerSettings(machine_id="box", image="img:1")
    [a] = plan_slots(slots, base, 1)
    [same] = plan_slots(slots, base, 1)
    [other_image] = plan_slots(slots, WorkerSettings(machine_id="box", image="img:2"), 1)
    [other_hub] = plan_slots(
        slots, WorkerSettings(machine_id="box", image="img:1", hub=HubAddress("http://x:1")), 1
    )
    assert a.worker.config_hash() == same.worker.config_hash()
    assert (
        len(
            {
                a.worker.config_hash(),
                other_image.worker.config_hash(),
                other_hub.worker.config_hash(),
            }
        )
        == 3
    )
    assert a.worker.config_hash(["net=host"]) != a.worker.config_hash(["net=bridge"])


def test_parse_since() -> None:
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2h", now=10000.0) == 2800.0
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2024-01-02T03:04:05Z") == 1704164645.0
    with pytest.raises(ValueError, match="not a time"):
        parse_since("yesterday")


def test_humanize_duration() -> None:
    assert [humanize_duration(s) for s in (5, 65, 3 * 3600 + 120, 2 * 86400 + 3600)] == [
        "5s",
        "1m05s",
        "3h02m",
        "2d01h",
    ]


def test_parse_docker_time() -> None:
    assert parse_docker_time("2024-01-02T03:04:05.123456789Z") == 1704164645.123456
    assert parse_docker_time("2024-01-02T03:04:05Z") == 1704164645.0
    assert parse_docker_time("2024-01-02T04:04:05.5+01:00") == 1704164645.5
    assert parse_docker_time("0001-01-01T00:00:00Z") is None


def test_simulated_slots_get_their_own_model_files() -> None:
    from comfyui_sim.model_store import parse_slot_models

    slots = select_slots(None, 2, DEVICES).slots
    per_slot = parse_slot_models("0:checkpoints=a.safetensors;1:checkpoints=b.safetensors")
    settings = WorkerSettings(
        machine_id="box",
        sim_models=tuple((slot, tuple(specs)) for slot, specs in per_slot.items()),
    )
    plans = plan_slots(slots, settings, num_gpus=2)
    commands = [plan.comfyui.command if plan.comfyui else () for plan in plans]
    assert [c[c.index("--models") :] for c in commands if c] == [
        ("--models", "checkpoints=a.safetensors"),
        ("--models", "checkpoints=b.safetensors"),
    ]
