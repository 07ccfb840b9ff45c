"""A stand-in for stock ComfyUI's HTTP and WebSocket API (aiohttp and the stdlib only).

`SimConfig` + `start_sim` (in process) or `run_sim` (blocking); `python -m comfyui_sim --help`.
Names load on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyui_sim.config import SimConfig
    from comfyui_sim.errors import SimError
    from comfyui_sim.server import RunningSim, run_sim, start_sim

_HOME = {
    "SimConfig": "comfyui_sim.config",
    "SimError": "comfyui_sim.errors",
    "RunningSim": "comfyui_sim.server",
    "run_sim": "comfyui_sim.server",
    "start_sim": "comfyui_sim.server",
}
__all__ = ["RunningSim", "SimConfig", "SimError", "run_sim", "start_sim"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'comfyui_sim' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
