"""Webhooks through a real hub on real Redis to real HTTP receivers on 127.0.0.1: durable across
hub restarts, retried, signed (verified with the `standardwebhooks` library), isolated per
destination, and never sent to internal addresses."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks import Webhook

from redis_api.server import RunningHub
from redis_api.tasks import stop_tasks
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import free_port
from tests.fixtures.webhooks import LOCAL, SECRET, Receivers, verified
from tests.hub.helpers import call, get_job, job_status, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Progress

pytestmark = pytest.mark.redis


@pytest.fixture
async def rdb(redis_url: str) -> AsyncIterator[aioredis.Redis[str]]:
    client: aioredis.Redis[str] = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()  # type: ignore[attr-defined]


async def outbox_size(rdb: aioredis.Redis[str]) -> int:
    return int(await rdb.zcard("wgpu:wh:due"))


async def run_one(hub: RunningHub, worker: ProtocolWorker, **fields: Any) -> dict[str, Any]:
    job = await submit(hub.url, **fields)
    assert (await worker.complete(await worker.take_job())).ok
    return job


async def webhook_of(hub: RunningHub, job_id: str, ok: Callable[[dict[str, Any]], bool]) -> Any:
    job = await eventually(
        lambda: get_job(hub.url, job_id), lambda j: ok(j["webhook"]), within=15.0
    )
    return job["webhook"]


async def test_receiver_down_for_three_attempts_gets_it_once_after_a_hub_restart(
    hub_factory: HubFactory, receivers: Receivers, rdb: aioredis.Redis[str]
) -> None:
    port = free_port()  # nothing listens there yet: the receiver is down
    settings = dict(LOCAL, webhook_retry_schedule=(1.0, 1.0, 2.0))
    first = await hub_factory(**settings)
    worker = ProtocolWorker(first.url)
    await worker.connect()
    job = await run_one(first, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    state = await webhook_of(first, job["id"], lambda w: w["attempts"] >= 1)
    assert state["last_status"] is None and "cannot connect" in state["error"]
    assert state["next_attempt_at"] is not None and state["delivered_at"] is None
    await worker.close()
    await first.close()  # a restart between attempts: the delivery waits in Redis

    second = await hub_factory(**settings)
    await webhook_of(second, job["id"], lambda w: w["attempts"] >= 3)
    await receivers.add(port=port)  # up before the 4th (last) attempt
    state = await webhook_of(second, job["id"], lambda w: w["delivered_at"] is not None)
    assert state["attempts"] == 4 and state["last_status"] == 200
    assert state["next_attempt_at"] is None and state["error"] is None
    assert await outbox_size(rdb) == 0  # nothing left to send: exactly one delivery
    assert len(receivers.calls) == 1
    payload = verified(receivers.calls[0])
    assert payload["event"] == "job.succeeded"
    assert payload["id"] == job["id"] and payload["status"] == "succeeded"
    headers = {k.lower(): v for k, v in receivers.calls[0].headers.items()}
    assert headers["webhook-id"] == f"msg_{job['id']}.job.succeeded"
    assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(receivers.calls[0].body + b" ", receivers.calls[0].headers)
    _, text = await call(second.url, "GET", "/metrics")
    assert 'wgpu_webhook_deliveries_total{outcome="delivered"} 1' in text
    assert 'wgpu_webhook_deliveries_total{outcome="retry"} 2' in text  # attempts 2 and 3 here


async def test_sixty_four_slow_receivers_do_not_delay_a_fast_one(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    try:
        hub = await hub_factory(**LOCAL, webhook_timeout_s=60.0)
        worker = ProtocolWorker(hub.url)
        await worker.connect()
        slow_ports = [await receivers.add(slow) for _ in range(64)]
        one_slow = await receivers.add(slow)
        fast = await receivers.add()
        for port in slow_ports:  # 64 slow destinations...
            await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{port}/slow")
        for _ in range(64):  # ...and 64 deliveries queued on one more slow destination
            await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{one_slow}/slow")

        async def slow_in_flight() -> int:
            return len(receivers.to("/slow"))

        await eventually(slow_in_flight, lambda n: n >= 64 + 4, within=20.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        fast_jobs = [
            (await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{fast}/fast"))["id"]
            for _ in range(10)
        ]

        async def fast_received() -> int:
            return len(receivers.to("/fast"))

        await eventually(fast_received, lambda n: n == 10, within=10.0)
        took = loop.time() - started
        assert not release.is_set() and len(receivers.to("/slow")) <= 64 + 4
        assert {verified(c)["id"] for c in receivers.to("/fast")} == set(fast_jobs)
        print(f"10 fast deliveries behind 128 hanging ones: {took:.2f}s")
        await worker.close()
    finally:
        release.set()


async def test_internal_targets_are_refused_at_submit(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    for url in (
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://100.64.0.1/hook",
        "http://[::1]:8001/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ):
        status, body = await call(hub.url, "POST", "/jobs", {"workflow": _WF, "webhook_url": url})
        assert status == 400, (url, body)
        assert "webhook_url" in body["error"] and "WEBHOOK_ALLOWED_HOSTS" in body["error"]
    status, body = await call(
        hub.url, "POST", "/jobs", {"workflow": _WF, "webhook_url": "gopher://example.com/"}
    )
    assert status == 400 and "webhook_url" in body["error"]


async def test_a_name_resolving_to_loopback_is_refused_at_connect(
    hub_factory: HubFactory, receivers: Receivers, rdb: aioredis.Redis[str]
) -> None:
    port = await receivers.add()
    hub = await hub_factory(**LOCAL)  # 127.0.0.1 is allowed, the name `localhost` is not
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await run_one(hub, worker, webhook_url=f"http://localhost:{port}/hook")
    state = await webhook_of(hub, job["id"], lambda w: w["next_attempt_at"] is None)
    assert state["attempts"] == 1 and state["delivered_at"] is None
    assert "refused" in state["error"] and "loopback" in state["error"]
    assert await outbox_size(rdb) == 0
    assert receivers.calls == []
    _, text = await call(hub.url, "GET", "/metrics")
    assert 'wgpu_webhook_deliveries_total{outcome="refused"} 1' in text
    # The same receiver by its allowed address gets it: the refusal was the name's.
    allowed = await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    await webhook_of(hub, allowed["id"], lambda w: w["delivered_at"] is not None)
    assert [verified(c)["id"] for c in receivers.calls] == [allowed["id"]]
    await worker.close()


async def test_redirects_are_not_followed(
    hub_factory: HubFactory, receivers: Receivers, rdb: aioredis.Redis[str]
) -> None:
    internal = await receivers.add()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{internal}/internal")

    outside = await receivers.add(redirect)
    hub = await hub_factory(**LOCAL, webhook_retry_schedule=(0.2,))
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{outside}/hook")
    state = await webhook_of(hub, job["id"], lambda w: w["attempts"] == 2)
    assert state["last_status"] == 302 and state["delivered_at"] is None
    assert state["next_attempt_at"] is None  # both attempts used: given up
    assert await outbox_size(rdb) == 0
    assert len(receivers.to("/hook")) == 2 and receivers.to("/internal") == []
    await worker.close()


async def test_every_final_event_and_rate_limited_progress(
    hub_factory: HubFactory, receivers: Receivers, rdb: aioredis.Redis[str]
) -> None:
    port = await receivers.add()
    url = f"http://127.0.0.1:{port}/hook"
    hub = await hub_factory(**LOCAL, webhook_progress_interval_s=60.0, public_url="https://h.x")
    worker = ProtocolWorker(hub.url)
    await worker.connect()

    job = await submit(hub.url, webhook_url=url, webhook_events=["job.progress", "job.succeeded"])
    assert job["webhook"]["events"] == ["job.progress", "job.succeeded"]
    taken = await worker.take_job()
    for step in range(1, 6):  # five progress reports inside one interval: one webhook
        await worker.send(Progress(taken.job_id, taken.token, "3", step, 5))
    await eventually(lambda: _async(len(receivers.calls)), lambda n: n >= 1)
    assert (await worker.complete(taken, {"a.png": ("image/png", b"\x89PNG")})).ok
    await webhook_of(hub, job["id"], lambda w: w["delivered_at"] is not None)
    await eventually(lambda: outbox_size(rdb), lambda n: n == 0)
    events = [verified(c) for c in receivers.calls]
    assert [e["event"] for e in events] == ["job.progress", "job.succeeded"]
    assert events[0]["status"] == "assigned" and events[0]["progress"]["max"] == 5
    assert events[1]["outputs"][0]["url"].startswith(f"https://h.x/jobs/{job['id']}/outputs/")

    failed = await submit(hub.url, webhook_url=url)
    assert (await worker.fail(await worker.take_job(), retryable=False)).ok
    cancelled = await submit(hub.url, webhook_url=url)
    status, _ = await call(hub.url, "DELETE", f"/jobs/{cancelled['id']}")
    assert status == 200
    for done in (failed, cancelled):
        await webhook_of(hub, done["id"], lambda w: w["delivered_at"] is not None)
    by_job = {e["id"]: e["event"] for e in (verified(c) for c in receivers.calls)}
    assert by_job[failed["id"]] == "job.failed" and by_job[cancelled["id"]] == "job.cancelled"
    await worker.close()


async def test_webhook_events_are_validated(hub_factory: HubFactory) -> None:
    hub = await hub_factory(**LOCAL)
    for events, url in (
        (["job.nope"], "http://127.0.0.1:9/"),
        ("job.progress", "http://127.0.0.1:9/"),
        ([], "http://127.0.0.1:9/"),
        (["job.progress"], None),
    ):
        body: dict[str, Any] = {"workflow": _WF, "webhook_events": events}
        if url:
            body["webhook_url"] = url
        status, reply = await call(hub.url, "POST", "/jobs", body)
        assert status == 400 and "webhook_events" in reply["error"], (events, reply)


async def test_a_failing_destination_trips_its_breaker(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=503)

    port = await receivers.add(broken)
    hub = await hub_factory(
        **LOCAL,
        webhook_retry_schedule=(0.05,) * 20,
        webhook_breaker_failures=3,
        webhook_breaker_cooldown_s=60.0,
    )
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    # Open after 3 failures: the next attempt is deferred (not sent, not counted) past the
    # cooldown.
    deferred = await webhook_of(
        hub, job["id"], lambda w: (w["next_attempt_at"] or 0) - time.time() > 30
    )
    assert deferred["attempts"] == 3 and deferred["last_status"] == 503
    assert len(receivers.calls) == 3
    await worker.close()


async def _async(value: int) -> int:
    return value


_WF = {"1": {"class_type": "SaveImage", "inputs": {}}}


async def test_a_stopping_hub_hands_back_what_it_claimed(
    hub_factory: HubFactory, receivers: Receivers, rdb: aioredis.Redis[str]
) -> None:
    """A claim whose reply the stopping hub never read (cancelled mid-call) must not wait out
    its lease: the hub hands back every delivery under its claim token when it stops."""
    port = await receivers.add()
    first = await hub_factory(**LOCAL)
    # Its sender stopped (not the hub): it claims only when told.
    await stop_tasks([t for t in first.hub._tasks if t.get_name() == "hub-webhooks"])
    worker = ProtocolWorker(first.url)
    await worker.connect()
    job = await run_one(first, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    await worker.close()
    sender = first.hub.webhooks
    (claimed,) = await sender.store.claim_webhooks(10, sender._lease_ms, sender._claim_token)
    assert claimed.job_id == job["id"]
    leased_until = await rdb.zscore("wgpu:wh:due", claimed.delivery)
    await first.close()
    assert (await rdb.zscore("wgpu:wh:due", claimed.delivery) or 0) < (leased_until or 0)
    second = await hub_factory(**LOCAL)
    await webhook_of(second, job["id"], lambda w: w["delivered_at"] is not None)
    assert [verified(c)["id"] for c in receivers.calls] == [job["id"]]


async def test_each_api_key_name_can_have_its_own_secret(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    alice_secret = "whsec_" + base64.b64encode(b"alice's own secret, 32 bytes!!!!").decode()
    port = await receivers.add()
    hub = await hub_factory(
        **LOCAL,
        api_keys=("alice:key-a", "bob:key-b"),
        worker_token="wt",
        webhook_secrets=(("alice", alice_secret),),
    )
    worker = ProtocolWorker(hub.url, token="wt")
    await worker.connect()
    jobs = {}
    for name, key in (("alice", "key-a"), ("bob", "key-b")):
        body = {"workflow": _WF, "webhook_url": f"http://127.0.0.1:{port}/{name}"}
        status, job = await call(hub.url, "POST", "/jobs", body, {"X-API-Key": key})
        assert status == 201 and job["owner"] == name
        assert (await worker.complete(await worker.take_job())).ok
        jobs[name] = job["id"]

    async def both() -> int:
        return len(receivers.calls)

    await eventually(both, lambda n: n == 2)
    (to_alice,) = receivers.to("/alice")
    (to_bob,) = receivers.to("/bob")
    assert Webhook(alice_secret).verify(to_alice.body, to_alice.headers)["id"] == jobs["alice"]
    assert verified(to_bob)["id"] == jobs["bob"]  # no secret of its own: WEBHOOK_SECRET
    with pytest.raises(Exception, match="signature"):
        verified(to_alice)
    await worker.close()


async def test_jobs_ended_by_the_hub_get_their_webhooks_too(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    """job.timed_out (the reaper), job.dead (the last attempt failed), job.expired (not started
    within queue_timeout_s) and job.unschedulable (no connected worker can take it): signed,
    once each, the body the job JSON with that status; the job JSON shows the delivery."""
    port = await receivers.add()
    url = f"http://127.0.0.1:{port}/hook"
    hub = await hub_factory(**LOCAL, lease_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    nowhere = {"machine_id": "nowhere"}  # no worker fits: it stays queued
    expired = await submit(hub.url, webhook_url=url, constraints=nowhere, queue_timeout_s=0.3)
    unschedulable = await submit(
        hub.url, webhook_url=url, constraints=nowhere, schedule_timeout_s=0.3
    )
    timed_out = await submit(hub.url, webhook_url=url, timeout_s=0.3)
    await worker.take_job()  # and never reports: the reaper ends it
    await job_status(hub.url, timed_out["id"], "timed_out")
    dead = await submit(hub.url, webhook_url=url, max_attempts=1)
    assert (await worker.fail(await worker.take_job(), retryable=True)).ok

    jobs = {"job.expired": expired, "job.unschedulable": unschedulable}
    jobs |= {"job.timed_out": timed_out, "job.dead": dead}
    for job in jobs.values():
        state = await webhook_of(hub, job["id"], lambda w: w["delivered_at"] is not None)
        assert state["attempts"] == 1 and state["last_status"] == 200
        assert state["next_attempt_at"] is None
    events = [verified(c) for c in receivers.calls]
    assert sorted(e["event"] for e in events) == sorted(jobs)  # once each
    errors = {"job.expired": "expired", "job.unschedulable": "unschedulable"}
    errors |= {"job.timed_out": "timeout", "job.dead": "execution_error"}
    for event in events:
        job = jobs[event["event"]]
        assert event["id"] == job["id"] and event["status"] == event["event"].removeprefix("job.")
        assert event["error"]["type"] == errors[event["event"]]
    _, text = await call(hub.url, "GET", "/metrics")
    assert 'wgpu_webhook_deliveries_total{outcome="delivered"} 4' in text
    await worker.close()


async def test_a_receiver_that_never_answers_times_out_and_is_given_up(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    """WEBHOOK_TIMEOUT_S bounds each attempt (15 s by default; 0.5 s here): a receiver that
    takes the request and never answers costs one timeout per attempt, then the delivery is
    given up; /metrics counts the retry and the give-up."""
    answered = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await answered.wait()  # never set: the hub must not wait for it
        return web.Response(text="late")

    port = await receivers.add(hang)
    hub = await hub_factory(**LOCAL, webhook_retry_schedule=(0.1,), webhook_timeout_s=0.5)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    state = await webhook_of(
        hub, job["id"], lambda w: w["attempts"] == 2 and w["next_attempt_at"] is None
    )
    assert state["delivered_at"] is None and state["last_status"] is None
    assert "Timeout" in state["error"], state
    assert len(receivers.to("/hook")) == 2  # it was reached, and did not answer, twice
    _, text = await call(hub.url, "GET", "/metrics")
    assert 'wgpu_webhook_deliveries_total{outcome="retry"} 1' in text
    assert 'wgpu_webhook_deliveries_total{outcome="gave_up"} 1' in text
    assert 'wgpu_webhook_deliveries_total{outcome="delivered"} 0' in text
    await worker.close()


async def test_deliveries_and_retries_go_out_when_due_not_on_a_poll(
    hub_factory: HubFactory, receivers: Receivers
) -> None:
    """The sender's longest sleep is an hour: the outbox's announcement (`wh:wake`) sends the
    first attempt at once, and the retry goes out when its gap ends (0.3 s), not an hour later."""
    answers = iter((500, 200))

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=next(answers))

    port = await receivers.add(flaky)
    hub = await hub_factory(**LOCAL, webhook_poll_s=3600.0, webhook_retry_schedule=(0.3,))
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    ended_at = time.monotonic()
    job = await run_one(hub, worker, webhook_url=f"http://127.0.0.1:{port}/hook")
    state = await webhook_of(hub, job["id"], lambda w: w["delivered_at"] is not None)
    assert time.monotonic() - ended_at < 10.0
    assert state["attempts"] == 2 and state["last_status"] == 200
    assert [verified(c)["id"] for c in receivers.to("/hook")] == [job["id"]] * 2
    await worker.close()
