"""Three H100s as NVML lists them, for tests of GPU selection and of what is planned on it."""

from __future__ import annotations

from orchestrator.gpus.nvml import GpuDevice

DEVICES = [
    GpuDevice(0, "GPU-aaa", "NVIDIA H100", 81559),
    GpuDevice(1, "GPU-bbb", "NVIDIA H100", 81559),
    GpuDevice(2, "GPU-ccc", "NVIDIA H100", 81559),
]
