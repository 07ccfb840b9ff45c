"""The one-host stack's default images and ports.

They are option defaults of `wgpu up` and `wgpu compose render`, so they live apart from the
renderer (orchestrator.stack.compose_render, which re-exports them): `wgpu --help` reads them
without importing it.
"""

from __future__ import annotations

from wgpu_protocol import ports

DEFAULT_REDIS_IMAGE = "redis:7"
DEFAULT_HUB_IMAGE = "wgpu-local/hub:latest"
DEFAULT_WORKER_IMAGE = "wgpu-local/comfy-worker:latest"
# A maintained public ComfyUI image (CUDA 12.4, ComfyUI with its Python). It appends CLI_ARGS
# to ComfyUI's command line, which is how each GPU's copy gets its own port.
DEFAULT_COMFYUI_IMAGE = "yanwk/comfyui-boot:cu124-slim"
DEFAULT_REDIS_PORT = ports.REDIS_PORT
DEFAULT_HUB_PORT = ports.HUB_PORT
