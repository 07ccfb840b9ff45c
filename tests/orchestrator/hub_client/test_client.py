"""The hub REST client (sync and async) against a real hub on a real Redis."""

from __future__ import annotations

import asyncio
import socket

import pytest

from orchestrator.errors import HubError, HubUnreachable
from orchestrator.hub_client.client import AsyncHubClient, HubClient, parse_sse
from redis_api.server import RunningHub

WORKFLOW = {
    "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sync_client_round_trip(hub: RunningHub) -> None:
    client = HubClient(hub.url, timeout_s=5)

    def scenario() -> None:
        assert client.health()["status"] == "ok"
        job = client.submit(WORKFLOW, priority=5, idempotency_key="k1", max_attempts=2)
        assert job["status"] == "queued" and job["priority"] == 5
        assert client.submit(WORKFLOW, idempotency_key="k1")["id"] == job["id"]
        assert client.get_job(job["id"])["workflow"] == WORKFLOW
        assert [j["id"] for j in client.list_jobs(status="queued")] == [job["id"]]
        assert client.get_workers() == []
        assert client.cancel(job["id"])["status"] == "cancelled"
        events = list(client.events(job["id"], timeout_s=5))
        assert events[-1].kind == "done"
        assert events[-1].data["status"] == "cancelled"
        with pytest.raises(HubError) as missing:
            client.get_job("no-such-job")
        assert missing.value.status == 404 and not isinstance(missing.value, HubUnreachable)

    await asyncio.to_thread(scenario)


async def test_async_client_round_trip(hub: RunningHub) -> None:
    async with AsyncHubClient(hub.url) as client:
        job = await client.submit(WORKFLOW)
        assert (await client.get_job(job["id"]))["id"] == job["id"]
        assert job["id"] in [j["id"] for j in await client.list_jobs()]
        assert await client.get_workers() == []
        assert (await client.cancel(job["id"]))["status"] == "cancelled"
        kinds = [event.kind async for event in client.events(job["id"])]
        assert kinds[-1] == "done"
        with pytest.raises(HubError) as missing:
            await client.get_job("no-such-job")
        assert missing.value.status == 404


async def test_cancel_returns_the_cancelled_job(hub: RunningHub) -> None:
    # The contract (docs/architecture.md): DELETE /jobs/{id} -> the job, status cancelled.
    client = HubClient(hub.url)

    def scenario() -> None:
        job = client.submit(WORKFLOW)
        assert client.cancel(job["id"])["status"] == "cancelled"
        with pytest.raises(HubError) as again:
            client.cancel(job["id"])
        assert again.value.status == 409

    await asyncio.to_thread(scenario)


async def test_unreachable_hub() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HubUnreachable, match="does not answer"):
        HubClient(url, timeout_s=1).get_workers()
    async with AsyncHubClient(url, timeout_s=1) as client:
        with pytest.raises(HubUnreachable):
            await client.get_workers()


def test_parse_sse() -> None:
    lines = [
        "event: progress",
        'data: {"value": 1}',
        "id: 1-0",
        "",
        ": keep-alive",
        "",
        "event: done",
        'data: {"status": "succeeded"}',
        "",
    ]
    events = list(parse_sse(lines))
    assert [(e.kind, e.data, e.id) for e in events] == [
        ("progress", {"value": 1}, "1-0"),
        ("done", {"status": "succeeded"}, "1-0"),
    ]
