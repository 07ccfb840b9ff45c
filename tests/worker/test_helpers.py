"""The worker's pure parts, fed with traffic recorded from real ComfyUI (shared/comfyui/)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from comfy_worker.gpu_stats import GpuProbe
from comfy_worker.hub_link import backoff_delays
from comfy_worker.job_runner import (
    ProgressTracker,
    classify_execution_error,
    describe_rejection,
    output_files,
    unique_name,
)

from tests.fixtures.sim_traffic import RECORDED
from wgpu_protocol.messages import GpuStats


def _recording(name: str) -> dict[str, Any]:
    """A recording from tests/data (checked in: it is never missing, so never skipped)."""
    return json.loads((RECORDED / name).read_text())  # type: ignore[no-any-return]


def test_every_recorded_rejection_names_node_and_input() -> None:
    results = _recording("validation_errors.json")["results"]
    rejected = {k: v["body"] for k, v in results.items() if v["status"] == 400}
    assert len(rejected) >= 8
    for case, body in rejected.items():
        message, node_id = describe_rejection(body)
        assert "\n" not in message
        assert message.startswith(body["error"]["type"] + ":"), case
        for failing_node, details in body["node_errors"].items():
            assert f"node {failing_node} ({details['class_type']})" in message, case
            for error in details["errors"]:
                input_name = error["extra_info"].get("input_name")
                if input_name:
                    assert repr(input_name) in message, case
        if body["node_errors"]:
            assert node_id in body["node_errors"]


def test_unknown_node_type_points_at_the_node() -> None:
    body = _recording("validation_errors.json")["results"]["unknown_class_type"]["body"]
    message, node_id = describe_rejection(body)
    assert node_id == "2"
    assert "NoSuchNodeType" in message


def test_recorded_execution_error_is_classified_with_node_and_type() -> None:
    record = _recording("execution_error.json")
    entry = next(iter(h for h in record["http"] if h["path"].startswith("/history/")))
    history = entry["response_json"][record["prompt_id"]]
    data = dict(history["status"]["messages"])["execution_error"]
    error = classify_execution_error(data)
    assert error.type == "execution_error"
    assert error.node_id == "2"
    assert "ImageToMask" in error.message and "IndexError" in error.message
    assert error.retryable is False


@pytest.mark.parametrize(
    ("exception_type", "message"),
    [
        ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("torch.cuda.OutOfMemoryError", "whatever"),
        ("RuntimeError", "Allocation on device 0 would exceed allowed memory. (out of memory)"),
        ("RuntimeError", "HIP out of memory"),
    ],
)
def test_out_of_memory_gets_its_own_type(exception_type: str, message: str) -> None:
    error = classify_execution_error(
        {
            "node_id": "3",
            "node_type": "KSampler",
            "exception_type": exception_type,
            "exception_message": message,
        }
    )
    assert error.type == "out_of_memory"
    assert error.node_id == "3"
    assert error.retryable is True


@pytest.mark.parametrize("name", ["success_quick.json", "success_slow.json", "binary_legacy.json"])
def test_progress_over_recorded_runs_is_monotone_and_ends_full(name: str) -> None:
    record = _recording(name)
    prompt_id = record["prompt_id"]
    tracker = ProgressTracker(len(record["workflow"]))
    seen: list[float] = []
    for frame in record["ws"]:
        message = frame.get("msg")
        if frame.get("kind") != "text" or not isinstance(message, dict):
            continue
        data = message.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue
        if message["type"] == "executing" and data.get("node") is None:
            continue
        if tracker.update(message["type"], data):
            seen.append(tracker.snapshot()[1])
    assert len(seen) >= 3
    assert seen == sorted(seen)
    assert seen[-1] == float(len(record["workflow"]))


def test_output_files_from_a_recorded_history() -> None:
    record = _recording("success_quick.json")
    entry = next(iter(h for h in record["http"] if h["path"].startswith("/history/")))
    history = entry["response_json"][record["prompt_id"]]
    files = output_files(history["outputs"])
    assert files == [
        ("5", {"filename": "quick_00002_.png", "subfolder": "harness", "type": "output"})
    ]


def test_output_files_ignores_non_file_entries() -> None:
    outputs = {
        "9": {
            "images": [{"filename": "a.png", "subfolder": "", "type": "temp"}],
            "animated": [False],
            "text": ["hello"],
        }
    }
    assert output_files(outputs) == [("9", outputs["9"]["images"][0])]


def test_unique_names_are_plain_and_distinct() -> None:
    taken: set[str] = set()
    names = []
    for node, filename in [("5", "a.png"), ("6", "a.png"), ("7", "../x/a.png"), ("8", "..")]:
        name = unique_name(filename, node, taken)
        taken.add(name)
        names.append(name)
    assert len(set(names)) == 4
    assert all("/" not in n and n not in (".", "..") for n in names)


def test_backoff_is_fast_first_then_capped_and_jittered() -> None:
    delay = backoff_delays(cap_s=5.0)
    firsts = {delay(0) for _ in range(50)}
    assert max(firsts) <= 0.1 and min(firsts) >= 0.05
    assert len(firsts) > 1  # jittered
    assert all(2.5 <= delay(20) <= 5.0 for _ in range(50))


@pytest.mark.no_gpu
def test_gpu_probe_without_a_gpu_omits_fields_instead_of_failing() -> None:
    probe = GpuProbe(gpu_id=3)
    info = probe.info()
    assert (info.index, info.uuid, info.vram_total_mb) == (3, "", 0)
    assert probe.stats() == GpuStats()  # every field unknown, nothing raised


@pytest.mark.gpu
def test_gpu_probe_on_a_gpu_reports_its_identity_and_memory() -> None:
    probe = GpuProbe(gpu_id=0)
    info = probe.info()
    assert info.index == 0 and info.uuid.startswith(("GPU-", "MIG-")) and info.vram_total_mb > 0
    stats = probe.stats()
    assert stats.vram_total_mb == info.vram_total_mb
    assert stats.vram_used_mb is not None and 0 <= stats.vram_used_mb <= stats.vram_total_mb
