"""The dashboard's feed and files over plain HTTP: `GET /events` (topics, filters, limits) and
the static page (shipped in the package, served with a strict CSP, open without a key)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.fixtures.http import sse_events
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import Progress

pytestmark = pytest.mark.redis


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
