"""Job ids as docker treats container ids: every job route takes a unique prefix of the id."""

from __future__ import annotations

import pytest

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, submit
from tests.hub.worker_client import ProtocolWorker

pytestmark = pytest.mark.redis


async def test_a_unique_prefix_stands_for_the_id_on_every_job_route(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    done = await submit(hub.url)
    assert (await worker.complete(await worker.take_job(), {"a.png": ("image/png", b"PNG")})).ok
    short = done["id"][:12]
    status, job = await call(hub.url, "GET", f"/jobs/{short}")
    assert status == 200 and job["id"] == done["id"] and job["workflow"]
    status, data = await call(hub.url, "GET", f"/jobs/{done['id'][:7]}/outputs/a.png")
    assert status == 200 and data == "PNG"
    status, events = await call(hub.url, "GET", f"/jobs/{short}/events")
    assert status == 200 and "event: done" in events
    queued = await submit(hub.url)
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{queued['id'][:8]}")
    assert status == 200 and cancelled["id"] == queued["id"]
    assert cancelled["status"] == "cancelled"
    await worker.close()


async def test_an_ambiguous_or_unknown_prefix_is_a_clear_error(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    ids = [(await submit(hub.url))["id"] for _ in range(17)]  # 17 ids, 16 first characters
    firsts = [job_id[0] for job_id in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    status, body = await call(hub.url, "GET", f"/jobs/{shared}")
    assert status == 400 and "ambiguous" in body["error"] and "more characters" in body["error"]
    matching = sorted(job_id for job_id in ids if job_id.startswith(shared))
    assert matching[0][:12] in body["error"]
    status, body = await call(hub.url, "DELETE", f"/jobs/{shared}")
    assert status == 400 and "ambiguous" in body["error"]
    unused = next(f"{a}{b}" for a in "0123456789abcdef" for b in "0123456789abcdef"
                  if not any(job_id.startswith(f"{a}{b}") for job_id in ids))  # fmt: skip
    status, body = await call(hub.url, "GET", f"/jobs/{unused}")
    assert status == 404 and unused in body["error"]


async def test_a_prefix_only_resolves_to_the_callers_own_jobs(hub_factory: HubFactory) -> None:
    hub = await hub_factory(api_keys=("alice:key-a", "bob:key-b"), worker_token="wt")
    alice, bob = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
    status, mine = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, alice)
    assert status == 201
    theirs = []
    while not any(job_id[0] == mine["id"][0] for job_id in theirs):  # ~16 on average
        status, job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, bob)
        assert status == 201 and len(theirs) < 500
        theirs.append(job["id"])
    status, found = await call(hub.url, "GET", f"/jobs/{mine['id'][0]}", None, alice)
    assert status == 200 and found["id"] == mine["id"]  # bob's jobs do not make it ambiguous
    status, reply = await call(hub.url, "GET", f"/jobs/{mine['id'][0]}", None, bob)
    assert mine["id"][:12] not in str(reply)  # bob never learns alice's id
    assert status in (200, 400) and (status == 400 or reply["id"] in theirs)
    status, _ = await call(hub.url, "GET", f"/jobs/{mine['id'][:12]}", None, bob)
    assert status == 404
