"""The dashboard's feed and files over plain HTTP: `GET /events` (topics, filters, limits) and
the static page (shipped in the package, served with a strict CSP, open without a key)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.fixtures.http import sse_events
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import ExecutionStarted, Progress

pytestmark = pytest.mark.redis


def _as(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_one_stream_carries_workers_queue_and_jobs(hub_factory: HubFactory) -> None:
    hub = await hub_factory(live_interval_s=0.05)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    done = await submit(hub.url, priority=5)
    assert (await worker.complete(await worker.take_job())).ok
    waiting = [await submit(hub.url, priority=p) for p in (3, 3, -1)]
    running = await submit(hub.url, priority=9)
    taken = await worker.take_job()
    assert taken.job_id == running["id"]
    await worker.send(Progress(taken.job_id, taken.token, "3", 2, 8))
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{hub.url}/events", timeout=aiohttp.ClientTimeout(total=20)) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen: dict[str, Any] = {}
        async for kind, data in sse_events(response):
            seen[kind] = data
            progress = (seen.get("workers") or {"workers": [{}]})["workers"][0].get("progress")
            if len(seen) == 3 and progress and progress["value"] == 2:
                break
    (tile,) = seen["workers"]["workers"]
    assert tile["id"] == "m1-gpu0" and tile["current_job"] == running["id"]
    assert "current_job_owner" not in tile
    queue = seen["queue"]
    assert queue["counts"]["queued"] == 3 and queue["counts"]["assigned"] == 1
    assert queue["counts"]["succeeded"] == 1
    assert queue["queued_by_priority"] == {"3": 2, "-1": 1} and queue["queued_scanned"] == 3
    assert queue["queued_by_tenant"] == {"": 3}
    ids = [job["id"] for job in seen["jobs"]["jobs"]]
    assert ids == [*(j["id"] for j in waiting), running["id"], done["id"]]
    await worker.close()


async def test_filters_and_bad_queries(hub_factory: HubFactory) -> None:
    hub = await hub_factory(live_interval_s=0.05)
    queued = await submit(hub.url)
    status, _ = await call(hub.url, "DELETE", f"/jobs/{(await submit(hub.url))['id']}")
    assert status == 200
    url = f"{hub.url}/events?topics=jobs&status=queued&limit=5"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        kind, data = await asyncio.wait_for(anext(sse_events(response)), 10)
    assert kind == "jobs" and data["status"] == "queued"
    assert [job["id"] for job in data["jobs"]] == [queued["id"]]
    for query, field in (
        ("topics=nope", "topics"),
        ("status=sleeping", "status"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
    ):
        status, body = await call(hub.url, "GET", f"/events?{query}")
        assert status == 400 and field in body["error"], (query, body)


async def test_the_feed_is_capped(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_live_feeds=1)
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/events") as first:
        assert first.status == 200
        await first.content.readline()
        status, body = await call(hub.url, "GET", "/events")
        assert status == 429 and "live feeds" in body["error"]


async def test_the_page_is_served_from_the_package_with_a_strict_policy(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory(api_keys=("k",), worker_token="t")
    async with aiohttp.ClientSession() as http:
        for path, kind in (
            ("/", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
        ):
            async with http.get(hub.url + path) as response:  # no key needed for the page
                assert response.status == 200, path
                assert response.content_type == kind
                csp = response.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "https:" not in csp
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                text = await response.text()
                assert "http://" not in text and "https://" not in text  # nothing from a CDN
        for path in ("/dashboard/live_feed.py", "/dashboard/missing.js", "/dashboard/.hidden"):
            async with http.get(hub.url + path) as response:
                assert response.status == 404, path
        async with http.get(hub.url + "/events") as response:
            assert response.status == 401  # the data needs the key
        async with http.get(hub.url + "/events", headers={"Authorization": "Bearer k"}) as ok:
            assert ok.status == 200


async def until_event(
    events: Any, wanted: Any, seen: list[tuple[str, Any]], within: float = 10.0
) -> tuple[str, Any]:
    """Read events (into `seen`) until one satisfies `wanted(kind, data)`."""

    async def scan() -> tuple[str, Any]:
        async for kind, data in events:
            seen.append((kind, data))
            if wanted(kind, data):
                return kind, data
        raise AssertionError(f"the feed ended; seen: {seen}")

    return await asyncio.wait_for(scan(), within)


def job_is(job_id: str, status: str) -> Any:
    return lambda kind, data: (
        kind == "job" and data["job"]["id"] == job_id and (data["job"]["status"] == status)
    )


async def test_changes_are_pushed_as_they_happen_not_polled(hub_factory: HubFactory) -> None:
    """No timer can deliver them (live_interval_s is an hour): each change of the job reaches
    the viewer, in order, because the script that made it wrote the feed."""
    hub = await hub_factory(live_interval_s=3600)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    url = f"{hub.url}/events?topics=jobs,queue"
    seen: list[tuple[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        events = sse_events(response)
        await until_event(events, lambda kind, data: kind == "queue", seen)
        await until_event(events, lambda kind, data: kind == "jobs", seen)
        assert seen[-1][1]["jobs"] == []  # the snapshot at connect
        job = await submit(hub.url)
        await until_event(events, job_is(job["id"], "queued"), seen)
        counted = await until_event(
            events, lambda kind, data: kind == "queue" and data["counts"]["queued"] == 1, seen
        )
        assert counted[1]["counts"]["succeeded"] == 0
        taken = await worker.take_job()
        await until_event(events, job_is(job["id"], "assigned"), seen)
        await worker.send(ExecutionStarted(taken.job_id, taken.token, "prompt-1"))
        await until_event(events, job_is(job["id"], "running"), seen)
        await worker.send(Progress(taken.job_id, taken.token, "3", 1, 4))
        _, progressed = await until_event(
            events,
            lambda kind, data: kind == "job" and (data["job"]["progress"] or {}).get("value") == 1,
            seen,
        )
        assert progressed["job"]["status"] == "running"
        assert (await worker.complete(taken)).ok
        await until_event(events, job_is(job["id"], "succeeded"), seen)
    statuses = [data["job"]["status"] for kind, data in seen if kind == "job"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    order = ["queued", "assigned", "running", "succeeded"]
    assert set(statuses) == set(order) and statuses == sorted(statuses, key=order.index)
    await worker.close()


async def test_a_key_never_sees_another_keys_jobs_on_the_feed(hub_factory: HubFactory) -> None:
    alice, bob, root = "alice-feed-1", "bob-feed-2", "root-feed-3"
    hub = await hub_factory(
        api_keys=(f"alice:{alice}", f"bob:{bob}"),
        admin_api_keys=(f"root:{root}",),
        worker_token="wt-feed",
        live_interval_s=3600,
    )
    worker = ProtocolWorker(hub.url, token="wt-feed")
    await worker.connect()
    theirs = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, _as(bob))
    assert theirs[0] == 201
    async with aiohttp.ClientSession() as http:
        feeds = [
            await http.get(f"{hub.url}/events", headers=_as(secret)) for secret in (alice, root)
        ]
        streams = [sse_events(feed) for feed in feeds]
        seen: list[list[tuple[str, Any]]] = [[], []]
        for events, log in zip(streams, seen, strict=True):
            await until_event(events, lambda kind, data: kind == "jobs", log)
        # Bob's job runs and ends, then Alice's is submitted: by the time Alice's arrives, any
        # of Bob's changes would have arrived before it (one stream, in order).
        taken = await worker.take_job()
        await worker.send(Progress(taken.job_id, taken.token, "3", 1, 4))
        assert (await worker.complete(taken)).ok
        status, mine = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, _as(alice))
        assert status == 201
        for events, log in zip(streams, seen, strict=True):
            await until_event(events, job_is(mine["id"], "queued"), log)
        for feed in feeds:
            feed.close()
    alice_saw, root_saw = (json.dumps(log) for log in seen)
    assert theirs[1]["id"] not in alice_saw and '"bob"' not in alice_saw
    assert theirs[1]["id"] in root_saw  # the admin key sees everyone's
    tiles = [data for kind, data in seen[0] if kind == "workers"]
    assert tiles and all(w["current_job"] != theirs[1]["id"] for t in tiles for w in t["workers"])
    await worker.close()


async def test_feed_viewers_count_against_max_event_streams(hub_factory: HubFactory) -> None:
    hub = await hub_factory(max_event_streams=1)
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/events") as first:
        assert first.status == 200
        await first.content.readline()
        status, body = await call(hub.url, "GET", "/events")
        assert status == 429 and "MAX_EVENT_STREAMS" in body["error"]
        job = await submit(hub.url)
        status, _ = await call(hub.url, "GET", f"/jobs/{job['id']}/events")
        assert status == 429  # one budget for job streams and feeds
