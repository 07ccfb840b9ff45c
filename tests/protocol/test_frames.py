"""The hub's fast `job` and `ack` encoders say exactly what the protocol's messages say."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from wgpu_protocol.frames import encode_ack, encode_job
from wgpu_protocol.messages import (
    MAX_ID_LENGTH,
    Ack,
    JobAssigned,
    decode_hub_message,
    encode,
)

# Ids as the protocol allows them: text without control characters or lone surrogates.
id_chars = st.characters(min_codepoint=32, blacklist_categories=("Cs", "Cc"))
ids = st.text(id_chars, min_size=1, max_size=MAX_ID_LENGTH).filter(lambda s: s.strip() == s)
tokens = st.integers(min_value=0, max_value=2**53)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(id_chars, max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(id_chars, max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
workflows = st.dictionaries(
    st.text(id_chars, min_size=1, max_size=8),
    st.fixed_dictionaries(
        {
            "class_type": st.text(id_chars, min_size=1, max_size=12),
            "inputs": st.dictionaries(st.text(id_chars, max_size=8), json_values, max_size=3),
        }
    ),
    min_size=1,
    max_size=4,
)


@given(ids, tokens, workflows, st.integers(1, 100), st.floats(0.001, 7 * 86400), st.booleans())
def test_job_round_trips_to_the_protocol_message(
    job_id: str,
    token: int,
    workflow: dict[str, Any],
    attempt: int,
    timeout_s: float,
    allow_partial: bool,
) -> None:
    workflow_json = json.dumps(workflow, separators=(",", ":"))
    extras = json.dumps({"allow_partial": True}) if allow_partial else ""
    text = encode_job(job_id, token, workflow_json, attempt, timeout_s, extras)
    expected = JobAssigned(job_id, token, workflow, attempt, timeout_s, allow_partial)
    assert decode_hub_message(text) == expected
    # Fields left at their defaults are left out of the fast encoding.
    defaults = {"allow_partial": False, "inputs": {}}
    assert {**defaults, **json.loads(text)} == json.loads(encode(expected))


@given(
    ids,
    tokens,
    st.sampled_from(["started", "progress", "completed", "failed", "released"]),
    st.text(id_chars, max_size=40),
)
def test_ack_round_trips_to_the_protocol_message(
    job_id: str, token: int, of: str, refused: str
) -> None:
    text = encode_ack(job_id, token, of, refused)
    expected = Ack(job_id, token, of, ok=not refused, reason=refused)
    assert decode_hub_message(text) == expected
    assert json.loads(text) == json.loads(encode(expected))


def test_an_ok_ack_has_no_reason_and_a_refused_one_says_why() -> None:
    assert decode_hub_message(encode_ack("j", 3, "completed")) == Ack("j", 3, "completed", True, "")
    refused = decode_hub_message(encode_ack("j", 3, "failed", "stale_token"))
    assert refused == Ack("j", 3, "failed", False, "stale_token")
