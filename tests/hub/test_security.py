"""Auth on and off, bad input of every kind (hypothesis), and results that expire."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.fixtures.hub import HubFactory
from tests.hub.helpers import call, get_job, submit
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.messages import (
    MAX_TEXT_FRAME_BYTES,
    WORKER_MESSAGES,
    Ack,
    Cancel,
    ErrorReply,
    Hello,
    OutputFrame,
    ProtocolError,
    Welcome,
    decode_worker_message,
    encode_output_frame,
)

pytestmark = pytest.mark.redis

WORKER_TOKEN = "wt-Zq81-never-in-logs"
API_KEYS = ("ak-first-Xy7", "ak-second-Pp3")


async def test_auth_on(hub_factory: HubFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hub = await hub_factory(api_keys=API_KEYS, worker_token=WORKER_TOKEN)

    status, reply = await call(hub.url, "POST", "/jobs", {"workflow": {"1": {"class_type": "X"}}})
    assert status == 401 and "API key" in reply["error"]
    status, _ = await call(hub.url, "GET", "/jobs", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await call(hub.url, "GET", "/workers", headers={"X-API-Key": API_KEYS[0] + "x"})
    assert status == 401
    status, job = await call(
        hub.url,
        "POST",
        "/jobs",
        {"workflow": {"1": {"class_type": "X"}}},
        headers={"Authorization": f"Bearer {API_KEYS[1]}"},
    )
    assert status == 201
    status, _ = await call(hub.url, "GET", f"/jobs/{job['id']}", headers={"X-API-Key": API_KEYS[1]})
    assert status == 200
    # Another key does not see it (tenancy: tests/hub/test_tenancy.py).
    status, _ = await call(hub.url, "GET", f"/jobs/{job['id']}", headers={"X-API-Key": API_KEYS[0]})
    assert status == 404
    assert (await call(hub.url, "GET", "/health"))[0] == 200  # probes need no key
    assert (await call(hub.url, "GET", "/metrics"))[0] == 200

    ws_url = hub.ws_url + "/ws/worker/m1-gpu0"
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {API_KEYS[0]}"},
        # The fleet token itself is no worker's credential: each worker shows its own.
        {"Authorization": f"Bearer {WORKER_TOKEN}"},
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, additional_headers=headers, proxy=None):
                pass
        assert refused.value.response.status_code == 401
    worker = ProtocolWorker(hub.url, token=WORKER_TOKEN)
    await worker.connect()
    assert (await worker.take_job()).job_id == job["id"]
    await worker.close()

    # The hub's own logs (the test client library logs its headers at DEBUG: not the hub's).
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("redis_api", "aiohttp"))
    )
    assert "m1-gpu0" in logged  # the log was captured at all
    for secret in (WORKER_TOKEN, *API_KEYS):
        assert secret not in logged and secret not in repr(hub.config)


async def test_auth_off_by_default(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    assert hub.config.api_keys == () and hub.config.worker_token is None
    job = await submit(hub.url)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    assert (await worker.take_job()).job_id == job["id"]
    await worker.close()


async def test_garbage_before_hello_gets_errors_then_hello_works(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.open()
    await worker.send_raw("not json")
    assert (await worker.expect(ErrorReply)).code == "bad_message"
    await worker.send_raw(b"\x00\x01binary")
    assert (await worker.expect(ErrorReply)).code == "hello_first"
    await worker.send_raw(json.dumps({"type": "ready"}))
    assert (await worker.expect(ErrorReply)).code == "hello_first"
    await worker.send(Hello("someone-else", "m1", worker.gpu, "test"))
    assert (await worker.expect(ErrorReply)).code == "bad_worker_id"
    await worker.send(Hello(worker.worker_id, "m1", worker.gpu, "test"))
    assert (await worker.expect(Welcome)).worker_id == worker.worker_id
    await worker.close()


# ----------------------------------------------------------------------------- fuzzing

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "job_id",
        "token",
        "outputs",
        "error",
        "node",
        "value",
        "max",
        "prompt_id",
        "reason",
        "running",
        "gpu",
        "comfyui_ok",
        "worker_id",
    ]
)


def _message_like(job_ids: list[str]) -> st.SearchStrategy[str]:
    """JSON objects shaped like worker messages, with wrong, missing or stale fields."""
    fields = st.dictionaries(_field_names, _json_values | st.sampled_from(job_ids), max_size=5)
    typed = st.builds(
        lambda t, f: json.dumps({"type": t, **f}),
        st.sampled_from([*WORKER_MESSAGES, "job", "welcome", "nope"]),
        fields,
    )
    reports = st.builds(
        lambda t, job, token: json.dumps(
            {
                "type": t,
                "job_id": job,
                "token": token,
                "outputs": [],
                "prompt_id": "p",
                "node": None,
                "value": 1,
                "max": 2,
                "reason": "r",
                "error": {"type": "x", "message": "y"},
            }
        ),
        st.sampled_from(["started", "progress", "completed", "failed", "released"]),
        st.sampled_from(job_ids) | st.text(max_size=10),
        st.integers(min_value=-5, max_value=50),
    )
    return typed | reports | st.text(max_size=200) | _json_values.map(json.dumps)


def _binary(job_ids: list[str]) -> st.SearchStrategy[bytes]:
    frames = st.builds(
        lambda job, token, name, data: encode_output_frame(
            OutputFrame(job, token, name, "image/png", data)
        ),
        st.sampled_from(job_ids),
        st.integers(min_value=-5, max_value=50),
        st.sampled_from(["a.png", "b.png"]),
        st.binary(max_size=64),
    )
    return frames | st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: b"WGO1" + b)


def _expects_reply(frame: str | bytes) -> bool:
    """False for frames that are valid messages needing no answer (ready, heartbeat, ...):
    those are not bad input, and the fuzzer leaves them out."""
    if isinstance(frame, bytes):
        return True
    try:
        message = decode_worker_message(frame)
    except ProtocolError:
        return True
    return message.type in ("started", "progress", "completed", "failed", "released", "hello")


async def test_malformed_and_oversized_frames_change_nothing(hub_factory: HubFactory) -> None:
    hub = await hub_factory(lease_s=60)
    victim = ProtocolWorker(hub.url, "m1-gpu0")
    await victim.connect()
    running = await submit(hub.url)
    held = await victim.take_job()
    queued = await submit(hub.url)
    before = {j: await get_job(hub.url, j) for j in (running["id"], queued["id"])}

    attacker = ProtocolWorker(hub.url, "m9-gpu0")
    await attacker.connect()
    loop = asyncio.get_running_loop()
    job_ids = [running["id"], queued["id"], "no-such-job"]

    exchanged = [0]

    async def exchange(frame: str | bytes) -> None:
        exchanged[0] += 1
        await attacker.send_raw(frame)
        while True:  # exactly one error or refused ack answers each frame (cancels may follow)
            reply = await attacker.recv(within=5)
            if isinstance(reply, Cancel):
                continue
            assert isinstance(reply, ErrorReply | Ack), reply
            if isinstance(reply, Ack):
                assert not reply.ok and reply.reason in (
                    "stale_token",
                    "unknown_job",
                    "already_finished",
                ), reply
            return

    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.one_of(_message_like(job_ids), _binary(job_ids)))
    def fuzz(frame: str | bytes) -> None:
        if _expects_reply(frame):
            asyncio.run_coroutine_threadsafe(exchange(frame), loop).result(timeout=10)

    await asyncio.to_thread(fuzz)
    assert exchanged[0] > 100  # most generated frames were bad input that needed an answer

    await attacker.send_raw(b"\x00" * 1000)
    assert (await attacker.expect(ErrorReply)).code == "bad_message"
    # Above 1 MiB, a frame is refused from its header (never buffered): the socket closes with
    # 1009 (message too big); nothing else changes.
    await attacker.send_raw("x" * (MAX_TEXT_FRAME_BYTES + 1))
    with pytest.raises(ConnectionError):
        await attacker.recv(within=5)
    assert attacker.ws is not None and attacker.ws.close_code == 1009

    after = {j: await get_job(hub.url, j) for j in before}
    assert after == before  # no job changed
    status, health = await call(hub.url, "GET", "/health")
    assert status == 200 and health["workers_connected"] == 1
    assert (await victim.complete(held)).ok
    await attacker.close()
    await victim.close()


# ----------------------------------------------------------------------------- expiry


async def test_after_ttl_no_job_keys_remain(
    hub_factory: HubFactory, redis_url: str, tmp_path: Path
) -> None:
    hub = await hub_factory(result_ttl_s=0.5, pool_idle_s=0.5, outputs_dir=str(tmp_path / "out"))
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    done = await submit(hub.url, idempotency_key="k-1")
    assigned = await worker.take_job()
    assert (await worker.complete(assigned, {"o.png": ("image/png", b"data")})).ok
    assert (tmp_path / "out" / done["id"] / "o.png").read_bytes() == b"data"
    dead = await submit(hub.url, max_attempts=1)
    assert (await worker.fail(await worker.take_job())).ok
    cancelled = await submit(hub.url)
    assert (await call(hub.url, "DELETE", f"/jobs/{cancelled['id']}"))[0] == 200
    assert (await get_job(hub.url, dead["id"]))["status"] == "dead"

    client = redis.Redis.from_url(redis_url, decode_responses=True)

    async def job_keys() -> list[str]:
        keys = client.keys(hub.config.key_prefix + "*")
        per_worker_or_counter = (
            *("seq", "fair", "workers", "worker:", "idle", "attempt_hist"),
            *("wpools:", "inv:", "warm:", "wfailed:"),
        )
        return sorted(
            k
            for k in keys
            if not k.removeprefix(hub.config.key_prefix).startswith(per_worker_or_counter)
        )

    assert await job_keys()  # there were some
    assert await eventually(job_keys, lambda keys: keys == [], within=5) == []
    await eventually(
        lambda: asyncio.to_thread((tmp_path / "out" / done["id"]).exists), lambda exists: not exists
    )
    for job in (done, dead, cancelled):
        assert (await call(hub.url, "GET", f"/jobs/{job['id']}"))[0] == 404
    client.close()
    # The idempotency key is free again: a new job, not the expired one.
    again = await submit(hub.url, idempotency_key="k-1")
    assert again["id"] != done["id"]
    await worker.close()


async def test_output_content_types_cannot_inject_headers(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    outputs = {
        "a.png": ("image/png", b"a"),
        "b.html": ("text/html\r\nX-Evil: 1", b"b"),
        "c.txt": ("text/plain\n", b"c"),
    }
    assert (await worker.complete(assigned, outputs)).ok
    final = await get_job(hub.url, job["id"])
    assert [o["content_type"] for o in final["outputs"]] == [
        "image/png",
        "application/octet-stream",
        "application/octet-stream",
    ]
    url = f"{hub.url}/jobs/{job['id']}/outputs/b.html"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200 and "X-Evil" not in response.headers
        assert await response.read() == b"b"
    await worker.close()
