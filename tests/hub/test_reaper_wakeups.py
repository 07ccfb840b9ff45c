"""The reaper does not poll (redis_api/maintenance.py): it sleeps until the earliest deadline it
knows of, and a deadline its own hub writes while it sleeps wakes it. Each test gives the reaper
an hour as its longest sleep, so only those wake-ups can reap on time."""

from __future__ import annotations

import time

from redis_api.tasks import stop_tasks
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import get_job, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import Cancel, JobAssigned

AN_HOUR = 3600.0


async def test_a_grace_written_while_the_reaper_sleeps_wakes_it(hub_factory: HubFactory) -> None:
    """The cut socket's grace (0.5 s) is nearer than anything the reaper knew of when it went
    to sleep (nothing): the hub's own write wakes it, and the job moves on in time."""
    hub = await hub_factory(reap_interval_s=AN_HOUR, lease_s=30, disconnect_grace_s=0.5)
    first = ProtocolWorker(hub.url, "m1-gpu0")
    await first.connect()
    job = await submit(hub.url)
    assigned = await first.take_job()
    second = ProtocolWorker(hub.url, "m1-gpu1")
    await second.connect()
    await second.ready()
    cut_at = time.monotonic()
    await first.cut()
    again = await second.expect(JobAssigned, within=3.0)
    assert time.monotonic() - cut_at < 3.0
    assert again.job_id == job["id"] and again.attempt == 2 and again.token != assigned.token
    assert (await second.complete(again)).ok
    await second.close()


async def test_a_deadline_another_hub_wrote_is_reaped_at_its_time(
    hub_factory: HubFactory,
) -> None:
    """A timeout written by a hub whose reaper is stopped is read by another hub's next round
    (here its first, at start) and reaped when it falls due, without a poll."""
    holder = await hub_factory(reap_interval_s=AN_HOUR, lease_s=30)
    await stop_tasks([t for t in holder.hub._tasks if t.get_name() == "hub-maintenance"])
    worker = ProtocolWorker(holder.url)
    await worker.connect()
    job = await submit(holder.url, timeout_s=1.0)
    await worker.take_job()
    await hub_factory(reap_interval_s=AN_HOUR, lease_s=30)  # its first round sees the deadline
    cancel = await worker.expect(Cancel, within=4.0)
    assert cancel.job_id == job["id"] and cancel.reason == "timed_out"
    final = await get_job(holder.url, job["id"])
    assert final["status"] == "timed_out" and final["error"]["type"] == "timeout"
    await worker.close()
