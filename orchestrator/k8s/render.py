"""`wgpu k8s render`: the stack as namespace-scoped Kubernetes manifests (pure).

Nothing here describes a container a second time: every container (image, entrypoint and
command, environment, health check, stop timeout, GPU request) comes from the `ContainerSpec`s
of `orchestrator.stack.spec` that `stack_specs` gives for one GPU slot, the same description
`wgpu compose render`, `wgpu up` and `wgpu start` render. Only
what Kubernetes adds is decided here: names in the cluster instead of 127.0.0.1, replicas,
probes' kind, volumes, secrets, the disruption budget, the rollout and autoscaling.

Objects: Secret `wgpu-tokens` (WORKER_TOKEN, API_KEYS, REDIS_URL), Redis as a StatefulSet with
AOF on a PersistentVolumeClaim behind a headless Service (or an external REDIS_URL), the hub as
a Deployment of 2 replicas (readiness on /health) behind a Service, one pod per GPU in a
StatefulSet (ComfyUI as a native sidecar, so it stops only after its worker has drained; the
worker holds no GPU of its own: the pod's one `nvidia.com/gpu` is ComfyUI's), a
PodDisruptionBudget per tier, and a KEDA ScaledObject on the hub's queued-jobs gauge.

The GPU pods roll like `wgpu update`: one pod at a time (StatefulSet RollingUpdate), the next
only when the replaced pod is Ready (ComfyUI answers and the worker is connected: its readiness
probe is `comfy-worker healthcheck`); a terminating worker gets SIGTERM, finishes its job
within WORKER_GRACE_S or hands it back, inside terminationGracePeriodSeconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.backends.base import ROLE_COMFYUI, ROLE_WORKER, worker_stop_timeout_s
from orchestrator.errors import UsageError
from orchestrator.gpus.slots import Slot
from orchestrator.stack.compose_render import (
    StackOptions,
    comfyui_service_name,
    interpolate,
    redis_server_args,
    stack_specs,
    worker_service_name,
)
from orchestrator.stack.spec import ContainerSpec, HealthCheck
from wgpu_protocol import worker_env as names

API_VERSIONS = {
    "Secret": "v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
NAME = "wgpu"
REDIS = "wgpu-redis"
HUB = "wgpu-hub"
GPU = "wgpu-gpu"
SECRET = "wgpu-tokens"
OUTPUTS_CLAIM = "wgpu-hub-outputs"
S3_SECRET = "wgpu-s3"
HUB_REPLICAS = 2
GPU_RESOURCE = "nvidia.com/gpu"
QUEUE_METRIC = 'wgpu_jobs{state="queued"}'  # redis_api.metrics: queued jobs, all hubs
# Jobs a worker holds: assigned (waiting in its ComfyUI's queue) and running alike.
RUNNING_METRIC = "wgpu_jobs_held"
_PROBE_URL = re.compile(r"urlopen\('(http://[^']+)'")


class K8sError(UsageError):
    """The options cannot be rendered; the message says what to change."""


@dataclass(frozen=True)
class K8sOptions:
    """What decides the manifests beyond the stack's own options."""

    gpus: int = 1  # GPU pods (one GPU each)
    namespace: str = NAME
    nodes: tuple[str, ...] = ()  # schedule GPU pods only on these nodes
    redis_url: str | None = None  # external Redis: no StatefulSet rendered
    redis_storage: str = "10Gi"
    redis_maxmemory: str = "1gb"  # Redis' own limit (noeviction): the queue refuses, not OOM
    redis_memory_limit: str = "1536Mi"  # the pod's: maxmemory plus room for AOF rewrites
    outputs_storage: str = "50Gi"
    # Outputs in an S3-compatible store (STORAGE_URL=s3://bucket/prefix) instead of a
    # ReadWriteMany claim; credentials from the Secret wgpu-s3 (AWS_* keys) when it exists.
    storage_url: str | None = None
    storage_class: str | None = None
    worker_token: str = ""
    api_keys: str = ""
    min_gpus: int = 0  # KEDA: GPU pods when the queue is empty
    jobs_per_gpu: int = 2  # KEDA: queued jobs per GPU pod to aim for
    env: Mapping[str, str] = field(default_factory=dict)  # fills the compose ${VAR:-default}s
    stack: StackOptions = field(default_factory=StackOptions)


def _labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": NAME,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "wgpu",
    }


def _meta(name: str, component: str, options: K8sOptions) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, "labels": _labels(component)}


def _object(
    kind: str, name: str, component: str, options: K8sOptions, **body: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSIONS[kind],
        "kind": kind,
        "metadata": _meta(name, component, options),
        **body,
    }


def _headless_service(
    name: str,
    component: str,
    options: K8sOptions,
    selector: dict[str, str],
    port_name: str,
    port: int,
) -> dict[str, Any]:
    """The headless Service a StatefulSet's pods get their stable DNS names from."""
    return _object(
        "Service",
        name,
        component,
        options,
        spec={
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": port_name, "port": port, "targetPort": port}],
        },
    )


def _probes(health: HealthCheck, http: bool = False) -> dict[str, Any]:
    """The spec's health check as a readiness probe and a startup probe that allows its start
    period. The same command, run in the container (services that listen on loopback only are
    probed from inside); `http`: as an HTTP GET of the URL it fetches, by the kubelet."""
    if health.disabled:
        return {}
    kind, *rest = health.test
    url = _PROBE_URL.search(" ".join(rest)) if http else None
    handler: dict[str, Any]
    if url:
        hostport, _, path = url.group(1).removeprefix("http://").partition("/")
        handler = {"httpGet": {"path": "/" + path, "port": int(hostport.rpartition(":")[2])}}
    elif kind == "CMD-SHELL":
        handler = {"exec": {"command": ["sh", "-c", *rest]}}
    else:
        handler = {"exec": {"command": list(rest)}}
    period = max(1, round(health.interval_s))
    timeout = max(1, round(health.timeout_s))
    start = round(health.start_period_s)
    timing = {"periodSeconds": period, "timeoutSeconds": timeout}
    return {
        "readinessProbe": {**handler, **timing, "failureThreshold": health.retries},
        "startupProbe": {
            **handler,
            **timing,
            "failureThreshold": max(health.retries, -(-start // period) + health.retries),
        },
    }


def _env(values: Mapping[str, str], secret_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": key, "value": value} for key, value in values.items() if key not in secret_keys
    ]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        for key in secret_keys
    ]
    return env


def _container(
    name: str, spec: ContainerSpec, options: K8sOptions, http_probe: bool = False
) -> dict[str, Any]:
    """A container from the stack's spec: its image (compose's ${VAR:-default} filled in), its
    entrypoint as `command` and its command as `args` (the Docker and Kubernetes meanings), its
    health check as probes. Env, ports and volumes are added by the callers."""
    container: dict[str, Any] = {"name": name, "image": interpolate(spec.image, dict(options.env))}
    if spec.entrypoint is not None:
        container["command"] = list(spec.entrypoint)
    if spec.command is not None:
        container["args"] = list(spec.command)
    if spec.health is not None:
        container.update(_probes(spec.health, http_probe))
    return container


def _env_values(spec: ContainerSpec, options: K8sOptions) -> dict[str, str]:
    return {key: interpolate(value, dict(options.env)) for key, value in spec.env.items()}


def _stack(options: K8sOptions) -> dict[str, ContainerSpec]:
    """The stack's containers for one GPU slot: the description compose also renders."""
    return stack_specs(replace(options.stack, gpus=(Slot(0),), simulate=0, num_gpus=1))


# --- Redis ----------------------------------------------------------------------------------


def _redis(specs: Mapping[str, ContainerSpec], options: K8sOptions) -> list[dict[str, Any]]:
    spec = specs["redis"]
    port = options.stack.redis_port
    container = _container("redis", spec, options)
    # The compose stack binds Redis to the host's loopback and sizes maxmemory from the host;
    # in the cluster the hub comes over the Service (keep the namespace's network closed to
    # Redis: see the README) and maxmemory stays inside the pod's memory limit.
    args = redis_server_args(str(port), bind="0.0.0.0", maxmemory=options.redis_maxmemory)
    container.pop("args", None)
    container.update(
        {
            "command": args[:1],
            "args": [*args[1:], "--protected-mode", "no"],
            "ports": [{"name": "redis", "containerPort": port}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "resources": {
                "requests": {"cpu": "100m", "memory": "256Mi"},
                "limits": {"memory": options.redis_memory_limit},
            },
        }
    )
    claim: dict[str, Any] = {
        "metadata": {"name": "data", "labels": _labels("redis")},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": options.redis_storage}},
        },
    }
    if options.storage_class:
        claim["spec"]["storageClassName"] = options.storage_class
    selector = _labels("redis")
    return [
        _headless_service(REDIS, "redis", options, selector, "redis", port),
        _object(
            "StatefulSet",
            REDIS,
            "redis",
            options,
            spec={
                "serviceName": REDIS,
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 30},
                },
                "volumeClaimTemplates": [claim],
            },
        ),
    ]


def _redis_url(options: K8sOptions) -> str:
    if options.redis_url:
        return options.redis_url
    return f"redis://{REDIS}-0.{REDIS}.{options.namespace}.svc:{options.stack.redis_port}/0"


# --- hub ------------------------------------------------------------------------------------


def _hub(specs: Mapping[str, ContainerSpec], options: K8sOptions) -> list[dict[str, Any]]:
    spec = specs["hub"]
    port = options.stack.hub_port
    env = _env_values(spec, options)
    env["REDIS_API_HOST_BIND"] = "0.0.0.0"
    secret_keys = ["REDIS_URL", "WORKER_TOKEN", "API_KEYS"]
    if options.storage_url:
        env["STORAGE_URL"] = options.storage_url
    container = _container("hub", spec, options, http_probe=True)
    container.update(
        {
            "env": _env(env, secret_keys),
            "ports": [{"name": "http", "containerPort": port}],
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
            "livenessProbe": {
                "httpGet": {"path": "/health", "port": port},
                "periodSeconds": 10,
                "failureThreshold": 6,  # Redis down is not the hub's fault: readiness says it
            },
        }
    )
    selector = _labels("hub")
    pod: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 30}
    storage: list[dict[str, Any]] = []
    if options.storage_url:
        container["envFrom"] = [{"secretRef": {"name": S3_SECRET, "optional": True}}]
    else:
        claim: dict[str, Any] = {
            "accessModes": ["ReadWriteMany"],  # both hub replicas serve every job's outputs
            "resources": {"requests": {"storage": options.outputs_storage}},
        }
        if options.storage_class:
            claim["storageClassName"] = options.storage_class
        storage.append(_object("PersistentVolumeClaim", OUTPUTS_CLAIM, "hub", options, spec=claim))
        outputs_dir = env.get("OUTPUTS_DIR", "/var/lib/wgpu")
        container["volumeMounts"] = [{"name": "outputs", "mountPath": outputs_dir}]
        pod["volumes"] = [
            {"name": "outputs", "persistentVolumeClaim": {"claimName": OUTPUTS_CLAIM}}
        ]
    return [
        *storage,
        _object(
            "Service",
            HUB,
            "hub",
            options,
            spec={
                "selector": selector,
                "ports": [{"name": "http", "port": port, "targetPort": port}],
            },
        ),
        _object(
            "Deployment",
            HUB,
            "hub",
            options,
            spec={
                "replicas": HUB_REPLICAS,
                "selector": {"matchLabels": selector},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {"metadata": {"labels": selector}, "spec": pod},
            },
        ),
        _object(
            "PodDisruptionBudget",
            HUB,
            "hub",
            options,
            spec={"minAvailable": 1, "selector": {"matchLabels": selector}},
        ),
    ]


# --- GPU pods -------------------------------------------------------------------------------


def _gpu_pods(specs: Mapping[str, ContainerSpec], options: K8sOptions) -> list[dict[str, Any]]:
    comfyui_spec = specs[comfyui_service_name(0)]
    worker_spec = specs[worker_service_name(0)]
    worker_env = _env_values(worker_spec, options)
    worker_env.update(
        {
            names.HUB_HOST: f"{HUB}.{options.namespace}.svc",
            names.HUB_PORT_VAR: str(options.stack.hub_port),
            names.NUM_GPUS: "1",
            names.GPU_ID: "0",
            # The pod's GPU is ComfyUI's; the worker reports no NVML figures of its own.
            "NVIDIA_VISIBLE_DEVICES": "void",
        }
    )
    worker_env.pop(names.MACHINE_ID, None)
    worker_env.pop(names.WORKER_TOKEN, None)
    worker = _container(ROLE_WORKER, worker_spec, options)
    worker["env"] = [
        # The pod's name (wgpu-gpu-0, ...) is stable across restarts: so is the worker's id,
        # and a drain in the hub holds when the pod comes back.
        {"name": names.MACHINE_ID, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *_env(worker_env, [names.WORKER_TOKEN]),
    ]
    worker["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    # The worker's own stop timeout: past its SIGTERM grace, so a job finishing in it lives.
    stop_grace = worker_spec.stop_timeout_s or worker_stop_timeout_s(worker_spec.env)

    comfyui = _container(ROLE_COMFYUI, comfyui_spec, options)
    port = options.stack.port_base
    comfyui.update(
        {
            "env": _env(_env_values(comfyui_spec, options)),
            "ports": [{"name": "comfyui", "containerPort": port}],
            # The spec's one GPU request: the device plugin picks the GPU in the cluster.
            "resources": {"limits": {GPU_RESOURCE: 1 if comfyui_spec.gpu is not None else 0}},
            # A native sidecar: started (and answering) before the worker, stopped only after
            # the worker has exited, so a draining worker keeps its ComfyUI to the end.
            "restartPolicy": "Always",
        }
    )
    pod_spec: dict[str, Any] = {
        "initContainers": [comfyui],
        "containers": [worker],
        "terminationGracePeriodSeconds": stop_grace,
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    if options.nodes:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": list(options.nodes),
                                }
                            ]
                        }
                    ]
                }
            }
        }
    selector = _labels("gpu")
    return [
        _object(
            "StatefulSet",
            GPU,
            "gpu",
            options,
            spec={
                "serviceName": GPU,
                "replicas": options.gpus,
                "podManagementPolicy": "Parallel",  # start together; updates still go one by one
                "selector": {"matchLabels": selector},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "minReadySeconds": 5,
                "template": {"metadata": {"labels": selector}, "spec": pod_spec},
            },
        ),
        _headless_service(GPU, "gpu", options, selector, "comfyui", port),
        _object(
            "PodDisruptionBudget",
            GPU,
            "gpu",
            options,
            spec={"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        ),
        _object(
            "ScaledObject",
            GPU,
            "gpu",
            options,
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": GPU},
                "minReplicaCount": options.min_gpus,
                "maxReplicaCount": options.gpus,
                "cooldownPeriod": 300,
                # The larger of the two wins: queued jobs per GPU, and never fewer pods than
                # jobs running (so a scale-down does not cut a busy GPU's work short).
                "triggers": [
                    _metric_trigger(options, QUEUE_METRIC, options.jobs_per_gpu),
                    _metric_trigger(options, RUNNING_METRIC, 1),
                ],
            },
        ),
    ]


def _metric_trigger(options: K8sOptions, metric: str, target: int) -> dict[str, Any]:
    url = f"http://{HUB}.{options.namespace}.svc:{options.stack.hub_port}/metrics"
    return {
        "type": "metrics-api",
        "metadata": {
            "url": url,
            "format": "prometheus",
            "valueLocation": metric,
            "targetValue": str(target),
        },
    }


def _secret(options: K8sOptions) -> dict[str, Any]:
    return _object(
        "Secret",
        SECRET,
        "hub",
        options,
        type="Opaque",
        stringData={
            "WORKER_TOKEN": options.worker_token,
            "API_KEYS": options.api_keys,
            "REDIS_URL": _redis_url(options),
        },
    )


def render_manifests(options: K8sOptions) -> list[dict[str, Any]]:
    """Every object, in an order `kubectl apply -f` can take (secret and storage first)."""
    if options.gpus < 1:
        raise K8sError("render at least one GPU pod: pass --count N or --gpus LIST")
    if not 0 <= options.min_gpus <= options.gpus:
        raise K8sError(f"--min-gpus must be between 0 and {options.gpus}")
    if not options.worker_token:
        raise K8sError("the manifests need a worker token: pass --worker-token")
    specs = _stack(options)
    objects = [_secret(options)]
    if not options.redis_url:
        objects += _redis(specs, options)
    objects += _hub(specs, options)
    objects += _gpu_pods(specs, options)
    return objects


def to_yaml_stream(objects: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """The objects as one YAML stream (`---` between documents)."""
    from orchestrator.stack.compose_render import to_yaml

    documents = [to_yaml(dict(obj)).rstrip("\n") for obj in objects]
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + "---\n" + "\n---\n".join(documents) + "\n"
