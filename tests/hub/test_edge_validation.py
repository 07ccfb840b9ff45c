"""Every call fails alone: poisoned strings, deep JSON, NaN, broken encodings get a 400 (REST) or
an `error` reply (WS) naming the field, while the requests around them succeed."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import uuid

import aiohttp
import pytest

from redis_api.errors import BadRequest
from redis_api.store import JobSpec, Store
from tests.fixtures.hub import HubFactory
from tests.hub.helpers import WORKFLOW, call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import (
    Ack,
    ErrorReply,
    GpuInfo,
    JobAssigned,
    ProtocolError,
    decode_worker_message,
    loads_strict,
)

pytestmark = pytest.mark.redis

SURROGATE = "\ud800"


def _raw_json(body: object) -> bytes:
    # json.dumps escapes a lone surrogate as \\ud800, which json.loads turns back into one.
    return json.dumps(body).encode()


POISONED_BODIES = {
    "idempotency_key": {"workflow": WORKFLOW, "idempotency_key": "k" + SURROGATE},
    "webhook_url": {"workflow": WORKFLOW, "webhook_url": "http://x/" + SURROGATE},
    "constraints.machine_id": {"workflow": WORKFLOW, "constraints": {"machine_id": SURROGATE}},
    "workflow": {"workflow": {"1": {"class_type": "X" + SURROGATE}}},
}


async def test_poisoned_strings_fail_alone(
    hub_factory: HubFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await hub_factory()
    caplog.set_level(logging.INFO, logger="redis_api")

    async def good() -> int:
        return (await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}))[0]

    async def bad(field: str) -> tuple[int, object]:
        return await call(hub.url, "POST", "/jobs", raw=_raw_json(POISONED_BODIES[field]))

    for _ in range(3):
        results = await asyncio.gather(
            *(good() for _ in range(40)), *(bad(field) for field in POISONED_BODIES)
        )
        goods, bads = results[:40], results[40:]
        assert goods == [201] * 40
        for field, (status, reply) in zip(POISONED_BODIES, bads, strict=True):
            assert status == 400, (field, reply)
            assert field.split(".")[-1] in reply["error"], reply  # type: ignore[index]
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


async def test_an_unpackable_call_is_refused_before_its_batch(redis_url: str) -> None:
    store = Store.from_url(redis_url, f"t{uuid.uuid4().hex[:6]}:")
    try:
        spec = JobSpec(json.dumps(WORKFLOW), 0, 60.0, 1)
        poisoned = JobSpec(json.dumps(WORKFLOW), 0, 60.0, 1, idempotency_key=SURROGATE)
        calls = [store.enqueue(uuid.uuid4().hex, spec) for _ in range(30)]
        calls.insert(15, store.enqueue(uuid.uuid4().hex, poisoned))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[15], BadRequest)
        others = results[:15] + results[16:]
        assert all(not isinstance(r, BaseException) and r.created for r in others), others
    finally:
        await store.close()


async def test_deep_json_nan_and_bad_encoding_are_400(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    deep = b'{"workflow": {"1": {"class_type": "X", "inputs": {"a": ' + b"[" * 10_000
    deep += b"]" * 10_000 + b"}}}}"
    status, reply = await call(hub.url, "POST", "/jobs", raw=deep)
    assert status == 400 and "nested deeper" in reply["error"], reply
    status, reply = await call(hub.url, "POST", "/jobs", raw=_nested(70))
    assert status == 400 and "nested deeper" in reply["error"], reply
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"workflow": {"1": {"class_type": "X", "inputs": {"cfg": ' + constant + b"}}}}"
        status, reply = await call(hub.url, "POST", "/jobs", raw=body)
        assert status == 400 and "JSON" in reply["error"], reply
    status, reply = await call(hub.url, "POST", "/jobs", raw=b'{"workflow": 1, "timeout_s": 1e999}')
    assert status == 400
    # A body that says gzip but is not.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            hub.url + "/jobs",
            data=b"this is not gzip at all",
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 400, await response.text()
        good = gzip.compress(json.dumps({"workflow": WORKFLOW}).encode())
        async with http.post(
            hub.url + "/jobs",
            data=good,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 201
    assert (await call(hub.url, "GET", "/health"))[0] == 200


def _nested(depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return ('{"workflow": {"1": {"class_type": "X", "inputs": {"a": ' + inner + "}}}}").encode()


def test_protocol_refuses_what_cannot_be_text() -> None:
    for frame in (
        '{"type":"started","job_id":"\\ud800","token":1,"prompt_id":"p"}',
        '{"type":"started","job_id":"a\\u0000b","token":1,"prompt_id":"p"}',
        '{"type":"progress","job_id":"j","token":1,"node":null,"value":NaN,"max":1}',
        '{"type":"unavailable","reason":"' + "[" * 0 + '\\udfff"}',
        '{"type":"ready","x":' + "[" * 5000 + "]" * 5000 + "}",
    ):
        with pytest.raises(ProtocolError):
            decode_worker_message(frame)
    with pytest.raises(ProtocolError, match="nested deeper"):
        loads_strict("[" * 65 + "]" * 65)
    assert loads_strict("[" * 64 + "]" * 64) is not None


async def test_poisoned_worker_messages_fail_alone(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    # A hello with a lone surrogate is refused; the socket may try again.
    bad_hello = ProtocolWorker(hub.url, worker_id="m9-gpu0")
    await bad_hello.open()
    await bad_hello.send_raw(
        '{"type":"hello","worker_id":"m9-gpu0","machine_id":"\\ud800","gpu":{"index":0},'
        '"version":"v","protocol":1}'
    )
    error = await bad_hello.expect(ErrorReply)
    assert "machine_id" in error.message
    await bad_hello.close(bye=False)

    worker = ProtocolWorker(hub.url, gpu=GpuInfo(0, "GPU-x", "Test GPU", 24_000))
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    poisoned = [
        '{"type":"started","job_id":"' + assigned.job_id + '","token":1,"prompt_id":"\\ud800"}',
        '{"type":"failed","job_id":"' + assigned.job_id + '","token":1,'
        '"error":{"type":"x","message":"\\ud800"}}',
        '{"type":"released","job_id":"\\ud800","token":1,"reason":"r"}',
        '{"type":"progress","job_id":"j","token":1,"node":null,"value":1,"max":Infinity}',
        '{"type":"ready","deep":' + "[" * 10_000 + "]" * 10_000 + "}",
    ]
    for frame in poisoned:
        await worker.send_raw(frame)
        await worker.expect(ErrorReply)
    assert (await worker.complete(assigned)).ok  # the socket and the job are unharmed
    assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    await worker.close()


async def test_completed_survives_a_poisoned_neighbour(hub_factory: HubFactory) -> None:
    """Worker reports in flight together with a poisoned REST call all succeed."""
    hub = await hub_factory()
    workers = [ProtocolWorker(hub.url, worker_id=f"m1-gpu{i}") for i in range(4)]
    for worker in workers:
        await worker.connect()
    jobs = [await submit(hub.url) for _ in workers]
    assigned: list[JobAssigned] = [await worker.take_job() for worker in workers]

    async def poison() -> int:
        body = _raw_json(POISONED_BODIES["idempotency_key"])
        return (await call(hub.url, "POST", "/jobs", raw=body))[0]

    results = await asyncio.gather(
        *(w.complete(a) for w, a in zip(workers, assigned, strict=True)),
        *(poison() for _ in range(10)),
    )
    acks = [r for r in results if isinstance(r, Ack)]
    assert len(acks) == 4 and all(ack.ok for ack in acks)
    assert [r for r in results if not isinstance(r, Ack)] == [400] * 10
    for job in jobs:
        assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    for worker in workers:
        await worker.close()
