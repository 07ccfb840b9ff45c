"""The worker <-> hub protocol: message types, encoding and validation. No I/O, stdlib only.

The contracts between the parts, each defined once: `messages` (every message, encode/decode),
`frames` (the hub's fast `job`/`ack` encoders), `ports` (ports and `worker_id`), `worker_env`
(the worker's environment), `rest` (the REST answers' shapes), `gpu_stats`, `models`, `errors`.
"""

from __future__ import annotations

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
