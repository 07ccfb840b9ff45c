"""Which GPUs (slots) `wgpu` manages: the one selection every command uses.

`--gpus 0,2` names GPUs by NVML index or UUID (`--gpus 4` is GPU 4), `--count N` takes the
first N, `--simulate N` runs N slots without a GPU, and nothing means every GPU NVML sees.
`select_slots` is the only parser of these options; `slot_indices` turns a selection into the
indices that stop/restart/status/logs act on.

A slot is one GPU and everything pinned to it: worker `comfy-worker-gpu{N}`, ComfyUI on port
8188+N. Slot numbers are NVML (PCI order) indices, so `gpu2` is always the same physical card,
whether it was named by index or by UUID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.errors import GpuNotFound, SlotError


@dataclass(frozen=True)
class Slot:
    index: int
    uuid: str | None = None
    name: str = ""
    memory_total_mb: int | None = None
    simulated: bool = False

    @property
    def device_id(self) -> str:
        """What a device request pins: the UUID when known (stable across reboots), else index."""
        return self.uuid or str(self.index)


class _Device(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def uuid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def memory_total_mb(self) -> int: ...


@dataclass(frozen=True)
class Selection:
    slots: list[Slot]
    num_gpus: int  # NUM_GPUS for the workers: GPUs on this machine, or simulated slots
    note: str | None = None  # one line the CLI shows (e.g. "NVML unavailable: pinning by index")


def simulated_slots(count: int) -> Selection:
    if count < 1:
        raise SlotError("--simulate needs a count of at least 1")
    slots = [Slot(index=i, name="simulated", simulated=True) for i in range(count)]
    return Selection(slots=slots, num_gpus=count)


def parse_gpu_list(text: str) -> list[str]:
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise SlotError(f"--gpus {text!r} names no GPU: pass indices or UUIDs, e.g. --gpus 0,2")
    if len(set(tokens)) != len(tokens):
        raise SlotError(f"--gpus {text!r} names a GPU twice")
    return tokens


def _from_device(device: _Device) -> Slot:
    return Slot(device.index, device.uuid, device.name, device.memory_total_mb)


def select_slots(
    gpus: str | None,
    simulate: int | None,
    devices: Sequence[_Device],
    discovery_error: str | None = None,
    count: int | None = None,
) -> Selection:
    """The slots to manage. `devices` is what NVML found (empty when there is no driver)."""
    given = [
        name
        for name, value in (("--gpus", gpus), ("--count", count), ("--simulate", simulate))
        if value is not None
    ]
    if len(given) > 1:
        raise SlotError(f"use either {' or '.join(given)}, not both")
    if simulate is not None:
        return simulated_slots(simulate)
    why = f" ({discovery_error})" if discovery_error else ""
    if count is not None:
        return _first(count, devices, why)
    if not gpus or gpus.strip().lower() == "all":
        if not devices:
            raise GpuNotFound(
                f"no NVIDIA GPU found{why}: install the NVIDIA driver, name GPUs with --gpus, "
                "or run without GPUs with --simulate N"
            )
        return Selection([_from_device(d) for d in devices], num_gpus=len(devices))
    tokens = parse_gpu_list(gpus)
    if not devices:
        if not all(token.isdigit() for token in tokens):
            raise SlotError(
                f"GPU UUIDs need NVML to map them to indices{why}: pass indices instead"
            )
        slots = [Slot(index=int(token)) for token in tokens]
        note = f"NVML unavailable{why}: pinning GPUs {gpus} by index"
        return Selection(slots, num_gpus=max(s.index for s in slots) + 1, note=note)
    by_index = {d.index: d for d in devices}
    by_uuid = {d.uuid: d for d in devices}
    chosen: list[Slot] = []
    for token in tokens:
        device = by_index.get(int(token)) if token.isdigit() else by_uuid.get(token)
        if device is None:
            known = ", ".join(str(d.index) for d in devices)
            raise GpuNotFound(f"GPU {token} not found: this machine has GPUs {known}")
        chosen.append(_from_device(device))
    if len({s.index for s in chosen}) != len(chosen):
        raise SlotError(f"--gpus {gpus!r} names a GPU twice")
    return Selection(chosen, num_gpus=len(devices))


def _first(count: int, devices: Sequence[_Device], why: str) -> Selection:
    if count < 1:
        raise SlotError("--count needs at least 1 GPU")
    if not devices:
        slots = [Slot(index=i) for i in range(count)]
        note = f"NVML unavailable{why}: pinning GPUs 0-{count - 1} by index"
        return Selection(slots, num_gpus=count, note=note)
    if count > len(devices):
        raise GpuNotFound(f"--count {count}: this machine has {len(devices)} GPU(s)")
    return Selection([_from_device(d) for d in devices[:count]], num_gpus=len(devices))


def slot_indices(target: str, selection: Selection | None) -> list[int] | None:
    """The slots a command acts on: the positional GPU_ID|all and/or a --gpus selection.

    None means every managed slot. Naming a GPU both ways must name the same one."""
    index = parse_target(target)
    if selection is None:
        return None if index is None else [index]
    chosen = [slot.index for slot in selection.slots]
    if index is not None and chosen != [index]:
        raise SlotError(f"GPU {target} and --gpus name different GPUs: pass one of them")
    return chosen


def parse_target(target: str) -> int | None:
    """`all` -> None; `N` -> N. Raises SlotError for anything else."""
    if target.strip().lower() == "all":
        return None
    if target.strip().isdigit():
        return int(target.strip())
    raise SlotError(f"{target!r} is not a GPU id: pass a GPU index like 0, or all")
