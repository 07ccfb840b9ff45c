"""Workers as containers, one per GPU, through the Docker Engine API (docker-py).

Labels carry all state (no local state file): `status` rebuilds the picture from one
`containers.list` call. A container's `wgpu.config_hash` label decides whether `start` leaves it
alone or recreates it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from docker.types import LogConfig

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
from orchestrator.backends.common import fan_out, parse_since, port_answers
from orchestrator.backends.engine import create_args, create_container, error_text, start_container
from orchestrator.errors import BackendError, BackendUnreachable
from orchestrator.stack.spec import (
    LABEL_CONFIG_HASH,
    LABEL_GPU_INDEX,
    LABEL_GPU_UUID,
    LABEL_MACHINE,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SIMULATED,
    ContainerSpec,
    container_name,
    slot_containers,
    spec_hash,
)

CONFLICT = 409  # the Engine API's answer to a create under a name already taken
LABEL_SLOT_PLAN = "wgpu.slot_plan"  # on workers: the plan the slot was started with
ASIDE_SUFFIX = "-prev"  # `wgpu update` keeps a slot's old containers under this name
ROLES = (ROLE_WORKER, ROLE_COMFYUI)
READY_PORT_POLL_S = 0.02  # how often a starting ComfyUI's port is tried
# ... and its container inspected for a crash meanwhile: every inspect is engine and client CPU
# taken from the ComfyUIs still booting (eight slots, two cores), so only as often as a crash
# must be seen. The port answering needs no inspect at all.
READY_INSPECT_S = 1.0
READY_POLL_S = 0.1  # remote engines: the container's state is all there is to ask


@dataclass(frozen=True)
class _Prepared:
    """A container ready to start, and what starting it will be reported as."""

    container: Container
    outcome: Outcome
    created: bool  # by this start (removed again if its ComfyUI never answers)


def parse_docker_time(text: str) -> float | None:
    """Docker's RFC 3339 times have nanoseconds, which fromisoformat (3.11) does not take."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    with contextlib.suppress(ValueError):
        tz = "+00:00"
        if "+" in frac or "-" in frac:
            sign = "+" if "+" in frac else "-"
            frac, tz_part = frac.split(sign, 1)
            tz = sign + tz_part
        micro = (frac[:6] or "0").ljust(6, "0")
        return datetime.fromisoformat(f"{head}.{micro}{tz}").timestamp()
    return None


def _is_local_host(docker_host: str | None) -> bool:
    """Whether host networking puts containers' ports on this machine's 127.0.0.1."""
    host = docker_host or os.environ.get("DOCKER_HOST", "")
    return (
        not host
        or host.startswith(("unix://", "npipe://"))
        or any(local in host for local in ("://127.0.0.1", "://localhost"))
    )


class DockerBackend:
    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        docker_host: str | None = None,
        network_mode: str = "host",
        restart_policy: str = "unless-stopped",
        log_max_size: str = "10m",
        log_max_file: int = 3,
        comfyui_wait_s: float = 120.0,
        machine_id: str | None = None,
    ) -> None:
        self.client = client
        self.docker_host = docker_host
        self.network_mode = network_mode
        self.restart_policy = restart_policy
        self.log_max_size = log_max_size
        self.log_max_file = log_max_file
        self.comfyui_wait_s = comfyui_wait_s
        self.machine_id = machine_id  # when set, only this machine's containers are seen

    @classmethod
    def connect(cls, docker_host: str | None = None, **kwargs: Any) -> DockerBackend:
        """`docker_host` (unix://, tcp://, ssh://), else DOCKER_HOST, else the current context."""
        host = docker_host or os.environ.get("DOCKER_HOST") or _context_host()
        try:
            if host:
                client = docker.DockerClient(
                    base_url=host, timeout=60, use_ssh_client=host.startswith("ssh://")
                )
            else:
                client = docker.from_env(timeout=60)
            client.ping()
        except (docker.errors.DockerException, OSError) as exc:
            where = host or "the default socket"
            raise BackendUnreachable(
                f"cannot reach the Docker engine at {where} ({_connect_reason(exc)}): "
                "start dockerd, pass --docker-host, or use --backend process"
            ) from None
        return cls(client, docker_host=host, **kwargs)

    def close(self) -> None:
        self.client.close()

    # --- listing ---------------------------------------------------------------------------

    def _containers(self) -> list[Container]:
        """The slots' containers, inspected (state, restarts, health) side by side: one list
        call, then an inspect each in parallel (docker-py's own list inspects one by one)."""
        filters: dict[str, Any] = {"label": [f"{LABEL_MANAGED}=true"]}
        if self.machine_id:
            filters["label"].append(f"{LABEL_MACHINE}={self.machine_id}")
        ours = [
            summary["Id"]
            for summary in self.client.api.containers(all=True, filters=filters)
            if (summary.get("Labels") or {}).get(LABEL_ROLE) in ROLES
            and not any(name.endswith(ASIDE_SUFFIX) for name in summary.get("Names") or ())
        ]
        return [c for c in fan_out(self._inspect, ours) if c is not None]

    def _inspect(self, container_id: str) -> Container | None:
        try:
            return self.client.containers.get(container_id)
        except docker.errors.NotFound:  # removed since the list
            return None

    def services(self) -> list[ServiceRecord]:
        records = [_record(c) for c in self._containers()]
        return sorted(records, key=lambda r: (r.index, r.role != ROLE_WORKER))

    def _by_slot(self, indices: Sequence[int] | None) -> dict[int, dict[str, Container]]:
        slots: dict[int, dict[str, Container]] = {}
        for container in self._containers():
            index = int(container.labels.get(LABEL_GPU_INDEX, "-1"))
            if indices is None or index in indices:
                slots.setdefault(index, {})[container.labels[LABEL_ROLE]] = container
        return slots

    # --- start -----------------------------------------------------------------------------

    def start(self, plans: Sequence[SlotPlan]) -> list[ActionResult]:
        """Every slot at once, none waiting for another: each starts its ComfyUI, creates its
        worker while ComfyUI boots, and starts the worker the moment its own ComfyUI answers."""
        images = {s.image for p in plans for s in (p.comfyui, p.worker) if s and s.image}
        image_ids = dict(zip(images, fan_out(self._image_id, sorted(images)), strict=True))
        # One list call says which names are taken by containers wgpu made; the others are
        # created straight away (no lookup each), a name taken by someone else answers 409.
        present = self._managed_names()
        per_slot = fan_out(lambda plan: self._start_slot(plan, image_ids, present), list(plans))
        return [result for results in per_slot for result in results]

    def _managed_names(self) -> frozenset[str]:
        found = self.client.api.containers(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        return frozenset(name.lstrip("/") for c in found for name in c.get("Names") or ())

    def _image_id(self, image: str) -> str | None:
        """The image's id (a rebuilt image under the same tag is a change); None: not here."""
        try:
            return str(self.client.images.get(image).id)
        except docker.errors.ImageNotFound:
            return None

    def _start_slot(
        self, plan: SlotPlan, image_ids: dict[str, str | None], present: frozenset[str]
    ) -> list[ActionResult]:
        index = plan.slot.index
        if plan.comfyui is not None and not plan.comfyui.image:
            detail = "--comfyui-cmd needs --comfyui-image with --backend docker"
            return [ActionResult(index, ROLE_COMFYUI, Outcome.FAILED, detail)]
        specs = self._specs(plan)
        if plan.comfyui is None:
            return [self._ensure(index, specs[ROLE_WORKER], image_ids, present)]
        comfyui = self._ensure(index, specs[ROLE_COMFYUI], image_ids, present)
        worker = None
        if comfyui.ok:  # created while ComfyUI boots: only the start waits for it
            worker = self._prepare(index, specs[ROLE_WORKER], image_ids, present)
        if comfyui.ok:
            comfyui = self._wait_ready(plan, plan.comfyui, comfyui)
        if not comfyui.ok:
            if isinstance(worker, _Prepared) and worker.created:
                with contextlib.suppress(docker.errors.APIError):  # never left half-made
                    worker.container.remove(force=True)
            detail = f"not started: comfyui-gpu{index} is not ready"
            return [comfyui, ActionResult(index, ROLE_WORKER, Outcome.FAILED, detail)]
        assert worker is not None
        return [comfyui, self._start_prepared(index, specs[ROLE_WORKER], worker)]

    def _specs(self, plan: SlotPlan) -> dict[str, ContainerSpec]:
        """The slot's containers as this backend runs them (its network, restart policy), the
        worker labelled with the plan it was started with (what `wgpu update` compares)."""
        specs = {}
        for spec in slot_containers(
            plan, network_mode=self.network_mode, restart=self.restart_policy
        ):
            if spec.role == ROLE_WORKER:
                spec = dataclasses.replace(
                    spec, labels={**spec.labels, LABEL_SLOT_PLAN: slot_plan_json(plan)}
                )
            specs[spec.role] = spec
        return specs

    def _log_config(self) -> LogConfig:
        return LogConfig(
            type="json-file",
            config={"max-size": self.log_max_size, "max-file": str(self.log_max_file)},
        )

    def container_spec(
        self, plan: SlotPlan, service: ServicePlan, config_hash: str
    ) -> dict[str, Any]:
        """The Engine API `create_container` arguments for one service of a slot (pure: no
        daemon call), labelled with `config_hash`."""
        spec = self._specs(plan)[service.role]
        labelled = dataclasses.replace(spec, labels={**spec.labels, LABEL_CONFIG_HASH: config_hash})
        return create_args(self.client.api, labelled, self._log_config())

    def _ensure(
        self,
        index: int,
        spec: ContainerSpec,
        image_ids: dict[str, str | None],
        present: frozenset[str],
    ) -> ActionResult:
        return self._start_prepared(index, spec, self._prepare(index, spec, image_ids, present))

    def _start_prepared(
        self, index: int, spec: ContainerSpec, prepared: _Prepared | ActionResult
    ) -> ActionResult:
        if isinstance(prepared, ActionResult):
            return prepared
        return self._start_container(prepared.container, index, spec.role, prepared.outcome)

    def _prepare(
        self,
        index: int,
        spec: ContainerSpec,
        image_ids: dict[str, str | None],
        present: frozenset[str],
    ) -> _Prepared | ActionResult:
        """The container to start for `spec` (created when missing or changed), or the
        result when there is nothing to start (running with the same config, or a failure).
        `present`: the names of the containers wgpu manages on this engine."""
        image_id = image_ids.get(spec.image)
        if image_id is None:
            detail = f"image {spec.image} not found: run `wgpu setup` or pass --image"
            return ActionResult(index, spec.role, Outcome.FAILED, detail)
        # The image id, not just its name: an image rebuilt under the same tag is a change.
        config_hash = spec_hash(spec, (image_id, self.log_max_size, str(self.log_max_file)))
        outcome = Outcome.STARTED
        labelled = dataclasses.replace(spec, labels={**spec.labels, LABEL_CONFIG_HASH: config_hash})
        try:
            if spec.name not in present:
                try:
                    return _Prepared(self._create(labelled), outcome, created=True)
                except docker.errors.APIError as exc:
                    if exc.status_code != CONFLICT:
                        raise
                    # The name is taken after all (made meanwhile, or not by wgpu): look at it.
            try:
                existing = self.client.containers.get(spec.name)
            except docker.errors.NotFound:
                existing = None
            if existing is not None and existing.labels.get(LABEL_MANAGED) != "true":
                detail = (
                    f"a container named {spec.name} exists that wgpu did not create: "
                    "remove or rename it"
                )
                return ActionResult(index, spec.role, Outcome.FAILED, detail)
            if existing is not None:
                if existing.labels.get(LABEL_CONFIG_HASH) == config_hash:
                    if existing.status in ("running", "restarting"):
                        return ActionResult(index, spec.role, Outcome.ALREADY_RUNNING)
                    return _Prepared(existing, Outcome.STARTED, created=False)
                existing.remove(force=True)
                outcome = Outcome.RECREATED
            container = self._create(labelled)
        except docker.errors.ImageNotFound:
            detail = f"image {spec.image} not found: run `wgpu setup` or pass --image"
            return ActionResult(index, spec.role, Outcome.FAILED, detail)
        except docker.errors.APIError as exc:
            return ActionResult(index, spec.role, Outcome.FAILED, error_text(exc))
        return _Prepared(container, outcome, created=True)

    def _create(self, spec: ContainerSpec) -> Container:
        return create_container(self.client, spec, self._log_config())

    def _start_container(
        self, container: Container, index: int, role: str, outcome: Outcome
    ) -> ActionResult:
        refused = start_container(container)
        if refused is not None:
            return ActionResult(index, role, Outcome.FAILED, refused)
        return ActionResult(index, role, outcome)

    def _wait_ready(
        self, plan: SlotPlan, service: ServicePlan, started: ActionResult
    ) -> ActionResult:
        """Wait until ComfyUI answers on its port (or, on a remote engine, is running)."""
        if service.port is None:
            return started
        name = container_name(service.role, plan.slot.index)
        # Only on the host network of a local engine is ComfyUI's port on our 127.0.0.1.
        local = _is_local_host(self.docker_host) and self.network_mode == "host"
        # The port is cheap to ask and says "ready" first; the engine is asked (which costs it
        # work while every other slot is starting too) only as often as a crash must be seen.
        inspect_every_s = READY_INSPECT_S if local else READY_POLL_S
        deadline = time.monotonic() + self.comfyui_wait_s
        next_inspect = time.monotonic() + inspect_every_s if local else 0.0
        running = False
        while time.monotonic() < deadline:
            if local and port_answers(service.port):
                return started
            if time.monotonic() >= next_inspect:
                try:
                    container = self.client.containers.get(name)
                except docker.errors.NotFound:
                    break
                crashed = container.status in ("exited", "dead", "restarting")
                if crashed or container.attrs.get("RestartCount", 0):  # restarts hide exits
                    last = container.logs(tail=1).decode(errors="replace").strip()
                    detail = f"{name} exited: {last or 'no output'}"
                    container.stop(timeout=1)  # not left crash-looping under its restart policy
                    return ActionResult(plan.slot.index, service.role, Outcome.FAILED, detail)
                running = container.status == "running"
                next_inspect = time.monotonic() + inspect_every_s
            if running and not local:
                return started
            time.sleep(READY_POLL_S if not local else READY_PORT_POLL_S)
        detail = (
            f"{name} did not answer on port {service.port} within {self.comfyui_wait_s:.0f}s: "
            f"see `wgpu logs {plan.slot.index} --service comfyui`"
        )
        return ActionResult(plan.slot.index, service.role, Outcome.FAILED, detail)

    # --- stop / restart --------------------------------------------------------------------

    def stop(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        slots = self._by_slot(indices)
        results = unmanaged(indices, slots)

        def stop_slot(item: tuple[int, dict[str, Container]]) -> list[ActionResult]:
            index, containers = item
            # The worker first, so it can hand its job back while ComfyUI still answers.
            return [
                self._stop_one(index, role, containers[role], timeout_s)
                for role in ROLES
                if role in containers
            ]

        for slot_results in fan_out(stop_slot, sorted(slots.items())):
            results.extend(slot_results)
        return sorted(results, key=lambda r: r.index)

    def _stop_one(
        self, index: int, role: str, container: Container, timeout_s: float
    ) -> ActionResult:
        if container.status not in ("running", "restarting", "paused"):
            return ActionResult(index, role, Outcome.NOT_RUNNING)
        try:
            container.stop(timeout=max(0, int(timeout_s)))
        except docker.errors.APIError as exc:
            return ActionResult(index, role, Outcome.FAILED, error_text(exc))
        return ActionResult(index, role, Outcome.STOPPED)

    def restart(self, indices: Sequence[int] | None, timeout_s: float) -> list[ActionResult]:
        slots = self._by_slot(indices)
        results = unmanaged(indices, slots, "no such worker: use start")

        def restart_slot(item: tuple[int, dict[str, Container]]) -> list[ActionResult]:
            index, containers = item
            done = []
            for role in (ROLE_COMFYUI, ROLE_WORKER):  # ComfyUI first: the worker needs it
                if role not in containers:
                    continue
                try:
                    containers[role].restart(timeout=max(0, int(timeout_s)))
                    done.append(ActionResult(index, role, Outcome.RESTARTED))
                except docker.errors.APIError as exc:
                    detail = error_text(exc)
                    done.append(ActionResult(index, role, Outcome.FAILED, detail))
            return done

        for slot_results in fan_out(restart_slot, sorted(slots.items())):
            results.extend(slot_results)
        return sorted(results, key=lambda r: (r.index, r.role != ROLE_WORKER))

    def remove(self, indices: Sequence[int] | None) -> list[ActionResult]:
        """Remove stopped or running containers of the named slots (used by `stop --rm`)."""
        results = []
        for index, containers in sorted(self._by_slot(indices).items()):
            for role, container in containers.items():
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
                results.append(ActionResult(index, role, Outcome.STOPPED, "removed"))
        return results

    # --- replacing a slot (wgpu update) ----------------------------------------------------

    def set_aside(
        self, index: int, timeout_s: float, roles: Sequence[str] = ROLES
    ) -> list[ActionResult]:
        """Stop the slot's containers of `roles` (worker first) and keep them under NAME-prev,
        so that `start` creates new ones and `restore` can bring these back unchanged."""
        self.discard_aside(index)
        results: list[ActionResult] = []
        containers = self._by_slot([index]).get(index, {})
        for role in ROLES:
            container = containers.get(role) if role in roles else None
            if container is None:
                continue
            result = self._stop_one(index, role, container, timeout_s)
            if not result.ok:
                return [*results, result]
            try:
                container.rename(container_name(role, index) + ASIDE_SUFFIX)
            except docker.errors.APIError as exc:
                return [*results, ActionResult(index, role, Outcome.FAILED, error_text(exc))]
            results.append(result)
        return results

    def _aside(self, index: int) -> dict[str, Container]:
        found: dict[str, Container] = {}
        for role in ROLES:
            with contextlib.suppress(docker.errors.NotFound):
                found[role] = self.client.containers.get(container_name(role, index) + ASIDE_SUFFIX)
        return found

    def restore(self, index: int, timeout_s: float) -> list[ActionResult]:
        """Remove the slot's new containers and start the ones set aside, ComfyUI first."""
        aside = self._aside(index)
        current = self._by_slot([index]).get(index, {})
        for container in (current[role] for role in ROLES if role in aside and role in current):
            with contextlib.suppress(docker.errors.APIError):
                container.stop(timeout=max(0, int(timeout_s)))
                container.remove(force=True)
        results: list[ActionResult] = []
        for role in (ROLE_COMFYUI, ROLE_WORKER):
            container = aside.get(role)
            if container is None:
                continue
            try:
                container.rename(container_name(role, index))
            except docker.errors.APIError as exc:
                results.append(ActionResult(index, role, Outcome.FAILED, error_text(exc)))
                return results
            results.append(self._start_container(container, index, role, Outcome.RESTARTED))
        return results

    def discard_aside(self, index: int) -> None:
        for container in self._aside(index).values():
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    # --- logs ------------------------------------------------------------------------------

    def logs(self, request: LogRequest) -> Iterator[LogLine]:
        targets = [
            (index, containers[request.role])
            for index, containers in sorted(self._by_slot(request.indices).items())
            if request.role in containers
        ]
        if not targets:
            raise BackendError(f"no {request.role} container to show logs of: start it first")
        kwargs: dict[str, Any] = {"timestamps": True, "tail": request.tail or "all"}
        if request.since:
            kwargs["since"] = int(parse_since(request.since))
        if request.follow:
            yield from self._follow(targets, request.role, kwargs)
            return
        lines = [
            line
            for index, container in targets
            for line in _split_lines(index, request.role, container.logs(stream=False, **kwargs))
        ]
        # Interleave by time, as `docker compose logs` does; stable for equal stamps.
        yield from sorted(lines, key=lambda line: line.timestamp) if len(targets) > 1 else lines

    def _follow(
        self, targets: list[tuple[int, Container]], role: str, kwargs: dict[str, Any]
    ) -> Iterator[LogLine]:
        lines: queue.Queue[LogLine | None] = queue.Queue()

        def pump(index: int, container: Container) -> None:
            try:
                pending = b""
                for chunk in container.logs(stream=True, follow=True, **kwargs):
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for raw in complete:
                        lines.put(_log_line(index, role, raw))
                if pending:
                    lines.put(_log_line(index, role, pending))
            finally:
                lines.put(None)

        for index, container in targets:
            threading.Thread(target=pump, args=(index, container), daemon=True).start()
        open_streams = len(targets)
        while open_streams:
            line = lines.get()
            if line is None:
                open_streams -= 1
            else:
                yield line


def _log_line(index: int, role: str, raw: bytes) -> LogLine:
    text = raw.decode(errors="replace").rstrip("\r")
    stamp, _, rest = text.partition(" ")
    return LogLine(index, role, rest, stamp)


def _split_lines(index: int, role: str, blob: bytes) -> list[LogLine]:
    return [_log_line(index, role, raw) for raw in blob.splitlines() if raw]


def _record(container: Container) -> ServiceRecord:
    labels = container.labels
    state = container.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    status = str(state.get("Status") or container.status)
    image = container.attrs.get("Config", {}).get("Image")
    return ServiceRecord(
        index=int(labels.get(LABEL_GPU_INDEX, "-1")),
        role=labels.get(LABEL_ROLE, ROLE_WORKER),
        name=container.name or "",
        state=status,
        machine_id=labels.get(LABEL_MACHINE, ""),
        gpu_uuid=labels.get(LABEL_GPU_UUID) or None,
        simulated=labels.get(LABEL_SIMULATED) == "true",
        started_at=parse_docker_time(state.get("StartedAt", "")) if status == "running" else None,
        restarts=int(container.attrs.get("RestartCount", 0) or 0),
        health=health,
        exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
        image=image,
        ident=container.short_id,
        plan_json=labels.get(LABEL_SLOT_PLAN, ""),
    )


def _context_host() -> str | None:
    """The current `docker context`'s endpoint, when one other than the default is selected."""
    try:
        from docker.context import ContextAPI

        context = ContextAPI.get_current_context()
    except Exception:  # a broken ~/.docker config must not stop the CLI; fall back to defaults
        return None
    host = getattr(context, "Host", None) if context is not None else None
    return str(host) if host and getattr(context, "name", "default") != "default" else None


def _connect_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (
        ("No such file", "no socket there"),
        ("Connection refused", "connection refused"),
        ("Permission denied", "permission denied: join the docker group or use sudo"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return reason
    return error_text(exc)[:120]
