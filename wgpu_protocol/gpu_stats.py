"""`messages.GpuStats` from what NVML answered: one conversion for the worker and the CLI.

Both read the same NVML queries (memory info, utilization rates, temperature, power usage) and
must report them the same way; the reading (I/O, optional pynvml) stays with each of them. Each
argument is None when its query failed, and so is the field it fills.
"""

from __future__ import annotations

from typing import Protocol

from wgpu_protocol.messages import GpuStats

MIB = 1024 * 1024


class NvmlMemory(Protocol):
    """What `nvmlDeviceGetMemoryInfo` returns (bytes)."""

    @property
    def used(self) -> int: ...

    @property
    def total(self) -> int: ...


class NvmlUtilization(Protocol):
    """What `nvmlDeviceGetUtilizationRates` returns (percent)."""

    @property
    def gpu(self) -> int: ...


def gpu_stats_from_nvml(
    memory: NvmlMemory | None,
    utilization: NvmlUtilization | None,
    temperature_c: float | None,
    power_mw: float | None,
) -> GpuStats:
    return GpuStats(
        util_percent=float(utilization.gpu) if utilization is not None else None,
        vram_used_mb=int(memory.used) // MIB if memory is not None else None,
        vram_total_mb=int(memory.total) // MIB if memory is not None else None,
        temperature_c=float(temperature_c) if temperature_c is not None else None,
        power_w=round(power_mw / 1000.0, 1) if power_mw is not None else None,
    )
