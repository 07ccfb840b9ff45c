"""Where the parts listen, and what a worker is called: the numbers and names every part shares.

The hub answers on `HUB_PORT`; the ComfyUI pinned to GPU N answers on `COMFYUI_PORT_BASE + N`
(`comfyui_port`); the worker of GPU N on machine M is `worker_id(M, N)`, stable across
restarts, so the hub recognises it and its running job after a reconnect.
"""

from __future__ import annotations

HUB_PORT = 8001
COMFYUI_PORT_BASE = 8188
REDIS_PORT = 6379


def comfyui_port(gpu_id: int, port_base: int = COMFYUI_PORT_BASE) -> int:
    """The port of the ComfyUI pinned to GPU `gpu_id`."""
    return port_base + gpu_id


def worker_id(machine_id: str, gpu_id: int) -> str:
    """The worker of GPU `gpu_id` on `machine_id`: `{MACHINE_ID}-gpu{GPU_ID}`."""
    return f"{machine_id}-gpu{gpu_id}"
