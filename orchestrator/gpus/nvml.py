"""NVIDIA GPU discovery and live stats through NVML (nvidia-ml-py, module `pynvml`).

Nothing here raises for a missing driver or an unsupported query: discovery reports zero GPUs
and says why; a stat the GPU cannot give is None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import pynvml

if TYPE_CHECKING:  # the message definitions load when there is a GPU to describe
    from wgpu_protocol.messages import GpuStats

T = TypeVar("T")


@dataclass(frozen=True)
class GpuDevice:
    index: int  # NVML index: PCI bus order (CUDA's default order can differ; pin by uuid)
    uuid: str
    name: str
    memory_total_mb: int


@dataclass
class GpuInventory:
    gpus: list[GpuDevice] = field(default_factory=list)
    error: str | None = None  # why there are no GPUs, when NVML could not be used
    simulated: bool = False

    @property
    def count(self) -> int:
        return len(self.gpus)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "memory_total": g.memory_total_mb,
                }
                for g in self.gpus
            ],
            "error": self.error,
        }


def describe_nvml_error(exc: Exception) -> str:
    """One line for users: what is wrong with NVML on this host."""
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library not found: no NVIDIA driver on this host"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "NVIDIA driver not loaded: load the kernel module (nvidia-smi says more)"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission to use NVML: run as a user allowed to access /dev/nvidia*"
    return f"NVML failed: {exc}"


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py versions return bytes.
    return value.decode() if isinstance(value, bytes) else value


def _optional(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except pynvml.NVMLError:
        return None


def discover() -> GpuInventory:
    """The GPUs NVML sees, in NVML index order; zero GPUs plus the reason when NVML is unusable."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory(error=describe_nvml_error(exc))
    try:
        from wgpu_protocol.gpu_stats import MIB

        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                GpuDevice(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
                )
            )
        return GpuInventory(gpus=gpus)
    except pynvml.NVMLError as exc:
        return GpuInventory(error=describe_nvml_error(exc))
    finally:
        _optional(pynvml.nvmlShutdown)


def simulated(n: int) -> GpuInventory:
    """`n` stand-in GPU slots, for running the stack on a machine without GPUs."""
    gpus = [
        GpuDevice(index=i, uuid=f"SIM-GPU-{i}", name="Simulated GPU", memory_total_mb=0)
        for i in range(n)
    ]
    return GpuInventory(gpus=gpus, simulated=True)


class GpuMonitor:
    """Live per-GPU stats. Initialises NVML once (a poll then costs microseconds per GPU).

    Use as a context manager or call `close()`.
    Without NVML, `poll()` returns [] and `error` says why.
    """

    def __init__(self) -> None:
        self.error: str | None = None
        self._handles: dict[int, Any] = {}
        self._open = False
        try:
            pynvml.nvmlInit()
            self._open = True
            for index in range(pynvml.nvmlDeviceGetCount()):
                self._handles[index] = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            self.error = describe_nvml_error(exc)

    @property
    def indices(self) -> list[int]:
        return sorted(self._handles)

    def poll(self, indices: Iterable[int] | None = None) -> dict[int, GpuStats]:
        """Stats by NVML index (all GPUs when None); unknown indices are skipped."""
        wanted = self.indices if indices is None else [i for i in indices if i in self._handles]
        return {index: self._read(self._handles[index]) for index in wanted}

    @staticmethod
    def _read(handle: Any) -> GpuStats:
        from wgpu_protocol.gpu_stats import gpu_stats_from_nvml

        memory = _optional(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle))
        utilization = _optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle))
        temperature = _optional(
            lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        )
        power_mw = _optional(lambda: pynvml.nvmlDeviceGetPowerUsage(handle))
        return gpu_stats_from_nvml(memory, utilization, temperature, power_mw)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._handles.clear()
            _optional(pynvml.nvmlShutdown)

    def __enter__(self) -> GpuMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def poll(indices: Iterable[int] | None = None) -> dict[int, GpuStats]:
    """One-off stats (initialises NVML for this call; keep a GpuMonitor for repeated polls)."""
    with GpuMonitor() as monitor:
        return monitor.poll(indices)
