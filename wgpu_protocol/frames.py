"""The hub's hot-path messages, `job` and `ack`, encoded without dataclass round trips.

They are the same messages as `messages.JobAssigned` and `messages.Ack` (a worker decodes them
with `decode_hub_message`); these encoders exist because the hub sends one of each per job:
`encode_job` splices the workflow JSON in as the hub stored it, so a workflow is never decoded
and encoded again on its way to the worker.
"""

from __future__ import annotations

import json

_dumps_compact = json.JSONEncoder(separators=(",", ":")).encode


def encode_job(
    job_id: str,
    token: int,
    workflow_json: str,
    attempt: int,
    timeout_s: float,
    extras_json: str = "",
) -> str:
    """A `job` message; `workflow_json` must be a JSON object's text (as the hub stored it).
    `extras_json`, a JSON object's text too, adds its members (allow_partial, inputs)."""
    return (
        '{"job_id":'
        + json.dumps(job_id)
        + ',"token":'
        + str(token)
        + ',"workflow":'
        + workflow_json
        + ',"attempt":'
        + str(attempt)
        + ',"timeout_s":'
        + repr(float(timeout_s))
        + ("," + extras_json.strip()[1:-1] if len(extras_json.strip()) > 2 else "")
        + ',"type":"job"}'
    )


def encode_ack(job_id: str, token: int, of: str, refused: str = "") -> str:
    """An `ack` of the worker's `of` report: ok unless `refused` gives the reason."""
    return _dumps_compact(
        {
            "job_id": job_id,
            "token": token,
            "of": of,
            "ok": not refused,
            "reason": refused,
            "type": "ack",
        }
    )
