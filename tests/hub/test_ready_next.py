"""`completed.ready_next`: the hub records the result and claims the worker's next job in one
script, and sends the job right after the ack (no `ready` round trip). And `started`, held back
by the hub until the job's next script. Real hub, real Redis, protocol workers on real sockets."""

from __future__ import annotations

import json

import aiohttp
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from redis_api.ws_frames import text_frames
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import Ack, Completed, JobAssigned, Started

pytestmark = pytest.mark.redis


async def status_events(hub_url: str, job_id: str) -> list[dict[str, object]]:
    """The data of every `status` event of a finished job's SSE stream."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{hub_url}/jobs/{job_id}/events") as response,
    ):
        assert response.status == 200
        text = (await response.read()).decode()
    found = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if "event: status" in lines:
            data = next(line for line in lines if line.startswith("data: "))
            found.append(json.loads(data.removeprefix("data: ")))
    return found


async def test_ready_next_sends_the_next_job_right_after_the_ack(
    hub_factory: HubFactory, any_redis_url: str
) -> None:
    hub = await hub_factory(redis_url=any_redis_url)
    worker = ProtocolWorker(hub.url, execution_started=True)  # so its `started` is held back
    welcome = await worker.connect()
    assert welcome.ready_next is True and welcome.execution_started is True
    first, second = await submit(hub.url), await submit(hub.url)
    assigned = await worker.take_job()
    assert assigned.job_id == first["id"]

    await worker.send(Started(assigned.job_id, assigned.token, "prompt-1"))
    await worker.send(Completed(assigned.job_id, assigned.token, ready_next=True))
    ack = await worker.recv()  # in this order: the ack, then the next job, with no `ready` sent
    assert isinstance(ack, Ack) and ack.ok and ack.of == "completed"
    assert ack.job_id == first["id"]
    following = await worker.recv()
    assert isinstance(following, JobAssigned) and following.job_id == second["id"]
    assert following.attempt == 1 and following.token != assigned.token

    done, running = await get_job(hub.url, first["id"]), await get_job(hub.url, second["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert running["status"] == "assigned" and running["worker_id"] == worker.worker_id
    # The held-back `started` was recorded by the completion's script, before it finished.
    statuses = await status_events(hub.url, first["id"])
    assert (statuses[0]["status"], statuses[-1]["status"]) == ("queued", "succeeded")
    started = [s for s in statuses if s.get("prompt_id")]
    assert [(s["status"], s["prompt_id"]) for s in started] == [("assigned", "prompt-1")]
    assert (await get_job(hub.url, first["id"]))["history"][0]["outcome"] == "succeeded"

    # Nothing queued: the worker waits as after `ready`, and a new job reaches it unasked.
    await worker.send(Completed(following.job_id, following.token, ready_next=True))
    assert (await worker.expect(Ack, job_id=second["id"])).ok

    async def states() -> list[str]:
        return [w["status"] for w in (await call(hub.url, "GET", "/workers"))[1]["workers"]]

    await eventually(states, lambda s: s == ["idle"])  # recorded as waiting, by the script
    third = await submit(hub.url)
    assert (await worker.expect(JobAssigned)).job_id == third["id"]  # the first job since
    await worker.close()


async def test_ready_next_with_a_stale_token_is_refused_and_claims_nothing(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    first = await submit(hub.url)
    assigned = await worker.take_job()
    waiting = await submit(hub.url)

    await worker.send(Completed(assigned.job_id, assigned.token - 1, ready_next=True))
    refused = await worker.expect(Ack, job_id=first["id"], of="completed")
    assert not refused.ok and refused.reason == "stale_token"
    # The refusal came from the script that would have claimed: nothing was claimed.
    assert (await get_job(hub.url, first["id"]))["status"] == "assigned"
    assert (await get_job(hub.url, waiting["id"]))["status"] == "queued"

    # The right token still completes it, and then the waiting job follows the ack.
    await worker.send(Completed(assigned.job_id, assigned.token, ready_next=True))
    assert (await worker.expect(Ack, job_id=first["id"], of="completed")).ok
    assert (await worker.expect(JobAssigned)).job_id == waiting["id"]  # and no other before it
    await worker.close()


async def test_started_for_a_job_this_socket_does_not_hold_is_still_refused(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    holder, other = ProtocolWorker(hub.url, "m1-gpu0"), ProtocolWorker(hub.url, "m1-gpu1")
    await holder.connect()
    await other.connect()
    job = await submit(hub.url)
    assigned = await holder.take_job()
    await other.send(Started(assigned.job_id, assigned.token, "not-mine"))
    refused = await other.expect(Ack, of="started")
    assert not refused.ok and refused.reason == "stale_token"
    assert (await holder.complete(assigned)).ok
    statuses = await status_events(hub.url, job["id"])
    assert all(s.get("prompt_id") != "not-mine" for s in statuses)
    await holder.close()
    await other.close()


def test_coalesced_text_frames_parse_as_separate_frames() -> None:
    # A real client-side parser (websockets') reads what the hub writes in one go; the lengths
    # cover each RFC 6455 length encoding and its boundaries, and multi-byte characters.
    texts = ["a" * n for n in (0, 125, 126, 65535, 65536)] + ["é✓" * 50]
    reader = StreamReader()
    reader.feed_data(text_frames(*texts))
    reader.feed_eof()
    parsed = []
    for _ in texts:
        parser = Frame.parse(reader.read_exact, mask=False)
        with pytest.raises(StopIteration) as done:
            next(parser)
        frame = done.value.value
        parsed.append((frame.opcode, frame.fin, frame.data.decode()))
    assert parsed == [(Opcode.TEXT, True, text) for text in texts]
    assert reader.at_eof()
