"""`wgpu drain|resume GPU_ID|all` and `wgpu update [GPU_ID|all]`: change a running fleet
without losing a job (see orchestrator.rollout.update)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from orchestrator.backends.base import DEFAULT_HUB_URL, DEFAULT_STOP_TIMEOUT_S
from orchestrator.commands.common import backend_session, hub_errors, target_indices
from orchestrator.commands.options import (
    ApiKeyOption,
    BackendKind,
    BackendOption,
    BaseDirOption,
    ComfyuiImageOption,
    DockerHostOption,
    GpusOption,
    HubUrlOption,
    ImageOption,
    JsonOption,
    MachineIdOption,
    TargetArgument,
    WorkerSrcOption,
    default_machine_id,
)
from orchestrator.console import ExitCode, err, fail, out
from wgpu_protocol import worker_env

# The hub client (aiohttp), Rich's live view and the update engine are imported by the
# commands that use them, so that `wgpu --help` stays fast.
if TYPE_CHECKING:
    from rich.table import Table

    from orchestrator.hub_client.client import HubClient
    from orchestrator.rollout.update import RollingUpdate, SlotUpdate
    from wgpu_protocol.rest import DrainAnswerJson, ResumeAnswerJson

HubOption = typer.Option(
    None, "--hub-url", envvar="WGPU_HUB_URL", help="The hub (default: the one the workers use)."
)
DrainTimeoutOption = typer.Option(
    None,
    "--timeout",
    min=0.1,
    help="Seconds the running job may still take; then it goes back to the queue uncounted.",
)

_STEP_STYLE = {
    "updated": "green",
    "unchanged": "green",
    "rolled back": "yellow",
    "failed": "red",
    "skipped": "dim",
    "waiting": "dim",
}


def _hub_call(hub: HubClient, what: str, call: Any) -> Any:
    with hub_errors(hub.base_url, what):
        return call()


def _worker_ids(
    hub: HubClient, target: str, machine_id: str, gpus_option: str | None = None
) -> list[str]:
    indices = target_indices(target, gpus_option)
    if indices is not None:
        from wgpu_protocol.ports import worker_id

        return [worker_id(machine_id, i) for i in indices]
    workers = _hub_call(hub, "listing workers", hub.get_workers)
    ids = [str(w["id"]) for w in workers if w.get("machine_id") == machine_id]
    if not ids:
        fail(
            f"the hub knows no worker of machine {machine_id}: pass --machine-id",
            ExitCode.NOT_FOUND,
        )
    return sorted(ids)


def _drain_state(answer: DrainAnswerJson | ResumeAnswerJson) -> str:
    drain = answer["drain"]
    if not drain:
        return "in service"
    jobs = [answer.get("current_job"), answer.get("relaying_job")]
    held = ", ".join(str(job) for job in jobs if job)
    return f"{drain['state']}" + (f" (job {held})" if held else "")


def drain(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    timeout: float | None = DrainTimeoutOption,
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    machine_id: MachineIdOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a GPU's worker no new jobs: its current job finishes (or past --timeout goes back
    to the queue without counting an attempt). The hub keeps it drained across reconnects."""
    from orchestrator.hub_client.client import HubClient

    hub = HubClient(hub_url, api_key=api_key)
    machine = machine_id or default_machine_id()
    answers = [
        _hub_call(hub, f"draining {wid}", lambda wid=wid: hub.drain(wid, timeout))
        for wid in _worker_ids(hub, target, machine, gpus_option)
    ]
    if as_json:
        typer.echo(json.dumps({"workers": answers}))
        return
    for answer in answers:
        out.print(f"{answer['worker_id']}: {_drain_state(answer)}")


def resume(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    hub_url: HubUrlOption = DEFAULT_HUB_URL,
    api_key: ApiKeyOption = None,
    machine_id: MachineIdOption = None,
    as_json: JsonOption = False,
) -> None:
    """Put GPUs' workers back in service: ends a drain and a quarantine."""
    from orchestrator.hub_client.client import HubClient

    hub = HubClient(hub_url, api_key=api_key)
    machine = machine_id or default_machine_id()
    answers = [
        _hub_call(hub, f"resuming {wid}", lambda wid=wid: hub.resume(wid))
        for wid in _worker_ids(hub, target, machine, gpus_option)
    ]
    if as_json:
        typer.echo(json.dumps({"workers": answers}))
        return
    for answer in answers:
        ended = [
            word
            for word, key in (("drain", "was_drained"), ("quarantine", "was_quarantined"))
            if answer.get(key)
        ]
        what = f"resumed (ended its {' and '.join(ended)})" if ended else "was in service"
        out.print(f"{answer['worker_id']}: {what}")


def progress_table(updates: list[SlotUpdate]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="wgpu update", box=None, padding=(0, 1))
    for header in ("GPU", "Step", "From", "To", "Detail"):
        table.add_column(header)
    for update in updates:
        table.add_row(
            f"gpu{update.index}",
            Text(str(update.step), style=_STEP_STYLE.get(str(update.step), "cyan")),
            update.old_version or "",
            update.new_version or "",
            update.detail,
        )
    return table


def _hub_url_of(plan_env: dict[str, str]) -> str:
    if plan_env.get(worker_env.HUB_URL):
        return plan_env[worker_env.HUB_URL]
    host = plan_env.get(worker_env.HUB_HOST, worker_env.DEFAULT_HUB_HOST)
    host = worker_env.DEFAULT_HUB_HOST if host in ("0.0.0.0", "") else host
    port = plan_env.get(worker_env.HUB_PORT_VAR, str(worker_env.DEFAULT_HUB_PORT))
    return f"http://{host}:{port}"


def update(
    target: TargetArgument = "all",
    gpus_option: GpusOption = None,
    image: ImageOption = None,
    comfyui_image: ComfyuiImageOption = None,
    worker_src: WorkerSrcOption = None,
    max_unavailable: int = typer.Option(
        1, "--max-unavailable", min=1, help="GPUs replaced at the same time."
    ),
    ready_timeout: float = typer.Option(
        120.0, "--ready-timeout", min=1, help="Seconds a new worker has to become ready."
    ),
    drain_timeout: float = typer.Option(
        600.0, "--drain-timeout", min=0.1, help="Seconds a running job may still take."
    ),
    stop_timeout: float = typer.Option(
        DEFAULT_STOP_TIMEOUT_S, "--stop-timeout", min=0, help="SIGTERM to kill."
    ),
    hub_url: str | None = HubOption,
    api_key: ApiKeyOption = None,
    machine_id: MachineIdOption = None,
    docker_host: DockerHostOption = None,
    backend: BackendOption = BackendKind.DOCKER,
    base_dir: BaseDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replace GPUs' containers with a new image, ComfyUI image or worker tree, one GPU (or
    --max-unavailable) at a time: drain, replace, wait until ready, resume. A GPU whose new
    worker is not ready in time goes back to its old configuration, and the update stops
    (exit 5) with the other GPUs untouched."""
    from orchestrator.commands.workers import resolve_src
    from orchestrator.hub_client.client import HubClient
    from orchestrator.rollout.update import (
        FINAL_OK,
        Change,
        Replaceable,
        RollingUpdate,
        UpdateSettings,
        prepare_update,
    )

    if not (image or comfyui_image or worker_src):
        fail("nothing to update: pass --image, --comfyui-image or --worker-src", ExitCode.USAGE)
    change = Change(image=image, comfyui_image=comfyui_image, worker_src=resolve_src(worker_src))
    indices = target_indices(target, gpus_option)
    settings = UpdateSettings(
        drain_timeout_s=drain_timeout,
        ready_timeout_s=ready_timeout,
        max_unavailable=max_unavailable,
        stop_timeout_s=stop_timeout,
        containers=backend == BackendKind.DOCKER,
    )
    with backend_session(backend, docker_host, base_dir, machine_id) as session:
        replaceable: Replaceable = session  # type: ignore[assignment]  # both backends are
        # UpdateError (nothing to update): exit 4 through the CLI's handler.
        pairs = prepare_update(replaceable, change, indices, settings.containers)
        hub = HubClient(hub_url or _hub_url_of(pairs[0][0].worker.env), api_key=api_key)
        engine = RollingUpdate(replaceable, hub, settings)
        updates = _run(engine, pairs, live=not as_json)
    if as_json:
        typer.echo(json.dumps({"results": [u.to_json() for u in updates]}))
    failed = [u for u in updates if u.step not in FINAL_OK]
    if failed:
        if not as_json:
            first = failed[0]
            err.print(
                f"[bold red]error:[/] gpu{first.index} {first.step}: {first.detail}; "
                "the update stopped there",
                soft_wrap=True,
            )
        raise typer.Exit(int(ExitCode.PARTIAL))


def _run(engine: RollingUpdate, pairs: Any, live: bool) -> list[SlotUpdate]:
    from rich.live import Live

    if not live:
        return engine.run(pairs)
    shown: dict[int, SlotUpdate] = {}
    with Live(console=out.console, auto_refresh=True, refresh_per_second=8) as view:

        def on_change(update: SlotUpdate) -> None:
            shown[update.index] = update
            view.update(progress_table([shown[i] for i in sorted(shown)]))

        engine.on_change = on_change
        updates = engine.run(pairs)
        view.update(progress_table(updates))
    return updates


def register(app: typer.Typer) -> None:
    """Add drain, resume and update to `app`."""
    for command in (drain, resume, update):
        app.command(command.__name__)(command)
