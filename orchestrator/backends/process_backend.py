"""Workers as local processes, one per GPU, for hosts without Docker (rented pods, containers).

The original layout under a base directory:
    BASE/worker_gpu{N}/worker.pid            the worker's PID (one line, as the original)
    BASE/worker_gpu{N}/logs/output.log       its stdout and stderr
    BASE/worker_gpu{N}/health.json           its health file (HEALTH_FILE), one per worker
    BASE/worker_gpu{N}/comfyui.pid, logs/comfyui.log   the simulator / ComfyUI beside it
plus `worker.json` / `comfyui.json` with what `restart` and stale-PID detection need (command,
env, the process start time). A PID whose process is gone, or that now belongs to another
program (a different start time), is stale: it is reported and its PID file removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import processes
from orchestrator.backends.base import (
    ROLE_COMFYUI,
    ROLE_WORKER,
    ActionResult,
    LogLine,
    LogRequest,
    Outcome,
    ServicePlan,
    ServiceRecord,
    SlotPlan,
    slot_plan_json,
    unmanaged,
)
from orchestrator.backends.common import fan_out, port_answers
from orchestrator.errors import BackendError
from wgpu_protocol import worker_env

ROLES = (ROLE_WORKER, ROLE_COMFYUI)
_LOG_NAMES = {ROLE_WORKER: "output.log", ROLE_COMFYUI: "comfyui.log"}
# Our own children, so that their exit is reaped (no zombies while the CLI or a test lives on).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def default_base_dir() -> Path:
    """~/.wgpu when the home directory is writable, else ./wgpu-workers."""
    home = Path.home()
    if os.access(home, os.W_OK):
        return home / ".wgpu"
    return Path.cwd() / "wgpu-workers"


def default_worker_command() -> list[str]:
    """WGPU_WORKER_CMD when set (e.g. a wrapper script), else this Python's comfy_worker."""
    override = os.environ.get("WGPU_WORKER_CMD")
    return shlex.split(override) if override else [sys.executable, "-m", "comfy_worker"]


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # reaps our own exited child
        _CHILDREN.pop(pid, None)
        return False
    return processes.pid_alive(pid)


@dataclass(frozen=True)
class SlotFiles:
    base_dir: Path
    index: int

    @property
    def directory(self) -> Path:
        return self.base_dir / f"worker_gpu{self.index}"

    def pid_file(self, role: str) -> Path:
        return self.directory / f"{role}.pid"

    def meta_file(self, role: str) -> Path:
        return self.directory / f"{role}.json"

    def log_file(self, role: str) -> Path:
        return self.directory / "logs" / _LOG_NAMES[role]


@dataclass(frozen=True)
class ProcessState:
    pid: int | None
    alive: bool
    stale: bool  # a PID file whose process has gone or belongs to another program now
    meta: dict[str, Any]


class ProcessBackend:
    name = "process"

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        worker_command: Sequence[str] | None = None,
        comfyui_wait_s: float = 60.0,
        machine_id: str | None = None,
    ) -> None:
        self.base_dir = (base_dir or default_base_dir()).expanduser().resolve()
        self.worker_command = tuple(worker_command or default_worker_command())
        self.comfyui_wait_s = comfyui_wait_s
        self.machine_id = machine_id

    def close(self) -> None:
        """Nothing to close: processes outlive the CLI by design."""

    def files(self, index: int) -> SlotFiles:
        return SlotFiles(self.base_dir, index)

    # --- state -----------------------------------------------------------------------------

    def _state(self, files: SlotFiles, role: str) -> ProcessState:
        meta: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(files.meta_file(role).read_text())
        try:
            pid = int(files.pid_file(role).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return ProcessState(None, alive=False, stale=False, meta=meta)
        alive = _pid_alive(pid)
        if alive and meta.get("pid") == pid and meta.get("start_ticks") is not None:
            alive = processes.start_ticks(pid) == meta["start_ticks"]  # else: PID reused
        elif alive:
            alive = self._cmdline_matches(pid, role)  # a PID file without ours beside it
        return ProcessState(pid, alive=alive, stale=not alive, meta=meta)

    def _cmdline_matches(self, pid: int, role: str) -> bool:
        cmdline = processes.command_line(pid)
        if cmdline is None:
            return True  # no /proc: trust the PID
        wanted = ("comfy_worker", "comfy-worker") if role == ROLE_WORKER else ("comfyui", "main.py")
        return any(word in cmdline for word in wanted)

    def _slot_indices(self) -> list[int]:
        if not self.base_dir.is_dir():
            return []
        indices = []
        for entry in self.base_dir.glob("worker_gpu*"):
            suffix = entry.name.removeprefix("worker_gpu")
            if entry.is_dir() and suffix.isdigit():
                indices.append(int(suffix))
        return sorted(indices)

    def services(self) -> list[ServiceRecord]:
        records = []
        for index in self._slot_indices():
            files = self.files(index)
            for role in ROLES:
                state = self._state(files, role)
                if state.pid is None and not state.meta:
                    continue
                if self.machine_id and state.meta.get("machine_id") not in (None, self.machine_id):
                    continue
                records.append(_record(files, role, state))
        return records

    # --- start -----------------------------------------------------------------------------

    def start(self, plans: Sequence[SlotPlan]) -> list[ActionResult]:
        per_slot = fan_out(self._start_slot, list(plans))
        return [result for results in per_slot for result in results]

    def _start_slot(self, plan: SlotPlan) -> list[ActionResult]:
        results = []
        files = self.files(plan.slot.index)
        if plan.comfyui is not None:
            if plan.comfyui.command is None:
                detail = "--comfyui-image needs --backend docker: pass --comfyui-cmd instead"
                return [ActionResult(plan.slot.index, ROLE_COMFYUI, Outcome.FAILED, detail)]
            comfyui = self._ensure(plan, plan.comfyui, plan.comfyui.command)
            if comfyui.ok and plan.comfyui.port is not None:
                comfyui = self._wait_port(files, plan.comfyui.port, comfyui)
            results.append(comfyui)
            if not comfyui.ok:
                detail = f"not started: ComfyUI of gpu{plan.slot.index} is not ready"
                results.append(ActionResult(plan.slot.index, ROLE_WORKER, Outcome.FAILED, detail))
                return results
        results.append(self._ensure(plan, plan.worker, self.worker_command))
        return results

    def _ensure(self, plan: SlotPlan, service: ServicePlan, command: Sequence[str]) -> ActionResult:
        index, role = plan.slot.index, service.role
        files = self.files(index)
        env = dict(service.env)
        # CUDA's own order can differ from NVML's: pin in PCI order, like the slot numbers.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = "" if plan.slot.simulated else plan.slot.device_id
        env["PYTHONUNBUFFERED"] = "1"
        if role == ROLE_WORKER:
            # Workers on one host must not share the default /tmp health file.
            env.setdefault(worker_env.HEALTH_FILE, str(files.directory / "health.json"))
        config_hash = ServicePlan(role, env, tuple(command)).config_hash()
        state = self._state(files, role)
        outcome = Outcome.STARTED
        if state.alive:
            if state.meta.get("config_hash") == config_hash:
                return ActionResult(index, role, Outcome.ALREADY_RUNNING, f"pid {state.pid}")
            self._stop_state(files, role, state, timeout_s=30.0)
            outcome = Outcome.RECREATED
        meta = {
            "command": list(command),
            "env": env,
            "config_hash": config_hash,
            "machine_id": plan.machine_id,
            "gpu_index": index,
            "gpu_uuid": plan.slot.uuid,
            "simulated": plan.slot.simulated,
            "port": service.port,
        }
        if role == ROLE_WORKER:
            meta["slot_plan"] = slot_plan_json(plan)
        try:
            pid = self._spawn(files, role, meta)
        except OSError as exc:
            return ActionResult(index, role, Outcome.FAILED, f"cannot run {command[0]}: {exc}")
        return ActionResult(index, role, outcome, f"pid {pid}")

    def _spawn(self, files: SlotFiles, role: str, meta: dict[str, Any]) -> int:
        log_path = files.log_file(role)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Own session: the worker outlives the CLI, and stop can signal its whole group.
            child = subprocess.Popen(
                meta["command"],
                env={**os.environ, **meta["env"]},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=files.directory,
                start_new_session=True,
            )
        _CHILDREN[child.pid] = child
        meta = {
            **meta,
            "pid": child.pid,
            "start_ticks": processes.start_ticks(child.pid),
            "started_at": time.time(),
        }
        _write_atomic(files.meta_file(role), json.dumps(meta, indent=1), mode=0o600)
        _write_atomic(files.pid_file(role), f"{child.pid}\n")
        return child.pid

    def _wait_port(self, files: SlotFiles, port: int, started: ActionResult) -> ActionResult:
        deadline = time.monotonic() + self.comfyui_wait_s
        while time.monotonic() < deadline:
            state = self._state(files, ROLE_COMFYUI)
            if not state.alive:
                last = _last_line(files.log_file(ROLE_COMFYUI))
                detail = f"ComfyUI of gpu{files.index} exited: {last or 'no output'}"
                return ActionResult(files.index, ROLE_COMFYUI, Outcome.FAILED, detail)
            if port_answers(port):
                return started
            time.sleep(0.1)
        detail = (
            f"ComfyUI of gpu{files.index} did not answer on port {port}: "
            f"see `wgpu logs {files.index} --service comfyui --backend process`"
        )
        return ActionResult(files.index, ROLE_COMFYUI, Outcome.FAILED, detail)

    # --- stop / restart --------------------------------------------------------------------

    def stop(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        known = self._slot_indices()
        targets = known if indices is None else [i for i in indices if i in known]
        results = unmanaged(indices, known)
        for slot_results in fan_out(lambda i: self._stop_slot(i, timeout_s), targets):
            results.extend(slot_results)
        return sorted(results, key=lambda r: r.index)

    def _stop_slot(self, index: int, timeout_s: float) -> list[ActionResult]:
        files = self.files(index)
        results = []
        for role in ROLES:  # the worker first, so it can hand its job back
            state = self._state(files, role)
            if state.pid is None and not state.meta:
                continue
            if not state.alive:
                detail = f"stale PID file removed (pid {state.pid})" if state.stale else ""
                files.pid_file(role).unlink(missing_ok=True)
                results.append(ActionResult(index, role, Outcome.NOT_RUNNING, detail))
                continue
            self._stop_state(files, role, state, timeout_s)
            results.append(ActionResult(index, role, Outcome.STOPPED, f"pid {state.pid}"))
        return results

    def _stop_state(
        self, files: SlotFiles, role: str, state: ProcessState, timeout_s: float
    ) -> None:
        """SIGTERM to the process group, `timeout_s` grace, then SIGKILL."""
        assert state.pid is not None
        pid = state.pid
        processes.terminate(
            lambda signum: _signal_group(pid, signum),
            lambda: self._state(files, role).alive,
            timeout_s,
        )
        files.pid_file(role).unlink(missing_ok=True)

    def restart(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        """Stop, then start again with the command and env each was started with."""
        known = self._slot_indices()
        targets = known if indices is None else [i for i in indices if i in known]
        results = unmanaged(indices, known, "no such worker: use start")

        def restart_slot(index: int) -> list[ActionResult]:
            files = self.files(index)
            self._stop_slot(index, timeout_s)
            done = []
            for role in (ROLE_COMFYUI, ROLE_WORKER):
                meta = self._state(files, role).meta
                if not meta.get("command"):
                    continue
                try:
                    pid = self._spawn(files, role, meta)
                except OSError as exc:
                    done.append(ActionResult(index, role, Outcome.FAILED, str(exc)))
                    break
                result = ActionResult(index, role, Outcome.RESTARTED, f"pid {pid}")
                if role == ROLE_COMFYUI and meta.get("port"):
                    result = self._wait_port(files, int(meta["port"]), result)
                done.append(result)
                if not result.ok:
                    break
            return done

        for slot_results in fan_out(restart_slot, targets):
            results.extend(slot_results)
        return sorted(results, key=lambda r: (r.index, r.role != ROLE_WORKER))

    # --- replacing a slot (wgpu update) ----------------------------------------------------

    def set_aside(
        self, index: int, timeout_s: float, roles: Sequence[str] = ROLES
    ) -> list[ActionResult]:
        """Stop the slot's processes of `roles` (worker first) and keep their meta files as
        ROLE.prev.json, so that `start` spawns new ones and `restore` can bring these back."""
        self.discard_aside(index)
        files = self.files(index)
        results = []
        for role in (r for r in ROLES if r in roles):
            state = self._state(files, role)
            if state.alive:
                self._stop_state(files, role, state, timeout_s)
                results.append(ActionResult(index, role, Outcome.STOPPED, f"pid {state.pid}"))
            files.pid_file(role).unlink(missing_ok=True)
            meta = files.meta_file(role)
            if meta.exists():
                meta.replace(_aside_file(files, role))
        return results

    def restore(self, index: int, timeout_s: float) -> list[ActionResult]:
        """Stop the slot's new processes and respawn the ones set aside, ComfyUI first."""
        files = self.files(index)
        for role in ROLES:
            state = self._state(files, role)
            if _aside_file(files, role).exists() and state.alive:
                self._stop_state(files, role, state, timeout_s)
        results = []
        for role in (ROLE_COMFYUI, ROLE_WORKER):
            aside = _aside_file(files, role)
            if not aside.exists():
                continue  # not replaced: it runs on as it is
            files.meta_file(role).unlink(missing_ok=True)
            try:
                meta = json.loads(aside.read_text())
                aside.unlink()
                pid = self._spawn(files, role, meta)
            except (OSError, ValueError) as exc:
                results.append(ActionResult(index, role, Outcome.FAILED, str(exc)))
                return results
            result = ActionResult(index, role, Outcome.RESTARTED, f"pid {pid}")
            if role == ROLE_COMFYUI and meta.get("port"):
                result = self._wait_port(files, int(meta["port"]), result)
            results.append(result)
        return results

    def discard_aside(self, index: int) -> None:
        for role in ROLES:
            _aside_file(self.files(index), role).unlink(missing_ok=True)

    # --- logs ------------------------------------------------------------------------------

    def logs(self, request: LogRequest) -> Iterator[LogLine]:
        if request.since:
            raise BackendError("--since needs --backend docker: process logs carry no timestamps")
        known = self._slot_indices()
        indices = known if request.indices is None else [i for i in request.indices if i in known]
        paths = [(i, self.files(i).log_file(request.role)) for i in indices]
        paths = [(i, p) for i, p in paths if p.exists()]
        if not paths:
            raise BackendError(f"no {request.role} log to show: start it first")
        offsets = {}
        for index, path in paths:
            lines = path.read_bytes().splitlines()
            if request.tail is not None:
                lines = lines[-request.tail :] if request.tail else []
            for raw in lines:
                yield LogLine(index, request.role, raw.decode(errors="replace"))
            offsets[index] = path.stat().st_size
        while request.follow:
            for index, path in paths:
                with open(path, "rb") as handle:
                    handle.seek(offsets[index])
                    chunk = handle.read()
                complete, _, _ = chunk.rpartition(b"\n")
                if complete:
                    offsets[index] += len(complete) + 1
                    for raw in complete.split(b"\n"):
                        yield LogLine(index, request.role, raw.decode(errors="replace"))
            time.sleep(0.2)


def _aside_file(files: SlotFiles, role: str) -> Path:
    return files.directory / f"{role}.prev.json"


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(text)
    partial.chmod(mode)
    partial.replace(path)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_bytes().strip().splitlines()
    except OSError:
        return ""
    return lines[-1].decode(errors="replace") if lines else ""


def _record(files: SlotFiles, role: str, state: ProcessState) -> ServiceRecord:
    meta = state.meta
    if state.alive:
        status = "running"
    elif state.stale:
        status = "stale"
    else:
        status = "exited"
    return ServiceRecord(
        index=files.index,
        role=role,
        name=str(files.pid_file(role)),
        state=status,
        machine_id=str(meta.get("machine_id") or ""),
        gpu_uuid=meta.get("gpu_uuid"),
        simulated=bool(meta.get("simulated")),
        started_at=meta.get("started_at") if state.alive else None,
        ident=str(state.pid or ""),
        plan_json=str(meta.get("slot_plan") or ""),
    )
