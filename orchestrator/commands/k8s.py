"""`wgpu k8s render`: the stack as Kubernetes manifests on stdout (see orchestrator.k8s.render).

Rendered and validated offline only: apply with `kubectl apply -n NAMESPACE -f -`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.commands.options import ComfyuiImageOption, ImageOption
from orchestrator.console import ExitCode, err, fail

k8s_app = typer.Typer(help="Kubernetes manifests for the stack.", no_args_is_help=True)

HEADER = """\
wgpu on Kubernetes: Redis (AOF on a PVC) or an external REDIS_URL, the hub (2 replicas behind a
Service), one pod per GPU (ComfyUI + its worker, nvidia.com/gpu: 1), PodDisruptionBudgets, a KEDA
ScaledObject on the hub's queued jobs. Written by `wgpu k8s render`; validated offline against
the Kubernetes schemas, not run on a live cluster by wgpu's tests.
Needs: the NVIDIA device plugin, KEDA (for the ScaledObject), a ReadWriteMany storage class for
the hub's outputs. Apply: kubectl create namespace NS; kubectl apply -n NS -f FILE"""


def _count(gpus: str | None, count: int | None) -> int:
    from orchestrator.gpus.slots import parse_gpu_list

    if gpus and count is not None:
        fail("use either --gpus or --count, not both", ExitCode.USAGE)
    if count is not None:
        return count
    if not gpus:
        fail("say how many GPU pods: --count N or --gpus 0,1", ExitCode.USAGE)
    return len(parse_gpu_list(gpus))  # a bad list: SlotError, exit 2 (the CLI's handler)


@k8s_app.command("render")
def render(
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="One GPU pod per listed GPU (e.g. 0,1).")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", min=1, help="N GPU pods.")] = None,
    nodes: Annotated[
        str | None, typer.Option("--nodes", help="Run GPU pods only on these nodes (a,b).")
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n")] = "wgpu",
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", help="An external Redis: no Redis StatefulSet rendered."),
    ] = None,
    worker_token: Annotated[
        str | None,
        typer.Option("--worker-token", envvar="WORKER_TOKEN", help="Default: a new random one."),
    ] = None,
    api_keys: Annotated[
        str, typer.Option("--api-keys", envvar="API_KEYS", help="Comma-separated client keys.")
    ] = "",
    image: ImageOption = None,
    comfyui_image: ComfyuiImageOption = None,
    hub_image: Annotated[str | None, typer.Option("--hub-image")] = None,
    redis_image: Annotated[str | None, typer.Option("--redis-image")] = None,
    storage_class: Annotated[str | None, typer.Option("--storage-class")] = None,
    storage_url: Annotated[
        str | None,
        typer.Option(
            "--storage-url",
            help="Outputs in S3 (s3://bucket/prefix; AWS_* keys from the Secret wgpu-s3) "
            "instead of a ReadWriteMany claim.",
        ),
    ] = None,
    min_gpus: Annotated[
        int, typer.Option("--min-gpus", min=0, help="KEDA: GPU pods with an empty queue.")
    ] = 0,
    jobs_per_gpu: Annotated[
        int, typer.Option("--jobs-per-gpu", min=1, help="KEDA: queued jobs per GPU pod.")
    ] = 2,
) -> None:
    """Print namespace-scoped manifests for the hub, Redis and N GPU pods."""
    import secrets
    from dataclasses import replace

    from orchestrator.k8s.render import K8sOptions, render_manifests, to_yaml_stream
    from orchestrator.stack.compose_render import StackOptions

    defaults = StackOptions()
    stack = replace(
        defaults,
        worker_image=image or defaults.worker_image,
        comfyui_image=comfyui_image or defaults.comfyui_image,
        hub_image=hub_image or defaults.hub_image,
        redis_image=redis_image or defaults.redis_image,
    )
    token = worker_token or secrets.token_urlsafe(24)
    if not worker_token:
        err.print("note: generated a worker token (in the Secret wgpu-tokens)", soft_wrap=True)
    options = K8sOptions(
        gpus=_count(gpus, count),
        namespace=namespace,
        nodes=tuple(n.strip() for n in (nodes or "").split(",") if n.strip()),
        redis_url=redis_url,
        worker_token=token,
        api_keys=api_keys,
        storage_class=storage_class,
        storage_url=storage_url,
        min_gpus=min_gpus,
        jobs_per_gpu=jobs_per_gpu,
        stack=stack,
    )
    objects = render_manifests(options)  # K8sError: exit 2 (the CLI's handler)
    typer.echo(to_yaml_stream(objects, HEADER), nl=False)


def register(app: typer.Typer) -> None:
    """Add `k8s render` to `app`."""
    app.add_typer(k8s_app, name="k8s")
