"""`/metrics` has what an operator and an autoscaler read: queue depth per priority, tenant and
requirement pool, workers per state, queue-wait and duration histograms by outcome, webhook
outcomes; and the metrics docs/monitoring.md scales on exist."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, submit
from tests.hub.worker_client import ProtocolWorker
from tests.paths import REPO

pytestmark = pytest.mark.redis


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def test_queue_depth_workers_and_histograms(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    ok = await submit(hub.url)
    assert (await worker.complete(await worker.take_job())).ok
    bad = await submit(hub.url, max_attempts=2)
    assert (await worker.fail(await worker.take_job())).ok  # retried
    assert (await worker.fail(await worker.take_job(), retryable=False)).ok  # failed
    for priority in (5, 5, 0):
        await submit(hub.url, priority=priority)
    await submit(hub.url, requires={"checkpoints": ["sd15.safetensors"]})
    other = ProtocolWorker(hub.url, worker_id="m2-gpu0", machine_id="m2")
    await other.connect()
    status, text = await call(hub.url, "GET", "/metrics")
    assert status == 200
    got = samples(text)
    assert got['wgpu_jobs{state="queued"}'] == 4
    assert got['wgpu_queue_depth{priority="5"}'] == 2 and got['wgpu_queue_depth{priority="0"}'] == 2
    assert got['wgpu_queue_depth_by_tenant{tenant=""}'] == 4
    pools = {k: v for k, v in got.items() if k.startswith("wgpu_queue_depth_by_pool")}
    assert sorted(pools.values()) == [1, 3]  # the job that needs a model has a pool of its own
    assert got["wgpu_queue_depth_scanned"] == 4
    assert got['wgpu_workers{state="idle"}'] >= 1
    assert sum(v for k, v in got.items() if k.startswith("wgpu_workers{")) == 2
    for outcome, n in (("succeeded", 1), ("retried", 1), ("failed", 1)):
        for name in ("wgpu_job_queue_wait_seconds", "wgpu_job_duration_seconds"):
            assert got[f'{name}_count{{outcome="{outcome}"}}'] == n, (name, outcome)
            assert got[f'{name}_bucket{{outcome="{outcome}",le="+Inf"}}'] == n
    assert got['wgpu_webhook_deliveries_total{outcome="delivered"}'] == 0
    assert ok["id"] != bad["id"]
    await worker.close()
    await other.close()


async def test_the_monitoring_docs_scale_on_metrics_that_exist(hub_factory: HubFactory) -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block)]
    scrape = next(d for d in docs if "scrape_configs" in d)
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]
    scaled = next(d for d in docs if d.get("kind") == "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    hub = await hub_factory()
    await submit(hub.url)
    _, metrics = await call(hub.url, "GET", "/metrics")
    names = set(re.findall(r"^(wgpu_\w+)", metrics, re.M))
    used = set(re.findall(r"\b(wgpu_\w+)", trigger["metadata"]["query"]))
    assert used and used <= names, used - names
