"""Stored inputs count against the key's byte limit (MAX_QUEUED_BYTES_PER_KEY) until they expire:
`POST /uploads` (raw, multipart, chunked) and inline inputs alike, together with the key's queued
workflow bytes; beyond it 429 with Retry-After and nothing is kept. Real hub, real Redis."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fixtures.hub import HubFactory
from tests.polling import eventually

pytestmark = pytest.mark.redis

TOKEN = "wt-upload-quota"
A, B = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
LIMIT = 4000
LOAD = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}


async def upload(
    url: str, data: bytes, headers: dict[str, str], how: str = "raw"
) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        if how == "multipart":
            form = aiohttp.FormData()
            form.add_field("file", data, filename="in.png", content_type="image/png")
            request = http.post(f"{url}/uploads", data=form, headers=headers)
        elif how == "chunked":  # no Content-Length: refused only once the bytes came

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, len(data), 512):
                    yield data[i : i + 512]

            request = http.post(f"{url}/uploads?name=in.png", data=body(), headers=headers)
        else:
            request = http.post(f"{url}/uploads?name=in.png", data=data, headers=headers)
        async with request as response:
            return response.status, await response.json(), dict(response.headers)


async def submit(url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/jobs", json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_uploads_count_against_the_keys_byte_limit(hub_factory: HubFactory) -> None:
    hub = await hub_factory(
        max_queued_bytes_per_key=LIMIT,
        api_keys=("a:key-a", "b:key-b"),
        worker_token=TOKEN,
        result_ttl_s=60,
    )
    first = os.urandom(2500)
    status, stored, _ = await upload(hub.url, first, A)
    assert status == 201 and stored["size"] == 2500
    # The same bytes again are one input: counted once.
    assert (await upload(hub.url, first, A, "multipart"))[0] == 201
    for how in ("raw", "multipart", "chunked"):
        more = os.urandom(2000)
        status, reply, headers = await upload(hub.url, more, A, how)
        assert status == 429, (how, reply)
        assert "MAX_QUEUED_BYTES_PER_KEY" in reply["error"]
        # Room comes when the first upload expires (RESULT_TTL_S from its upload).
        assert 1 <= int(headers["Retry-After"]) <= 60, headers
        # Nothing of a refused upload is kept: its ref is unknown.
        ref = f"sha256:{hashlib.sha256(more).hexdigest()}"
        status, reply = await submit(
            hub.url, {"workflow": LOAD, "inputs": {"in.png": {"ref": ref}}}, A
        )
        assert status == 400 and "unknown" in reply["error"], reply
    # Another key has its own share.
    assert (await upload(hub.url, os.urandom(2000), B))[0] == 201
    # Inline inputs are stored inputs too, and a workflow's bytes share the same limit.
    inline = {"in.png": {"data": base64.b64encode(os.urandom(2000)).decode()}}
    status, reply = await submit(hub.url, {"workflow": LOAD, "inputs": inline}, A)
    assert status == 429 and "MAX_QUEUED_BYTES_PER_KEY" in reply["error"]
    big = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png", "pad": "x" * 1600}}}
    status, reply = await submit(hub.url, {"workflow": big}, A)
    assert status == 429 and "MAX_QUEUED_BYTES_PER_KEY" in reply["error"], reply
    assert (await submit(hub.url, {"workflow": LOAD}, A))[0] == 201  # a small one still fits


async def test_room_comes_back_when_uploads_expire(hub_factory: HubFactory) -> None:
    hub = await hub_factory(
        max_queued_bytes_per_key=LIMIT,
        api_keys=("a:key-a",),
        worker_token=TOKEN,
        result_ttl_s=1.0,
    )
    assert (await upload(hub.url, os.urandom(3000), A))[0] == 201
    status, _, headers = await upload(hub.url, os.urandom(3000), A)
    assert status == 429 and int(headers["Retry-After"]) == 1
    assert (await upload(hub.url, os.urandom(1000), A))[0] == 201  # what fits is taken
    status, _, _ = await upload(hub.url, b"x", A)
    assert status == 429  # the key is full: refused before its body is read
    later = os.urandom(3000)

    async def again() -> int:
        return (await upload(hub.url, later, A))[0]

    assert await eventually(again, lambda status: status == 201, within=10.0) == 201
