"""GPU facts and live stats through NVML, when it is there.

NVML is optional: without the `pynvml` module, a driver or a GPU, every field stays unknown
(None / empty) and nothing raises. Each field is read on its own, so one unsupported query
(power on some boards, temperature in some VMs) costs only that field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from wgpu_protocol.gpu_stats import MIB, gpu_stats_from_nvml
from wgpu_protocol.messages import GpuInfo, GpuStats

log = logging.getLogger(__name__)

_T = TypeVar("_T")

try:  # pragma: no cover - depends on the image
    import pynvml
except ImportError:  # pragma: no cover
    pynvml = None


class GpuProbe:
    """Reads one GPU. `gpu_id` is the host's index; inside a container pinned to one GPU NVML
    sees only that device (index 0), so a single visible device is taken as ours."""

    def __init__(self, gpu_id: int) -> None:
        self._gpu_id = gpu_id
        self._handle: Any = None
        self._started = False

    def _device(self) -> Any:
        if self._started:
            return self._handle
        self._started = True
        if pynvml is None:
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            index = 0 if count == 1 else self._gpu_id
            if index < count:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVML raises its own error types; any of them means "no GPU"
            log.info("NVML unavailable, GPU stats omitted: %s", exc)
            self._handle = None
        return self._handle

    def info(self) -> GpuInfo:
        handle = self._device()
        if handle is None:
            return GpuInfo(index=self._gpu_id)
        memory = _read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        return GpuInfo(
            index=self._gpu_id,
            uuid=_text(_read(lambda: pynvml.nvmlDeviceGetUUID(handle))) or "",
            name=_text(_read(lambda: pynvml.nvmlDeviceGetName(handle))) or "",
            vram_total_mb=int(memory.total) // MIB if memory is not None else 0,
        )

    def stats(self) -> GpuStats:
        handle = self._device()
        if handle is None:
            return GpuStats()
        memory = _read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        util = _read(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        temperature = _read(lambda: pynvml.nvmlDeviceGetTemperature(handle, 0))  # 0 = GPU die
        power_mw = _read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        return gpu_stats_from_nvml(memory, util, temperature, power_mw)


def _read(query: Callable[[], _T]) -> _T | None:
    try:
        return query()
    except Exception:  # an unsupported field is simply unknown
        return None


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None
