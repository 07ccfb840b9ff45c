"""A job's life through a real hub on real Redis (and Valkey), with protocol workers on sockets."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tomllib

import aiohttp
import pytest
from aiohttp import web

from tests.fixtures.http import read_sse, serving
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.paths import REPO
from tests.polling import eventually
from wgpu_protocol.messages import GpuInfo, GpuStats, Heartbeat, JobAssigned, Progress, Started

pytestmark = pytest.mark.redis


async def test_job_lifecycle_end_to_end(hub_factory: HubFactory, any_redis_url: str) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    worker = ProtocolWorker(hub.url)
    welcome = await worker.connect()
    assert welcome.resumed is False and welcome.lease_s == hub.config.lease_s

    job = await submit(hub.url, priority=5, timeout_s=30, max_attempts=2)
    assert job["status"] == "queued" and job["attempts"] == 0 and job["priority"] == 5

    assigned = await worker.take_job()
    assert assigned.job_id == job["id"] and assigned.workflow == WORKFLOW
    assert assigned.attempt == 1 and assigned.timeout_s == 30 and assigned.token > 0
    running = await get_job(hub.url, job["id"])
    assert running["status"] == "assigned" and running["worker_id"] == "m1-gpu0"
    assert running["attempts"] == 1 and running["started_at"] >= running["created_at"]

    await worker.send(Started(job["id"], assigned.token, "prompt-1"))
    await worker.send(Progress(job["id"], assigned.token, "3", 1, 4))
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    ack = await worker.complete(assigned, {"out_00001_.png": ("image/png", png)})
    assert ack.ok and ack.reason == ""

    done = await get_job(hub.url, job["id"])
    assert done["status"] == "succeeded" and done["finished_at"] >= done["started_at"]
    assert done["workflow"] == WORKFLOW and done["error"] is None
    assert done["outputs"] == [
        {
            "name": "out_00001_.png",
            "size": len(png),
            "content_type": "image/png",
            "url": f"/jobs/{job['id']}/outputs/out_00001_.png",
            "sha256": hashlib.sha256(png).hexdigest(),
            "node_id": None,
            "kind": "output",
            "subfolder": "",
        }
    ]
    assert done["results"] == {}
    assert [h["outcome"] for h in done["history"]] == ["succeeded"]

    async with aiohttp.ClientSession() as http, http.get(hub.url + done["outputs"][0]["url"]) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert await r.read() == png

    # The contract (architecture.md): a fresh stream opens with `status` queued, id 0-1; `done`,
    # with the final job, is the last event; ids sort. How many statuses of one kind come
    # between is the hub's business, so repeats are collapsed. This worker's hello does not say
    # execution_started (an older worker): its `started` makes the job running.
    events = await read_sse(f"{hub.url}/jobs/{job['id']}/events")
    assert events[0] == ("status", {"status": "queued"}, "0-1")
    kinds = [kind for kind, _, _ in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    ids = [tuple(int(part) for part in event_id.split("-")) for _, _, event_id in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    statuses = [d["status"] for k, d, _ in events if k == "status"]  # type: ignore[index]
    assert [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s] == [
        "queued",
        "assigned",
        "running",
        "succeeded",
    ]
    # Progress is live state, not history (redis_api/progress.py): a stream read after the
    # end has none; test_sse_streams_live_until_done follows it live.
    assert "progress" not in kinds
    outputs = [d for k, d, _ in events if k == "output"]
    assert [o["name"] for o in outputs] == ["out_00001_.png"]  # type: ignore[index]
    assert kinds.index("output") < kinds.index("done")
    final = events[-1][1]
    assert final == {k: v for k, v in done.items() if k != "workflow"}  # the final job

    # Resuming after any event gives exactly the events after it.
    after = kinds.index("output") - 1
    resumed = await read_sse(f"{hub.url}/jobs/{job['id']}/events", last_event_id=events[after][2])
    assert resumed == events[after + 1 :]
    await worker.close()


async def test_sse_streams_live_until_done(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    job = await submit(hub.url)
    reader = asyncio.create_task(read_sse(f"{hub.url}/jobs/{job['id']}/events"))
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assigned = await worker.take_job()
    await worker.send(Progress(job["id"], assigned.token, "9", 2, 2))
    await worker.complete(assigned)
    events = await asyncio.wait_for(reader, 5)
    assert [k for k, _, _ in events][-2:] == ["status", "done"]
    assert (
        "progress",
        {"node": "9", "node_class": None, "value": 2.0, "max": 2.0, "percent": 100.0},
    ) in [(k, d) for k, d, _ in events]
    await worker.close()


async def test_priorities_then_fifo(hub_factory: HubFactory, any_redis_url: str) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    submitted = []
    for priority in (0, 5, 0, -3, 5, 10, 0):
        submitted.append(((await submit(hub.url, priority=priority))["id"], priority))
    # Higher priority first; within one priority, in submission order.
    expected = [job_id for job_id, _ in sorted(submitted, key=lambda s: -s[1])]

    status, listed = await call(hub.url, "GET", "/jobs?status=queued&limit=100")
    assert status == 200 and [j["id"] for j in listed["jobs"]] == expected

    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assert await worker.complete_each(len(expected)) == expected
    await worker.close()


async def test_idempotency_key_gives_the_same_job(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    first = await submit(hub.url, idempotency_key="order-42")
    status, again = await call(
        hub.url, "POST", "/jobs", {"workflow": WORKFLOW, "idempotency_key": "order-42"}
    )
    assert status == 200 and again["id"] == first["id"]
    other = await submit(hub.url, idempotency_key="order-43")
    assert other["id"] != first["id"]
    status, listed = await call(hub.url, "GET", "/jobs?status=queued")
    assert sorted(j["id"] for j in listed["jobs"]) == sorted([first["id"], other["id"]])


async def test_constraints_pick_the_worker(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    small = ProtocolWorker(hub.url, "m1-gpu0", "m1")
    await small.connect()
    await small.ready()
    pinned = await submit(hub.url, constraints={"machine_id": "m2", "min_vram_mb": 40_000})
    big = ProtocolWorker(hub.url, "m2-gpu1", "m2", GpuInfo(1, "GPU-big", "H100 80GB", 81_000))
    await big.connect()
    assigned = await big.take_job()
    assert assigned.job_id == pinned["id"]
    # A job any GPU can run still goes to the waiting small worker at once; it is the first
    # job the small worker is given (the pinned one, submitted earlier, never was).
    free = await submit(hub.url)
    assert (await small.expect(JobAssigned)).job_id == free["id"]
    by_name = await submit(hub.url, constraints={"gpu": "h100"})
    await big.complete(assigned)
    assert (await big.take_job()).job_id == by_name["id"]
    await small.close()
    await big.close()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "workflow"),
        ({"workflow": {}}, "workflow"),
        ({"workflow": {"1": {"inputs": {}}}}, "class_type"),
        ({"workflow": WORKFLOW, "priority": "high"}, "priority"),
        ({"workflow": WORKFLOW, "priority": 10_000}, "priority"),
        ({"workflow": WORKFLOW, "timeout_s": -1}, "timeout_s"),
        ({"workflow": WORKFLOW, "max_attempts": 0}, "max_attempts"),
        ({"workflow": WORKFLOW, "constraints": {"colour": "red"}}, "colour"),
        ({"workflow": WORKFLOW, "webhook_url": "ftp://x"}, "webhook_url"),
        ({"workflow": WORKFLOW, "prio": 1}, "prio"),
        ([1, 2], "object"),
    ],
)
async def test_bad_submissions_are_400_naming_the_problem(
    hub_factory: HubFactory, body: object, needle: str
) -> None:
    hub = await hub_factory()
    status, reply = await call(hub.url, "POST", "/jobs", body)
    assert status == 400 and needle in reply["error"]
    status, listed = await call(hub.url, "GET", "/jobs")
    assert listed == {"jobs": []}


async def test_a_workflow_too_large_for_a_job_frame_is_refused_at_submit(
    hub_factory: HubFactory,
) -> None:
    """The body limit is 8 MiB but a job frame is 1 MiB: such a job could never reach a worker."""
    hub = await hub_factory()
    big = {"1": {"class_type": "EmptyImage", "inputs": {"blob": "x" * 1_100_000}}}
    status, reply = await call(hub.url, "POST", "/jobs", {"workflow": big})
    assert status == 413 and "limit" in reply["error"]
    status, listed = await call(hub.url, "GET", "/jobs")
    assert listed == {"jobs": []}


async def test_limits_and_lookups(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_body_bytes=4096)
    status, reply = await call(hub.url, "POST", "/jobs", raw=b"{" + b" " * 5000 + b"}")
    assert status == 413 and "4096" in reply["error"]
    status, reply = await call(hub.url, "POST", "/jobs", raw=b"{not json")
    assert status == 400 and "JSON" in reply["error"]
    status, reply = await call(hub.url, "GET", "/jobs/nope")
    assert status == 404 and "nope" in reply["error"]
    status, reply = await call(hub.url, "DELETE", "/jobs/nope")
    assert status == 404
    status, reply = await call(hub.url, "GET", "/jobs?status=bogus")
    assert status == 400 and "status" in reply["error"]
    job = await submit(hub.url)
    status, reply = await call(hub.url, "GET", f"/jobs/{job['id']}/outputs/x.png")
    assert status == 404


def documented_metrics() -> dict[str, str]:
    """Metric families and types as docs/architecture.md promises them."""
    text = (REPO / "docs" / "architecture.md").read_text()
    start = text.index("- Metrics (`GET /metrics`")
    paragraph = text[start : text.index("\n\n", start)]
    typed = dict(re.findall(r"`(wgpu_\w+)[^`]*` (gauge|histogram)", paragraph))
    return {name: typed.get(name, "counter") for name in re.findall(r"`(wgpu_\w+)", paragraph)}


async def test_workers_health_and_metrics(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    status, health = await call(hub.url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["redis"] == "ok"
    with (REPO / "pyproject.toml").open("rb") as project:
        assert health["version"] == tomllib.load(project)["project"]["version"]
    worker = ProtocolWorker(hub.url, "m1-gpu3", "m1")
    await worker.connect()
    await worker.send(Heartbeat(True, GpuStats(util_percent=50.0, vram_used_mb=1000)))
    job = await submit(hub.url)
    assigned = await worker.take_job()
    await worker.send(Progress(job["id"], assigned.token, "3", 1, 2))

    async def workers() -> list[dict[str, object]]:
        return list((await call(hub.url, "GET", "/workers"))[1]["workers"])

    listed = await eventually(workers, lambda w: bool(w) and w[0]["progress"] is not None)
    entry = listed[0]
    assert entry["id"] == "m1-gpu3" and entry["machine_id"] == "m1" and entry["connected"]
    assert entry["status"] == "busy" and entry["current_job"] == job["id"]
    assert entry["gpu"] == {
        "index": 0,
        "uuid": "GPU-m1-gpu3",
        "name": "Test GPU 24GB",
        "vram_total_mb": 24_000,
    }
    assert entry["gpu_stats"] == {"util_percent": 50.0, "vram_used_mb": 1000}
    assert entry["last_heartbeat"] is not None and entry["version"] == "test"

    await worker.complete(assigned)
    await submit(hub.url)  # stays queued
    async with aiohttp.ClientSession() as http, http.get(hub.url + "/metrics") as r:
        text = await r.text()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    assert types == documented_metrics()  # exactly the documented families, with their types
    assert samples['wgpu_jobs{state="succeeded"}'] == "1"
    assert samples['wgpu_jobs{state="queued"}'] == "1"
    assert samples["wgpu_workers_connected"] == "1"
    assert samples["wgpu_jobs_completed_total"] == "1"
    assert samples["wgpu_dispatch_latency_seconds_count"] == "1"
    assert samples['wgpu_dispatch_latency_seconds_bucket{le="+Inf"}'] == "1"

    await worker.close()
    listed = await eventually(workers, lambda w: w[0]["status"] == "offline")
    assert listed[0]["connected"] is False and listed[0]["current_job"] is None
    assert (listed[0]["jobs_done"], listed[0]["jobs_failed"]) == (1, 0)


async def test_webhook_gets_the_final_job(hub_factory: HubFactory) -> None:
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serving(app) as receiver:
        hub = await hub_factory(webhook_allowed_hosts=("127.0.0.1",))
        worker = ProtocolWorker(hub.url)
        await worker.connect()
        job = await submit(hub.url, webhook_url=f"{receiver}/hook")
        assert (await worker.complete(await worker.take_job())).ok
        called = await asyncio.wait_for(received.get(), 5)
        assert called["id"] == job["id"] and called["status"] == "succeeded"
        plain = await submit(hub.url)  # no webhook: nothing is sent
        assert (await worker.complete(await worker.take_job())).ok
        assert (await get_job(hub.url, plain["id"]))["status"] == "succeeded"
        # Calls go out in the order jobs finish: the next one is for the job after `plain`.
        after = await submit(hub.url, webhook_url=f"{receiver}/hook")
        assert (await worker.complete(await worker.take_job())).ok
        called = await asyncio.wait_for(received.get(), 5)
        assert called["id"] == after["id"] and received.empty()
        await worker.close()
