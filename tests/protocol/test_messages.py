"""The shared protocol: every message round-trips, and no input makes decode do anything but
return a message or raise ProtocolError."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wgpu_protocol.messages import (
    MAX_TEXT_FRAME_BYTES,
    Ack,
    Bye,
    Cancel,
    Completed,
    ErrorReply,
    ExecutionStarted,
    Failed,
    GpuInfo,
    GpuStats,
    Heartbeat,
    Hello,
    JobAssigned,
    JobError,
    OutputFrame,
    OutputRef,
    Progress,
    ProtocolError,
    Ready,
    Released,
    RunningJob,
    Started,
    Unavailable,
    Welcome,
    decode_hub_message,
    decode_output_frame,
    decode_worker_message,
    encode,
    encode_output_frame,
)

WORKER_SAMPLES = [
    Hello("m1-gpu0", "m1", GpuInfo(0, "GPU-abc", "NVIDIA H100", 81559), "0.1.0"),
    Hello("m1-gpu0", "m1", GpuInfo(0), "0.1.0", running=RunningJob("j1", 7)),
    Heartbeat(True, GpuStats(util_percent=93.0, vram_used_mb=1000, temperature_c=61.0)),
    Heartbeat(False),
    Ready(),
    Unavailable("comfyui unavailable"),
    Started("j1", 7, "p-1"),
    ExecutionStarted("j1", 7, "p-1"),
    Hello("m1-gpu0", "m1", GpuInfo(0), "0.1.0", execution_started=True),
    Progress("j1", 7, "3", 4, 20),
    Completed("j1", 7, (OutputRef("a.png", "image/png", 1234),)),
    Failed("j1", 7, JobError("validation_error", "node 2: blur_radius too big", "2", False)),
    Completed("j1", 7, warm={"checkpoints": ["a.safetensors"], "loras": ["x.safetensors"]}),
    Failed("j1", 7, JobError("execution_error", "boom", None, True), warm={}),
    Released("j1", 7, "shutting down"),
    Bye(),
]
HUB_SAMPLES = [
    Welcome("m1-gpu0", 5.0, 30.0, resumed=True),
    Welcome("m1-gpu0", 5.0, 30.0, ready_next=True, execution_started=True),
    JobAssigned("j1", 7, {"1": {"class_type": "EmptyImage", "inputs": {}}}, 1, 600.0),
    Cancel("j1", 7),
    Ack("j1", 7, "completed", False, "stale_token"),
    ErrorReply("bad_message", "progress.token must be an integer"),
]


@pytest.mark.parametrize("message", WORKER_SAMPLES, ids=lambda m: m.type)
def test_worker_messages_round_trip(message: object) -> None:
    assert decode_worker_message(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("message", HUB_SAMPLES, ids=lambda m: m.type)
def test_hub_messages_round_trip(message: object) -> None:
    assert decode_hub_message(encode(message)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("message", WORKER_SAMPLES + HUB_SAMPLES, ids=lambda m: m.type)
def test_encode_writes_the_fields_as_asdict_does(message: Any) -> None:
    """The wire format is every field in declaration order, nested parts as objects, then the
    type: what older hubs and workers read (encode no longer goes through asdict, for speed)."""
    expected = {**dataclasses.asdict(message), "type": message.type}
    assert encode(message) == json.dumps(expected, separators=(",", ":"))


def test_encode_refuses_a_value_that_is_not_a_message_part() -> None:
    with pytest.raises(TypeError, match="not a protocol message part"):
        encode(ErrorReply("bad_message", object()))  # type: ignore[arg-type]


def test_a_worker_cannot_send_hub_messages() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_worker_message(encode(Cancel("j1", 1)))
    assert info.value.code == "unknown_type"


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (
            '{"type": "progress", "job_id": "j", "token": "7", "node": null, "value": 1, "max": 2}',
            "progress.token must be an integer",
        ),
        (
            '{"type": "progress", "job_id": "j", "token": true, "value": 1, "max": 2}',
            "progress.token must be an integer",
        ),
        ('{"type": "started", "job_id": "j", "token": 1}', "missing field 'prompt_id'"),
        (
            '{"type": "execution_started", "job_id": "j", "token": 1}',
            "missing field 'prompt_id'",
        ),
        (
            '{"type": "execution_started", "job_id": "j", "token": "1", "prompt_id": "p"}',
            "execution_started.token must be an integer",
        ),
        (
            '{"type": "execution_started", "job_id": "j\\u0000", "token": 1, "prompt_id": "p"}',
            "execution_started.job_id",
        ),
        (
            '{"type": "started", "job_id": "j", "token": 1, "prompt_id": "p\\u001f"}',
            "started.prompt_id contains a NUL or control character",
        ),
        (
            '{"type": "ready", "relaying": {"job_id": "j\\u007f", "token": 1}}',
            "contains a NUL or control character",
        ),
        (
            '{"type": "hello", "worker_id": "w", "machine_id": "m", "gpu": 3, "version": "1"}',
            "hello.gpu must be an object",
        ),
        ('{"type": "nope"}', "unknown message type"),
    ],
)
def test_malformed_frames_name_the_problem(frame: str, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        decode_worker_message(frame)


def test_oversized_frames_are_refused_before_parsing() -> None:
    frame = json.dumps({"type": "unavailable", "reason": "x" * MAX_TEXT_FRAME_BYTES})
    with pytest.raises(ProtocolError) as info:
        decode_worker_message(frame)
    assert info.value.code == "too_large"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "hello",
                "heartbeat",
                "progress",
                "completed",
                "failed",
                "started",
                "execution_started",
                "released",
                "ready",
                "bye",
                "job",
                "x",
            ]
        )
    },
    optional={
        k: json_values
        for k in (
            "job_id",
            "token",
            "node",
            "value",
            "max",
            "outputs",
            "error",
            "gpu",
            "worker_id",
            "machine_id",
            "version",
            "running",
            "prompt_id",
            "reason",
            "comfyui_ok",
        )
    },
)


@given(st.one_of(st.text(max_size=200), message_like.map(json.dumps)))
def test_decode_only_returns_messages_or_raises_protocol_error(frame: str) -> None:
    try:
        message = decode_worker_message(frame)
    except ProtocolError:
        return
    # Whatever decoded re-encodes to a frame that decodes to the same message.
    assert decode_worker_message(encode(message)) == message


def test_output_frames_round_trip_and_reject_path_names() -> None:
    frame = OutputFrame("j1", 9, "ComfyUI_00001_.png", "image/png", b"\x89PNG...")
    assert decode_output_frame(encode_output_frame(frame)) == frame
    assert frame.ref == OutputRef("ComfyUI_00001_.png", "image/png", 7)
    evil = OutputFrame("j1", 9, "../../etc/passwd", "text/plain", b"x")
    with pytest.raises(ProtocolError, match="plain file name"):
        decode_output_frame(encode_output_frame(evil))


VALID_FRAME = encode_output_frame(OutputFrame("j1", 9, "a.png", "image/png", b"\x89PNG"))


@given(
    st.binary(max_size=300)
    | st.builds(
        lambda cut, tail: VALID_FRAME[:cut] + tail, st.integers(0, 60), st.binary(max_size=40)
    )
)
@example(VALID_FRAME)
def test_random_binary_frames_decode_to_a_valid_frame_or_raise_protocol_error(blob: bytes) -> None:
    """Anything else (IndexError, struct.error, a path as a name) would be a decoder bug."""
    try:
        frame = decode_output_frame(blob)
    except ProtocolError as exc:
        assert exc.code in ("bad_message", "too_large")
        return
    assert "/" not in frame.name and "\\" not in frame.name and frame.name not in ("", ".", "..")
    assert decode_output_frame(encode_output_frame(frame)) == frame
    assert blob.endswith(frame.data)


def test_a_warm_report_is_checked_like_an_inventory() -> None:
    bad = '{"type":"completed","job_id":"j1","token":7,"warm":{"checkpoints":"a.safetensors"}}'
    with pytest.raises(ProtocolError, match="warm"):
        decode_worker_message(bad)
    unchanged = decode_worker_message(
        '{"type":"failed","job_id":"j1","token":7,"error":'
        '{"type":"x","message":"m","node_id":null,"retryable":true}}'
    )
    assert isinstance(unchanged, Failed) and unchanged.warm is None
