"""Drain and `/workers` with pipelining: a worker that relays a finished job's outputs still
holds that job, so it is `draining` (not `drained`) until the relay's `completed` is recorded,
past the drain timeout that job too goes back to the queue, and `/workers` names it as
`relaying_job` only to the key that owns it. Real hub, real Redis, a protocol worker on a real
socket."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Cancel, JobAssigned, Ready, RunningJob

pytestmark = pytest.mark.redis

TOKEN = "wt-drain-relay-7"
ALICE, BOB, ROOT = "alice-relay-1", "bob-relay-2", "root-relay-3"


async def worker_entry(hub_url: str, worker_id: str, secret: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    status, body = await call(hub_url, "GET", "/workers", headers=headers)
    assert status == 200, body
    return next(w for w in body["workers"] if w["id"] == worker_id)


async def relaying_only(hub_url: str, worker: ProtocolWorker) -> JobAssigned:
    """The worker's one job is done in ComfyUI and being relayed; the queue is empty, so the
    hub records the worker idle with that job as its relay."""
    job = await worker.take_job()
    await worker.send(Ready(relaying=RunningJob(job.job_id, job.token)))
    await eventually(
        lambda: worker_entry(hub_url, worker.worker_id),
        lambda entry: entry.get("relaying_job") == job.job_id,
        what="the relaying job in /workers",
    )
    return job


async def test_a_relaying_worker_is_draining_until_its_completed_is_recorded(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(lease_s=30.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    await submit(hub.url)
    job = await relaying_only(hub.url, worker)
    entry = await worker_entry(hub.url, worker.worker_id)
    assert entry["status"] == "idle" and entry["current_job"] is None, entry

    status, answer = await call(hub.url, "POST", f"/workers/{worker.worker_id}/drain", {})
    assert status == 200, answer
    assert answer["drain"]["state"] == "draining", answer
    assert answer["current_job"] is None and answer["relaying_job"] == job.job_id
    entry = await worker_entry(hub.url, worker.worker_id)
    assert entry["drain"]["state"] == "draining" and entry["relaying_job"] == job.job_id, entry

    assert (await worker.complete(job)).ok  # the relay's `completed`, recorded
    entry = await worker_entry(hub.url, worker.worker_id)
    assert entry["drain"]["state"] == "drained" and entry["relaying_job"] is None, entry
    assert (await get_job(hub.url, job.job_id))["status"] == "succeeded"
    await worker.close()


async def test_past_the_drain_timeout_the_relaying_job_is_released_too(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(lease_s=30.0)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    await submit(hub.url, max_attempts=1)
    job = await relaying_only(hub.url, worker)
    status, answer = await call(
        hub.url, "POST", f"/workers/{worker.worker_id}/drain", {"timeout_s": 0.2}
    )
    # The answer may already say `drained`: on a loaded machine the reaper, which wakes at the
    # drain's deadline, can pass it before this answer is written. The deadline is what it set.
    assert status == 200 and answer["drain"]["state"] in ("draining", "drained"), answer
    drain = answer["drain"]
    assert round(drain["deadline"] - drain["since"], 3) == 0.2, answer

    cancel = await worker.expect(Cancel, job_id=job.job_id)  # the worker stops the relay
    assert cancel.reason == "drained" and cancel.token == job.token
    requeued = await get_job(hub.url, job.job_id)
    assert requeued["status"] == "queued" and requeued["attempts"] == 0, requeued
    assert [h["outcome"] for h in requeued["history"]] == ["released"]
    entry = await worker_entry(hub.url, worker.worker_id)
    assert entry["drain"]["state"] == "drained" and entry["relaying_job"] is None, entry
    assert not (await worker.complete(job)).ok  # a late relay is refused
    await worker.close()


async def test_workers_name_the_relaying_job_only_to_its_owners_key(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(
        lease_s=30.0,
        api_keys=(f"alice:{ALICE}", f"bob:{BOB}"),
        admin_api_keys=(f"root:{ROOT}",),
        worker_token=TOKEN,
    )
    worker = ProtocolWorker(hub.url, token=TOKEN)
    await worker.connect()
    status, _ = await call(
        hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, {"Authorization": f"Bearer {ALICE}"}
    )
    assert status == 201
    job = await worker.take_job()
    await worker.send(Ready(relaying=RunningJob(job.job_id, job.token)))
    await eventually(
        lambda: worker_entry(hub.url, worker.worker_id, ROOT),
        lambda entry: entry.get("relaying_job") == job.job_id,
        what="the relaying job in /workers",
    )
    seen = {
        name: (await worker_entry(hub.url, worker.worker_id, secret))["relaying_job"]
        for name, secret in (("alice", ALICE), ("bob", BOB), ("root", ROOT))
    }
    assert seen == {"alice": job.job_id, "bob": None, "root": job.job_id}
    await worker.close()
