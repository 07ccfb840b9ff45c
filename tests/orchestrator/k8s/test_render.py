"""`wgpu k8s render`: every manifest validated offline (kubernetes-validate, strict) against the
Kubernetes schemas of 1.29 to 1.33, and what each object must contain. Not applied to a live
cluster: none can run here."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.backends.base import worker_stop_timeout_s
from orchestrator.console import ExitCode
from orchestrator.gpus.slots import Slot
from orchestrator.k8s.render import (
    GPU_RESOURCE,
    QUEUE_METRIC,
    RUNNING_METRIC,
    K8sError,
    K8sOptions,
    render_manifests,
    to_yaml_stream,
)
from orchestrator.stack.compose_render import StackOptions, interpolate, render_stack, stack_specs
from redis_api.metrics import HubMetrics
from tests.orchestrator.backends.helpers import wgpu

VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
CUSTOM_KINDS = {"ScaledObject"}  # KEDA's CRD: no schema in the Kubernetes OpenAPI
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
OPTIONS = K8sOptions(gpus=3, worker_token="token-1", api_keys="key-1", nodes=("gpu-a", "gpu-b"))


def by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "options",
    [
        OPTIONS,
        replace(OPTIONS, redis_url="redis://redis.example:6379/0", nodes=(), gpus=1),
        replace(OPTIONS, storage_url="s3://bucket/outputs"),
    ],
    ids=["bundled-redis", "external-redis", "s3-outputs"],
)
def test_every_manifest_validates_strictly(version: str, options: K8sOptions) -> None:
    objects = list(yaml.safe_load_all(to_yaml_stream(render_manifests(options))))
    assert objects == render_manifests(options)  # the YAML says what the objects say
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == len(objects) - 1


def test_strict_validation_refuses_an_unknown_field() -> None:
    gpu = by_kind(render_manifests(OPTIONS), "StatefulSet", "wgpu-gpu")
    gpu["spec"]["template"]["spec"]["containers"][0]["drainOnStop"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="drainOnStop"):
        kubernetes_validate.validate(gpu, VERSIONS[-1], strict=True)


def test_everything_is_namespace_scoped_and_selectors_match_their_pods() -> None:
    objects = render_manifests(OPTIONS)
    assert {o["kind"] for o in objects}.isdisjoint(CLUSTER_SCOPED)
    assert all(o["metadata"]["namespace"] == "wgpu" for o in objects)
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            wanted = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert wanted.items() <= labels.items()


def test_hub_is_two_replicas_ready_on_health_behind_a_service() -> None:
    objects = render_manifests(OPTIONS)
    hub = by_kind(objects, "Deployment", "wgpu-hub")
    assert hub["spec"]["replicas"] == 2
    [container] = hub["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8001}
    env = env_of(container)
    for key in ("WORKER_TOKEN", "API_KEYS", "REDIS_URL"):
        assert env[key] == {"secretKeyRef": {"name": "wgpu-tokens", "key": key}}
    assert env["REDIS_API_HOST_BIND"] == "0.0.0.0"
    service = by_kind(objects, "Service", "wgpu-hub")
    assert service["spec"]["ports"][0]["port"] == 8001
    assert service["spec"]["selector"] == hub["spec"]["selector"]["matchLabels"]
    assert by_kind(objects, "PodDisruptionBudget", "wgpu-hub")["spec"]["minAvailable"] == 1
    secret = by_kind(objects, "Secret", "wgpu-tokens")
    assert secret["stringData"]["WORKER_TOKEN"] == "token-1"
    assert secret["stringData"]["API_KEYS"] == "key-1"


def test_redis_keeps_an_append_only_file_on_a_claim_or_is_external() -> None:
    objects = render_manifests(OPTIONS)
    redis = by_kind(objects, "StatefulSet", "wgpu-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert container["command"] == ["redis-server"]
    assert args[args.index("--maxmemory") + 1] == OPTIONS.redis_maxmemory
    assert args[args.index("--bind") + 1] == "0.0.0.0"  # the hub comes over the Service
    assert container["resources"]["limits"]["memory"] == OPTIONS.redis_memory_limit
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    url = by_kind(objects, "Secret", "wgpu-tokens")["stringData"]["REDIS_URL"]
    assert url == "redis://wgpu-redis-0.wgpu-redis.wgpu.svc:6379/0"

    external = render_manifests(replace(OPTIONS, redis_url="rediss://r.example:6380/1"))
    assert not [o for o in external if o["metadata"]["name"] == "wgpu-redis"]
    secret = by_kind(external, "Secret", "wgpu-tokens")
    assert secret["stringData"]["REDIS_URL"] == "rediss://r.example:6380/1"


def test_one_pod_per_gpu_with_comfyui_and_its_worker_and_one_gpu() -> None:
    objects = render_manifests(OPTIONS)
    gpu = by_kind(objects, "StatefulSet", "wgpu-gpu")
    assert gpu["spec"]["replicas"] == 3
    pod = gpu["spec"]["template"]["spec"]
    [comfyui] = pod["initContainers"]
    [worker] = pod["containers"]
    limits = [c.get("resources", {}).get("limits", {}) for c in (comfyui, worker)]
    assert sum(limit.get(GPU_RESOURCE, 0) for limit in limits) == 1  # the pod's one GPU
    assert comfyui["resources"]["limits"] == {GPU_RESOURCE: 1}
    # ComfyUI is a native sidecar: up before the worker, stopped after it has drained.
    assert comfyui["restartPolicy"] == "Always"
    assert comfyui["startupProbe"]["exec"]["command"][0] == "python3"
    assert worker["readinessProbe"]["exec"]["command"] == ["comfy-worker", "healthcheck"]
    env = env_of(worker)
    assert env["MACHINE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["WORKER_TOKEN"] == {"secretKeyRef": {"name": "wgpu-tokens", "key": "WORKER_TOKEN"}}
    assert env["REDIS_API_HOST"] == "wgpu-hub.wgpu.svc" and env["COMFYUI_HOST"] == "127.0.0.1"
    assert env["EXECUTION_SERVICE_PORT"] == "8188" and env["GPU_ID"] == "0"
    # The worker's SIGTERM grace fits in the pod's: a job finishing in it is not killed.
    assert pod["terminationGracePeriodSeconds"] == worker_stop_timeout_s({}) > 30
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["gpu-a", "gpu-b"]


def test_gpu_pods_roll_one_at_a_time_and_disrupt_one_at_a_time() -> None:
    objects = render_manifests(OPTIONS)
    gpu = by_kind(objects, "StatefulSet", "wgpu-gpu")
    assert gpu["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"partition": 0},
    }
    pdb = by_kind(objects, "PodDisruptionBudget", "wgpu-gpu")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == gpu["spec"]["selector"]["matchLabels"]


def test_keda_scales_the_gpu_pods_on_metrics_the_hub_exports() -> None:
    scaled = by_kind(render_manifests(OPTIONS), "ScaledObject", "wgpu-gpu")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "wgpu-gpu",
    }
    assert scaled["spec"]["maxReplicaCount"] == 3 and scaled["spec"]["minReplicaCount"] == 0
    exported = HubMetrics().render({"queued": 7, "assigned": 1, "running": 2}, 1)
    assert "\nwgpu_jobs_held 3\n" in exported
    for trigger, metric in zip(
        scaled["spec"]["triggers"], (QUEUE_METRIC, RUNNING_METRIC), strict=True
    ):
        assert trigger["type"] == "metrics-api" and trigger["metadata"]["format"] == "prometheus"
        assert trigger["metadata"]["valueLocation"] == metric
        assert trigger["metadata"]["url"] == "http://wgpu-hub.wgpu.svc:8001/metrics"
        assert f"{metric} " in exported  # the hub really exports it


def test_containers_come_from_the_compose_description() -> None:
    stack = StackOptions(worker_image="reg.example/worker:7", comfyui_image="reg.example/comfy:3")
    objects = render_manifests(replace(OPTIONS, stack=stack))
    pod = by_kind(objects, "StatefulSet", "wgpu-gpu")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "reg.example/worker:7"
    assert pod["initContainers"][0]["image"] == "reg.example/comfy:3"
    assert env_of(pod["initContainers"][0])["CLI_ARGS"] == "--listen 127.0.0.1 --port 8188"


def test_options_that_cannot_render_say_why() -> None:
    with pytest.raises(K8sError, match="worker token"):
        render_manifests(replace(OPTIONS, worker_token=""))
    with pytest.raises(K8sError, match="min-gpus"):
        render_manifests(replace(OPTIONS, min_gpus=4))


def test_the_command_prints_the_stream() -> None:
    result = wgpu("k8s", "render", "--count", "2", "--worker-token", "t", "--nodes", "n1")
    assert result.exit_code == 0, result.output
    objects = list(yaml.safe_load_all(result.stdout))
    assert by_kind(objects, "StatefulSet", "wgpu-gpu")["spec"]["replicas"] == 2
    assert "not run on a live cluster" in result.stdout
    listed = wgpu("k8s", "render", "--gpus", "0,1,3", "--worker-token", "t")
    assert (
        by_kind(list(yaml.safe_load_all(listed.stdout)), "StatefulSet", "wgpu-gpu")["spec"][
            "replicas"
        ]
        == 3
    )
    both = wgpu("k8s", "render", "--gpus", "0", "--count", "2")
    assert both.exit_code == ExitCode.USAGE and "either --gpus or --count" in both.stderr


def test_outputs_on_a_shared_claim_or_in_s3() -> None:
    objects = render_manifests(OPTIONS)
    claim = by_kind(objects, "PersistentVolumeClaim", "wgpu-hub-outputs")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # both hub replicas read it
    pod = by_kind(objects, "Deployment", "wgpu-hub")["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "wgpu-hub-outputs"

    s3 = render_manifests(replace(OPTIONS, storage_url="s3://bucket/outputs"))
    assert not [o for o in s3 if o["kind"] == "PersistentVolumeClaim"]
    [hub] = by_kind(s3, "Deployment", "wgpu-hub")["spec"]["template"]["spec"]["containers"]
    assert env_of(hub)["STORAGE_URL"] == "s3://bucket/outputs"
    assert hub["envFrom"] == [{"secretRef": {"name": "wgpu-s3", "optional": True}}]
    assert "volumeMounts" not in hub


def test_the_pod_is_the_spec_compose_renders_too() -> None:
    stack = replace(StackOptions(), gpus=(Slot(0),), num_gpus=1)
    specs, compose = stack_specs(stack), render_stack(stack)["services"]
    pod = by_kind(render_manifests(OPTIONS), "StatefulSet", "wgpu-gpu")["spec"]["template"]
    [worker], [comfyui] = pod["spec"]["containers"], pod["spec"]["initContainers"]
    for container, name in ((worker, "comfy-worker-gpu0"), (comfyui, "comfyui-gpu0")):
        spec, service = specs[name], compose[name]
        assert (
            container["image"] == interpolate(spec.image, {}) == interpolate(service["image"], {})
        )
        assert spec.health is not None
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe == list(spec.health.test[1:]) == service["healthcheck"]["test"][1:]
    assert pod["spec"]["terminationGracePeriodSeconds"] == specs["comfy-worker-gpu0"].stop_timeout_s
