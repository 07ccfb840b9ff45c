"""The protocol's own promises on types and sizes: booleans are JSON booleans (never 0/1), and
every string field stops at its documented limit (MAX_ID_LENGTH for ids, 10,000 characters for
an error message, 1,000 for a reason). Exactly at the limit is fine; one past it is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wgpu_protocol.messages import (
    MAX_ID_LENGTH,
    Failed,
    Heartbeat,
    JobError,
    ProtocolError,
    Released,
    Started,
    decode_hub_message,
    decode_worker_message,
    encode,
)

ERROR_MESSAGE_LIMIT = 10_000
REASON_LIMIT = 1_000


def _failed(**error: Any) -> str:
    body = {"type": "execution_error", "message": "boom", "node_id": "3", "retryable": True}
    body.update(error)
    return json.dumps({"type": "failed", "job_id": "j1", "token": 7, "error": body})


@pytest.mark.parametrize("number", [0, 1])
def test_booleans_refuse_numbers(number: int) -> None:
    with pytest.raises(ProtocolError, match=r"heartbeat\.comfyui_ok must be true or false"):
        decode_worker_message(json.dumps({"type": "heartbeat", "comfyui_ok": number}))
    with pytest.raises(ProtocolError, match=r"failed\.error\.retryable must be true or false"):
        decode_worker_message(_failed(retryable=number))
    welcome = {"type": "welcome", "worker_id": "w", "heartbeat_s": 5, "lease_s": 30}
    with pytest.raises(ProtocolError, match=r"welcome\.resumed must be true or false"):
        decode_hub_message(json.dumps({**welcome, "resumed": number}))


@pytest.mark.parametrize("value", [True, False])
def test_booleans_accept_booleans(value: bool) -> None:
    assert decode_worker_message(encode(Heartbeat(value))) == Heartbeat(value)
    decoded = decode_worker_message(_failed(retryable=value))
    assert isinstance(decoded, Failed) and decoded.error.retryable is value


def test_ids_stop_at_max_id_length() -> None:
    at_limit = "j" * MAX_ID_LENGTH
    assert decode_worker_message(encode(Started(at_limit, 1, "p"))) == Started(at_limit, 1, "p")
    with pytest.raises(ProtocolError, match=rf"started\.job_id is longer than {MAX_ID_LENGTH}"):
        decode_worker_message(encode(Started(at_limit + "j", 1, "p")))
    with pytest.raises(ProtocolError, match=r"started\.prompt_id is longer"):
        decode_worker_message(encode(Started("j", 1, "p" * (MAX_ID_LENGTH + 1))))


def test_error_messages_stop_at_ten_thousand_characters() -> None:
    at_limit = "m" * ERROR_MESSAGE_LIMIT
    decoded = decode_worker_message(_failed(message=at_limit))
    assert isinstance(decoded, Failed) and decoded.error.message == at_limit
    with pytest.raises(ProtocolError, match=r"failed\.error\.message is longer than 10000"):
        decode_worker_message(_failed(message=at_limit + "m"))


def test_reasons_stop_at_a_thousand_characters() -> None:
    ok = Released("j1", 7, "r" * REASON_LIMIT)
    assert decode_worker_message(encode(ok)) == ok
    with pytest.raises(ProtocolError, match=r"released\.reason is longer than 1000"):
        decode_worker_message(encode(Released("j1", 7, "r" * (REASON_LIMIT + 1))))


def test_the_error_type_is_an_id_sized_string() -> None:
    long_type = JobError("t" * (MAX_ID_LENGTH + 1), "boom")
    with pytest.raises(ProtocolError, match=r"failed\.error\.type is longer"):
        decode_worker_message(encode(Failed("j1", 7, long_type)))
