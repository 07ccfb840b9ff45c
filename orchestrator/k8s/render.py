"""`wgpu k8s render`: the stack as namespace-scoped Kubernetes manifests (pure).

Nothing here describes a container a second time: every container (image, command, environment,
health check, stop grace, GPU) is translated from the compose document that `render_stack`
builds for one GPU slot, the same description `wgpu compose render` and `wgpu up` use. Only
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

from orchestrator.backends.base import ROLE_COMFYUI, ROLE_WORKER
from orchestrator.errors import UsageError
from orchestrator.gpus.slots import Slot
from orchestrator.stack.compose_render import (
    StackOptions,
    comfyui_service_name,
    interpolate_all,
    redis_server_args,
    render_stack,
    worker_service_name,
)

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
RUNNING_METRIC = 'wgpu_jobs{state="running"}'
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


def _seconds(text: str) -> int:
    """A compose duration ("5s", "1m", "300s") in whole seconds (at least 1)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not match:
        raise K8sError(f"compose duration {text!r} has no Kubernetes equivalent")
    value, unit = float(match.group(1)), match.group(2)
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return max(1, round(value * factor))


def _probes(health: Mapping[str, Any], http: bool = False) -> dict[str, Any]:
    """The compose healthcheck as a readiness probe and a startup probe that allows its start
    period. The same command, run in the container (services that listen on loopback only are
    probed from inside); `http`: as an HTTP GET of the URL it fetches, by the kubelet."""
    test = list(health["test"])
    code = " ".join(str(part) for part in test)
    url = _PROBE_URL.search(code) if http else None
    handler: dict[str, Any]
    if url:
        rest = url.group(1).removeprefix("http://")
        hostport, _, path = rest.partition("/")
        port = int(hostport.rpartition(":")[2])
        handler = {"httpGet": {"path": "/" + path, "port": port}}
    else:
        handler = {"exec": {"command": [str(p) for p in test[1:]]}}
    period = _seconds(str(health.get("interval", "10s")))
    timeout = _seconds(str(health.get("timeout", "5s")))
    retries = int(health.get("retries", 3))
    start = _seconds(str(health.get("start_period", "10s")))
    return {
        "readinessProbe": {
            **handler,
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": retries,
        },
        "startupProbe": {
            **handler,
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": max(retries, -(-start // period) + retries),
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


def _container(name: str, service: Mapping[str, Any], http_probe: bool = False) -> dict[str, Any]:
    """A compose service's image and command as a container (ports and env added by callers):
    compose `entrypoint` is Kubernetes `command`, compose `command` is `args`."""
    container: dict[str, Any] = {"name": name, "image": service["image"]}
    if service.get("entrypoint"):
        container["command"] = [str(part) for part in service["entrypoint"]]
    if service.get("command"):
        container["args"] = [str(part) for part in service["command"]]
    if service.get("healthcheck"):
        container.update(_probes(service["healthcheck"], http_probe))
    return container


def _stack(options: K8sOptions) -> dict[str, Any]:
    """The compose services for one GPU slot, defaults filled in: the description we translate."""
    stack = replace(options.stack, gpus=(Slot(0),), simulate=0)
    document = render_stack(stack)
    filled: dict[str, Any] = interpolate_all(document, dict(options.env))
    return dict(filled["services"])


# --- Redis ----------------------------------------------------------------------------------


def _redis(services: Mapping[str, Any], options: K8sOptions) -> list[dict[str, Any]]:
    service = services["redis"]
    port = options.stack.redis_port
    container = _container("redis", service)
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
        _object(
            "Service",
            REDIS,
            "redis",
            options,
            spec={
                "clusterIP": "None",
                "selector": selector,
                "ports": [{"name": "redis", "port": port, "targetPort": port}],
            },
        ),
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


def _hub(services: Mapping[str, Any], options: K8sOptions) -> list[dict[str, Any]]:
    service = services["hub"]
    port = options.stack.hub_port
    env = dict(service["environment"])
    env["REDIS_API_HOST_BIND"] = "0.0.0.0"
    secret_keys = ["REDIS_URL", "WORKER_TOKEN", "API_KEYS"]
    if options.storage_url:
        env["STORAGE_URL"] = options.storage_url
    container = _container("hub", service, http_probe=True)
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


def _gpu_pods(services: Mapping[str, Any], options: K8sOptions) -> list[dict[str, Any]]:
    comfyui_service = services[comfyui_service_name(0)]
    worker_service = services[worker_service_name(0)]
    worker_env = dict(worker_service["environment"])
    worker_env.update(
        {
            "REDIS_API_HOST": f"{HUB}.{options.namespace}.svc",
            "REDIS_API_PORT": str(options.stack.hub_port),
            "NUM_GPUS": "1",
            "GPU_ID": "0",
            # The pod's GPU is ComfyUI's; the worker reports no NVML figures of its own.
            "NVIDIA_VISIBLE_DEVICES": "void",
        }
    )
    worker_env.pop("MACHINE_ID", None)
    worker_env.pop("WORKER_TOKEN", None)
    worker = _container(ROLE_WORKER, worker_service)
    worker["env"] = [
        # The pod's name (wgpu-gpu-0, ...) is stable across restarts: so is the worker's id,
        # and a drain in the hub holds when the pod comes back.
        {"name": "MACHINE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *_env(worker_env, ["WORKER_TOKEN"]),
    ]
    worker["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    stop_grace = _seconds(str(worker_service["stop_grace_period"]))

    comfyui = _container(ROLE_COMFYUI, comfyui_service)
    port = options.stack.port_base
    comfyui.update(
        {
            "env": _env(dict(comfyui_service.get("environment") or {})),
            "ports": [{"name": "comfyui", "containerPort": port}],
            "resources": {"limits": {GPU_RESOURCE: 1}},
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
        _object(
            "Service",
            GPU,
            "gpu",
            options,
            spec={
                "clusterIP": "None",
                "selector": selector,
                "ports": [{"name": "comfyui", "port": port, "targetPort": port}],
            },
        ),
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
    services = _stack(options)
    objects = [_secret(options)]
    if not options.redis_url:
        objects += _redis(services, options)
    objects += _hub(services, options)
    objects += _gpu_pods(services, options)
    return objects


def to_yaml_stream(objects: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """The objects as one YAML stream (`---` between documents)."""
    from orchestrator.stack.compose_render import to_yaml

    documents = [to_yaml(dict(obj)).rstrip("\n") for obj in objects]
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + "---\n" + "\n---\n".join(documents) + "\n"
