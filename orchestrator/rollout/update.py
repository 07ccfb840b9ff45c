"""`wgpu update`: replace GPUs' containers (or processes) one at a time, without losing a job.

Per GPU: drain it in the hub (its job finishes, or past the drain timeout goes back to the queue
uncounted), set its services aside (stopped, kept), start the new configuration, wait until the
hub sees the new worker connected, ready and on the expected version; then drop the old
services and resume it. If the new worker is not ready within the ready timeout, the old
services come back as they were and the update stops there: the GPUs not reached yet are not
touched.

The new configuration is the old one (`ServiceRecord.plan_json`, kept beside each slot at
start) with only what was asked changed (`Change`): `apply_change` is pure.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    ActionResult,
    ServicePlan,
    ServiceRecord,
    SlotPlan,
    slot_plan_from_json,
    slot_plan_json,
)
from orchestrator.backends.common import fan_out
from orchestrator.errors import ExitCode, HubError, WgpuError
from orchestrator.rollout.worker_src import MOUNT_POINT, VERSION_ENV, WorkerSource
from wgpu_protocol import ports, worker_env
from wgpu_protocol.rest import DrainAnswerJson, ResumeAnswerJson, WorkerJson

_SRC_ENV = ("PYTHONPATH", VERSION_ENV, worker_env.SRC_DESCRIBE)


class UpdateError(WgpuError):
    exit_code = ExitCode.NOT_FOUND

    """The update cannot start (nothing to update, no plan recorded); one line for the user."""


class Step(enum.StrEnum):
    WAITING = "waiting"
    DRAINING = "draining"
    REPLACING = "replacing"
    STARTING = "starting"
    CONNECTING = "waiting for worker"
    DONE = "updated"
    UNCHANGED = "unchanged"
    ROLLING_BACK = "rolling back"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"
    SKIPPED = "skipped"


FINAL_OK = (Step.DONE, Step.UNCHANGED)


@dataclass(frozen=True)
class Change:
    """What `wgpu update` changes; None leaves it as it is."""

    image: str | None = None
    comfyui_image: str | None = None
    worker_src: WorkerSource | None = None


@dataclass
class SlotUpdate:
    index: int
    worker_id: str
    step: Step = Step.WAITING
    old_version: str | None = None
    new_version: str | None = None
    detail: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round(self.finished_at - self.started_at, 2)

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu": self.index,
            "worker_id": self.worker_id,
            "outcome": str(self.step),
            "old_version": self.old_version,
            "new_version": self.new_version,
            "detail": self.detail,
            "seconds": self.seconds,
        }


def worker_id_of(plan: SlotPlan) -> str:
    return ports.worker_id(plan.machine_id, plan.slot.index)


def version_of(plan: SlotPlan) -> str | None:
    """The worker version a plan's worker reports, when it runs from a worker tree."""
    return plan.worker.env.get(VERSION_ENV)


def _with_src(service: ServicePlan, src: WorkerSource, containers: bool) -> ServicePlan:
    env = {k: v for k, v in service.env.items() if k not in _SRC_ENV}
    root = MOUNT_POINT if containers else str(src.path)
    mounts = ((str(src.path), MOUNT_POINT),) if containers else ()
    return replace(service, env={**env, **src.env(root)}, mounts=mounts)


def apply_change(plan: SlotPlan, change: Change, containers: bool = True) -> SlotPlan:
    """The plan with `change` applied (pure). A simulated slot's ComfyUI is the simulator from
    the worker image (and from the worker tree when it has one), so it follows both."""
    worker, comfyui = plan.worker, plan.comfyui
    simulated = plan.slot.simulated
    if change.image:
        worker = replace(worker, image=change.image)
        if comfyui is not None and simulated:
            comfyui = replace(comfyui, image=change.image)
    if change.comfyui_image and not simulated:
        if comfyui is None:
            port = int(worker.env.get(worker_env.COMFYUI_PORT, ports.comfyui_port(plan.slot.index)))
            comfyui = ServicePlan(ROLE_COMFYUI, env={"PORT": str(port)}, port=port)
        comfyui = replace(comfyui, image=change.comfyui_image)
    if change.worker_src is not None:
        worker = _with_src(worker, change.worker_src, containers)
        if comfyui is not None and simulated and change.worker_src.has_simulator:
            comfyui = _with_src(comfyui, change.worker_src, containers)
    return replace(plan, worker=worker, comfyui=comfyui)


def current_plans(records: Sequence[ServiceRecord]) -> dict[int, SlotPlan]:
    """The plan each slot's worker was started with (slots started before plans were kept, or
    whose plan cannot be read, are left out)."""
    plans = {}
    for record in records:
        if record.role == ROLE_WORKER and record.plan_json:
            try:
                plans[record.index] = slot_plan_from_json(record.plan_json)
            except ValueError:
                continue
    return plans


class Replaceable(Protocol):
    """What an update needs of a backend (DockerBackend and ProcessBackend have it)."""

    name: str

    def services(self) -> list[ServiceRecord]: ...
    def start(self, plans: Sequence[SlotPlan]) -> list[ActionResult]: ...
    def set_aside(
        self, index: int, timeout_s: float, roles: Sequence[str] = ...
    ) -> list[ActionResult]: ...
    def restore(self, index: int, timeout_s: float) -> list[ActionResult]: ...
    def discard_aside(self, index: int) -> None: ...


class DrainingHub(Protocol):
    def get_workers(self) -> list[WorkerJson]: ...
    def drain(self, worker_id: str, timeout_s: float | None = None) -> DrainAnswerJson: ...
    def resume(self, worker_id: str) -> ResumeAnswerJson: ...


def prepare_update(
    backend: Replaceable, change: Change, indices: Sequence[int] | None, containers: bool = True
) -> list[tuple[SlotPlan, SlotPlan]]:
    """(old, new) plan per slot to update, in GPU order; raises UpdateError."""
    plans = current_plans(backend.services())
    if not plans:
        raise UpdateError(
            "no running GPU has a recorded configuration: start them with `wgpu start` first"
        )
    wanted = sorted(plans) if indices is None else list(indices)
    missing = [i for i in wanted if i not in plans]
    if missing:
        known = ", ".join(str(i) for i in sorted(plans))
        raise UpdateError(f"GPU {missing[0]} is not managed here (GPUs: {known})")
    return [(plans[i], apply_change(plans[i], change, containers)) for i in wanted]


@dataclass
class UpdateSettings:
    drain_timeout_s: float = 600.0  # then the running job goes back to the queue uncounted
    ready_timeout_s: float = 120.0
    max_unavailable: int = 1
    stop_timeout_s: float = 30.0
    poll_s: float = 0.1
    containers: bool = True  # docker: the worker tree is mounted; process: used in place


@dataclass
class RollingUpdate:
    backend: Replaceable
    hub: DrainingHub
    settings: UpdateSettings = field(default_factory=UpdateSettings)
    on_change: Callable[[SlotUpdate], None] = lambda update: None

    def run(self, pairs: Sequence[tuple[SlotPlan, SlotPlan]]) -> list[SlotUpdate]:
        updates = [
            SlotUpdate(
                old.slot.index,
                worker_id_of(old),
                old_version=version_of(old),
                new_version=version_of(new),
            )
            for old, new in pairs
        ]
        for update in updates:
            self.on_change(update)
        size = max(1, self.settings.max_unavailable)
        for start in range(0, len(pairs), size):
            batch = list(
                zip(pairs[start : start + size], updates[start : start + size], strict=True)
            )
            fan_out(lambda item: self._update_slot(item[0][0], item[0][1], item[1]), batch)
            if any(u.step not in FINAL_OK for _, u in batch):
                for update in updates[start + size :]:
                    self._set(update, Step.SKIPPED, "an earlier GPU did not update")
                break
        return updates

    # -- one slot --------------------------------------------------------------------------

    def _set(self, update: SlotUpdate, step: Step, detail: str = "") -> None:
        update.step = step
        update.detail = detail
        if step in (Step.DONE, Step.UNCHANGED, Step.ROLLED_BACK, Step.FAILED, Step.SKIPPED):
            update.finished_at = time.monotonic()
        self.on_change(update)

    def _update_slot(self, old: SlotPlan, new: SlotPlan, update: SlotUpdate) -> None:
        update.started_at = time.monotonic()
        if slot_plan_json(old) == slot_plan_json(new):
            self._set(update, Step.UNCHANGED, "already on this configuration")
            return
        self._set(update, Step.DRAINING)
        try:
            self.hub.drain(update.worker_id, self.settings.drain_timeout_s)
            self._wait_drained(update.worker_id)
        except HubError as exc:
            with contextlib.suppress(HubError):
                self.hub.resume(update.worker_id)
            self._set(update, Step.FAILED, f"hub: {exc}")
            return
        try:
            self._replace(old, new, update)
        except HubError as exc:
            self._roll_back(old, update, f"hub: {exc}")

    def _replace(self, old: SlotPlan, new: SlotPlan, update: SlotUpdate) -> None:
        worker_id, index = update.worker_id, update.index
        self._set(update, Step.REPLACING)
        # A ComfyUI whose configuration is unchanged keeps running (and its models loaded).
        roles = [ROLE_WORKER] if old.comfyui == new.comfyui else [ROLE_WORKER, ROLE_COMFYUI]
        aside = self.backend.set_aside(index, self.settings.stop_timeout_s, roles)
        failed = [r for r in aside if not r.ok]
        if failed:
            self._roll_back(old, update, f"could not stop the old services: {failed[0].detail}")
            return
        self._set(update, Step.STARTING)
        started = self.backend.start([new])
        failed = [r for r in started if not r.ok]
        if failed:
            self._roll_back(old, update, f"{failed[0].role}: {failed[0].detail}")
            return
        self._set(update, Step.CONNECTING)
        why = self._wait_ready(worker_id, version_of(new))
        if why:
            self._roll_back(old, update, why)
            return
        self.backend.discard_aside(index)
        self.hub.resume(worker_id)
        self._set(update, Step.DONE)

    def _roll_back(self, old: SlotPlan, update: SlotUpdate, why: str) -> None:
        self._set(update, Step.ROLLING_BACK, why)
        restored = self.backend.restore(update.index, self.settings.stop_timeout_s)
        failed = [r for r in restored if not r.ok]
        try:
            back = "" if failed else self._wait_ready(update.worker_id, version_of(old))
            self.hub.resume(update.worker_id)
        except HubError as exc:
            back = f"hub: {exc}"
        if failed or back:
            detail = failed[0].detail if failed else back
            self._set(
                update, Step.FAILED, f"{why}; the old configuration did not come back: {detail}"
            )
            return
        self._set(update, Step.ROLLED_BACK, why)

    def _entry(self, worker_id: str) -> WorkerJson | None:
        return next((w for w in self.hub.get_workers() if w.get("id") == worker_id), None)

    def _wait_drained(self, worker_id: str) -> None:
        """Until the worker runs nothing (the hub releases its job at the drain deadline)."""
        deadline = time.monotonic() + self.settings.drain_timeout_s + 5.0
        while time.monotonic() < deadline:
            entry = self._entry(worker_id)
            if entry is None or not entry.get("connected"):
                return
            drain = entry.get("drain")
            if drain is not None and drain["state"] == "drained":
                return
            time.sleep(self.settings.poll_s)

    def _wait_ready(self, worker_id: str, version: str | None) -> str:
        """'' once the hub sees the worker connected, ready (idle, drained) and on `version`;
        else why not, after the ready timeout."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        seen = "the worker never connected to the hub"
        while time.monotonic() < deadline:
            entry = self._entry(worker_id)
            if entry is not None and entry.get("connected"):
                reported = entry.get("version")
                if version is not None and reported != version:
                    seen = f"the worker reports version {reported}, not {version}"
                elif entry.get("status") != "idle":
                    seen = f"the worker is {entry.get('status')}, not ready"
                else:
                    return ""
            time.sleep(self.settings.poll_s)
        return f"not ready within {self.settings.ready_timeout_s:g}s: {seen}"
