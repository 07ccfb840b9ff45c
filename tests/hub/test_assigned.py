"""`assigned` -> `running` in the hub: a claimed job is `assigned` (it waits in its worker's
ComfyUI queue) until the worker reports ComfyUI's `execution_start` (`execution_started`), in one
fenced script; JSON, SSE, lists, counts and /metrics show it; whatever a held job can meet
(cancel, timeout, lost worker, drain, the per-owner cap) treats `assigned` like `running`.
Real hub, real Redis, protocol workers on real sockets."""

from __future__ import annotations

import pytest

from tests.fixtures.http import read_sse
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import (
    Ack,
    Cancel,
    ExecutionStarted,
    JobAssigned,
    Progress,
    RunningJob,
    Started,
)

pytestmark = pytest.mark.redis


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in /metrics")


async def test_assigned_until_execution_started_then_running_in_json_and_sse(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url, execution_started=True)
    assert (await worker.connect()).execution_started is True
    job = await submit(hub.url)
    taken = await worker.take_job()
    await worker.send(Started(job["id"], taken.token, "prompt-1"))  # queued in ComfyUI
    await worker.send(Progress(job["id"], taken.token, None, 0, 1))  # carries the held prompt
    waiting = await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: j["progress"] is not None
    )
    assert waiting["status"] == "assigned" and waiting["worker_id"] == worker.worker_id
    assert waiting["started_at"] is not None and waiting["running_at"] is None
    _, listed = await call(hub.url, "GET", "/jobs?status=assigned")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    _, listed = await call(hub.url, "GET", "/jobs?status=running")
    assert listed["jobs"] == []
    _, text = await call(hub.url, "GET", "/metrics")
    assert metric(text, 'wgpu_jobs{state="assigned"}') == 1
    assert metric(text, 'wgpu_jobs{state="running"}') == 0
    assert metric(text, "wgpu_jobs_held") == 1  # what an autoscaler keeps pods for
    _, workers = await call(hub.url, "GET", "/workers")
    assert workers["workers"][0]["current_job"] == job["id"]

    await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-1"))
    running = await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: j["status"] == "running"
    )
    assert running["running_at"] >= running["started_at"]
    await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-1"))  # once is enough
    _, listed = await call(hub.url, "GET", "/jobs?status=running")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    _, text = await call(hub.url, "GET", "/metrics")
    assert metric(text, 'wgpu_jobs{state="assigned"}') == 0
    assert metric(text, 'wgpu_jobs{state="running"}') == 1
    assert (await worker.complete(taken)).ok

    events = await read_sse(f"{hub.url}/jobs/{job['id']}/events")
    statuses: list[dict[str, str]] = [d for k, d, _ in events if k == "status"]  # type: ignore[misc]
    # In this order; `started` adds the prompt id to an `assigned` status (repeats collapsed).
    order = [s["status"] for s in statuses]
    assert [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s] == [
        "queued",
        "assigned",
        "running",
        "succeeded",
    ]
    assert {s["prompt_id"] for s in statuses if s["status"] == "running"} == {"prompt-1"}
    assert [s.get("prompt_id") for s in statuses if s["status"] == "assigned"] == [None, "prompt-1"]
    done = await get_job(hub.url, job["id"])
    assert done["status"] == "succeeded" and done["running_at"] == running["running_at"]
    await worker.close()


async def test_execution_started_is_fenced(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    holder = ProtocolWorker(hub.url, "m1-gpu0", execution_started=True)
    other = ProtocolWorker(hub.url, "m1-gpu1", execution_started=True)
    await holder.connect()
    await other.connect()
    job = await submit(hub.url)
    taken = await holder.take_job()
    await other.send(ExecutionStarted(job["id"], taken.token, "not-mine"))
    refused = await other.expect(Ack, of="execution_started")
    assert (refused.ok, refused.reason) == (False, "stale_token")
    await holder.send(ExecutionStarted(job["id"], taken.token + 1, "p"))
    refused = await holder.expect(Ack, of="execution_started")
    assert (refused.ok, refused.reason) == (False, "stale_token")
    assert (await get_job(hub.url, job["id"]))["status"] == "assigned"
    status, _ = await call(hub.url, "DELETE", f"/jobs/{job['id']}")
    assert status == 200
    await holder.send(ExecutionStarted(job["id"], taken.token, "p"))  # too late
    refused = await holder.expect(Ack, of="execution_started")
    assert (refused.ok, refused.reason) == (False, "already_finished")
    assert (await get_job(hub.url, job["id"]))["status"] == "cancelled"
    await holder.close()
    await other.close()


async def test_cancel_from_assigned_tells_the_worker(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    assert (await get_job(hub.url, job["id"]))["status"] == "assigned"
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{job['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    cancel = await worker.expect(Cancel)
    assert (cancel.job_id, cancel.token, cancel.reason) == (job["id"], taken.token, "cancelled")
    assert cancelled["history"][0]["outcome"] == "cancelled"
    await worker.close()


async def test_timeout_from_assigned_ends_timed_out(hub_factory: HubFactory) -> None:
    """timeout_s runs from the claim: a job stuck in ComfyUI's queue still ends at it."""
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url, timeout_s=0.5)
    taken = await worker.take_job()
    cancel = await worker.expect(Cancel, within=5.0)
    assert (cancel.token, cancel.reason) == (taken.token, "timed_out")
    final = await get_job(hub.url, job["id"])
    assert final["status"] == "timed_out" and final["error"]["type"] == "timeout"
    assert final["running_at"] is None
    await worker.close()


async def test_a_lost_worker_loses_its_assigned_job_to_another(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=30, disconnect_grace_s=0.3)
    lost = ProtocolWorker(hub.url, "m1-gpu0", execution_started=True)
    await lost.connect()
    job = await submit(hub.url)
    await lost.take_job()
    await lost.cut()
    other = ProtocolWorker(hub.url, "m1-gpu1", execution_started=True)
    await other.connect()
    await other.ready()
    again = await other.expect(JobAssigned, within=5.0)
    assert (again.job_id, again.attempt) == (job["id"], 2)
    requeued = await get_job(hub.url, job["id"])
    assert requeued["status"] == "assigned" and requeued["running_at"] is None
    assert [h["outcome"] for h in requeued["history"]] == ["lease_expired"]
    await other.send(ExecutionStarted(job["id"], again.token, "p2"))
    await eventually(lambda: get_job(hub.url, job["id"]), lambda j: j["status"] == "running")
    assert (await other.complete(again)).ok
    await other.close()


async def test_a_drain_deadline_releases_an_assigned_job(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    status, drained = await call(
        hub.url, "POST", f"/workers/{worker.worker_id}/drain", {"timeout_s": 0.3}
    )
    assert status == 200 and drained["current_job"] == job["id"]
    cancel = await worker.expect(Cancel, within=5.0)
    assert (cancel.token, cancel.reason) == (taken.token, "drained")
    back = await get_job(hub.url, job["id"])
    assert back["status"] == "queued" and back["attempts"] == 0
    await worker.close()


async def test_the_per_owner_cap_counts_assigned_jobs(hub_factory: HubFactory) -> None:
    token, alice = "wt-assigned-1", {"Authorization": "Bearer alice-secret"}
    hub = await hub_factory(
        max_running_per_key=1, api_keys=("alice:alice-secret",), worker_token=token
    )
    first = ProtocolWorker(hub.url, "m1-gpu0", token=token, execution_started=True)
    second = ProtocolWorker(hub.url, "m1-gpu1", token=token, execution_started=True)
    await first.connect()
    await second.connect()
    ids = []
    for _ in range(2):
        status, job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, alice)
        assert status == 201
        ids.append(job["id"])
    taken = await first.take_job()
    assert taken.job_id == ids[0]
    _, held = await call(hub.url, "GET", f"/jobs/{ids[0]}", headers=alice)
    assert held["status"] == "assigned"
    await second.ready()
    await second.nothing_of(JobAssigned, within=0.5)  # alice's one GPU is held (assigned)
    assert (await first.complete(taken)).ok
    assert (await second.expect(JobAssigned, within=5.0)).job_id == ids[1]
    await first.close()
    await second.close()


async def test_a_resumed_jobs_execution_start_is_recorded_once_with_its_prompt_id(
    hub_factory: HubFactory,
) -> None:
    """On a socket the job was not handed on (resumed after a reconnect) nothing is held back:
    execution_started has its own fenced script, which makes the job running with the prompt
    id it names, once; the same report again (comfy_worker resends it after each resume)
    changes nothing."""
    hub = await hub_factory(lease_s=30, disconnect_grace_s=30)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    job = await submit(hub.url)
    taken = await worker.take_job()
    await worker.cut()
    assert (await worker.connect(running=RunningJob(job["id"], taken.token))).resumed
    for _ in range(2):
        await worker.send(ExecutionStarted(job["id"], taken.token, "prompt-9"))
    running = await eventually(
        lambda: get_job(hub.url, job["id"]), lambda j: j["status"] == "running"
    )
    assert (await worker.complete(taken)).ok
    events = await read_sse(f"{hub.url}/jobs/{job['id']}/events")
    statuses: list[dict[str, str]] = [d for k, d, _ in events if k == "status"]  # type: ignore[misc]
    assert [s["status"] for s in statuses] == ["queued", "assigned", "running", "succeeded"]
    assert statuses[2]["prompt_id"] == "prompt-9"
    done = await get_job(hub.url, job["id"])
    assert done["running_at"] == running["running_at"] and done["attempts"] == 1
    await worker.close()
