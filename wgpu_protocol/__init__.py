"""The worker <-> hub protocol: message types, encoding and validation. No I/O, stdlib only.

The contracts between the parts, each defined once: `messages` (every message, encode/decode),
`frames` (the hub's fast `job`/`ack` encoders), `ports` (ports and `worker_id`), `worker_env`
(the worker's environment), `rest` (the REST answers' shapes), `gpu_stats`, `models`, `errors`.

Names load on first use: `wgpu --help` imports `ports` for its defaults and should not pay for
`messages` (~10 ms of dataclasses) too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wgpu_protocol.errors import ProtocolError
    from wgpu_protocol.frames import encode_ack, encode_job
    from wgpu_protocol.messages import (
        PROTOCOL_VERSION,
        HubMessage,
        Message,
        OutputFrame,
        WorkerMessage,
        decode_hub_message,
        decode_output_frame,
        decode_worker_message,
        encode,
        encode_output_frame,
    )
    from wgpu_protocol.ports import COMFYUI_PORT_BASE, HUB_PORT, comfyui_port, worker_id
    from wgpu_protocol.rest import JobJson, WorkerJson
    from wgpu_protocol.worker_env import worker_environment

_HOME = {
    "ProtocolError": "errors",
    "encode_ack": "frames",
    "encode_job": "frames",
    "PROTOCOL_VERSION": "messages",
    "HubMessage": "messages",
    "Message": "messages",
    "OutputFrame": "messages",
    "WorkerMessage": "messages",
    "decode_hub_message": "messages",
    "decode_output_frame": "messages",
    "decode_worker_message": "messages",
    "encode": "messages",
    "encode_output_frame": "messages",
    "COMFYUI_PORT_BASE": "ports",
    "HUB_PORT": "ports",
    "comfyui_port": "ports",
    "worker_id": "ports",
    "JobJson": "rest",
    "WorkerJson": "rest",
    "worker_environment": "worker_env",
}

__all__ = [
    "COMFYUI_PORT_BASE",
    "HUB_PORT",
    "PROTOCOL_VERSION",
    "HubMessage",
    "JobJson",
    "Message",
    "OutputFrame",
    "ProtocolError",
    "WorkerJson",
    "WorkerMessage",
    "comfyui_port",
    "decode_hub_message",
    "decode_output_frame",
    "decode_worker_message",
    "encode",
    "encode_ack",
    "encode_job",
    "encode_output_frame",
    "worker_environment",
    "worker_id",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'wgpu_protocol' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wgpu_protocol.{_HOME[name]}"), name)
