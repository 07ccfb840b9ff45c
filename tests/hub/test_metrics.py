"""`/metrics` has what an operator and an autoscaler read: queue depth per priority, tenant and
requirement pool, workers per state, queue-wait and duration histograms by outcome, webhook
outcomes; and the metrics docs/monitoring.md scales on exist."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, job_status, submit
from tests.hub.worker_client import ProtocolWorker
from tests.paths import REPO
from wgpu_protocol.messages import Cancel, ExecutionStarted, Released

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


def attempt_counts(text: str) -> dict[str, dict[str, float]]:
    """{histogram: {outcome: count}} of the two attempt histograms."""
    got = samples(text)
    found: dict[str, dict[str, float]] = {}
    for name in ("wgpu_job_queue_wait_seconds", "wgpu_job_duration_seconds"):
        prefix = f'{name}_count{{outcome="'
        found[name] = {k[len(prefix) : -2]: v for k, v in got.items() if k.startswith(prefix)}
    return found


async def test_every_ended_attempt_counts_once_whichever_hub_ends_it(
    hub_factory: HubFactory,
) -> None:
    """Cancelled (through another hub), timed out by a reaper, lease lost (retried, then dead),
    released: each attempt counts once, under its outcome, on every hub's /metrics (the
    histograms live in Redis, counted by the script that ended the attempt)."""
    first = await hub_factory(lease_s=30)
    second = await hub_factory(lease_s=30)
    worker = ProtocolWorker(first.url, worker_id="m1-gpu0")
    await worker.connect()

    cancelled = await submit(first.url)
    await worker.take_job()
    status, body = await call(second.url, "DELETE", f"/jobs/{cancelled['id']}")
    assert status == 200 and body["status"] == "cancelled"
    await worker.expect(Cancel)

    timed = await submit(first.url, timeout_s=0.3)
    await worker.take_job()
    await worker.expect(Cancel, within=5.0, reason="timed_out")
    await job_status(first.url, timed["id"], "timed_out")

    released = await submit(first.url)
    taken = await worker.take_job()
    await worker.send(Released(taken.job_id, taken.token, "shutting down"))
    await job_status(first.url, released["id"], "queued")
    ok = await worker.take_job()
    assert ok.job_id == released["id"] and (await worker.complete(ok)).ok

    lost = await submit(first.url, max_attempts=2)
    await worker.take_job()
    await worker.cut()  # the lease runs out after the disconnect grace: retried
    await job_status(second.url, lost["id"], "queued")
    other = ProtocolWorker(second.url, worker_id="m2-gpu0", machine_id="m2")
    await other.connect()
    assert (await other.take_job()).attempt == 2
    await other.cut()  # the last attempt: dead
    await job_status(second.url, lost["id"], "dead")

    expected = {"cancelled": 1, "timed_out": 1, "released": 1, "succeeded": 1}
    expected |= {"retried": 1, "dead": 1}
    history = 0
    for job in (cancelled, timed, released, lost):
        history += len((await get_job(first.url, job["id"]))["history"])
    assert sum(expected.values()) == history
    for hub in (first, second):
        _, text = await call(hub.url, "GET", "/metrics")
        counts = attempt_counts(text)
        assert counts["wgpu_job_queue_wait_seconds"] == expected, hub.url
        assert counts["wgpu_job_duration_seconds"] == expected, hub.url
        got = samples(text)
        # The timed-out attempt ran at least its timeout (Redis' clock, claim to the reaper).
        assert got['wgpu_job_duration_seconds_sum{outcome="timed_out"}'] >= 0.3
        assert got['wgpu_job_duration_seconds_bucket{outcome="timed_out",le="0.1"}'] == 0


async def test_wait_and_duration_split_at_execution_start(hub_factory: HubFactory) -> None:
    """Wait: enqueue to ComfyUI's execution_start (the time `assigned` included); duration:
    from there to the end; together the job's whole life, to the millisecond."""
    hub = await hub_factory(lease_s=30)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    await job_status(hub.url, job["id"], "assigned")
    await worker.send(ExecutionStarted(taken.job_id, taken.token, "prompt-1"))
    await job_status(hub.url, job["id"], "running")
    assert (await worker.complete(taken)).ok
    done = await get_job(hub.url, job["id"])
    _, text = await call(hub.url, "GET", "/metrics")
    got = samples(text)
    wait = got['wgpu_job_queue_wait_seconds_sum{outcome="succeeded"}']
    ran = got['wgpu_job_duration_seconds_sum{outcome="succeeded"}']
    assert wait == pytest.approx(done["running_at"] - done["created_at"], abs=0.0015)
    assert ran == pytest.approx(done["finished_at"] - done["running_at"], abs=0.0015)
    assert done["running_at"] > done["started_at"]  # it was assigned for a while first
    await worker.close()
