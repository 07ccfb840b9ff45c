"""Input files through hub + worker + simulator: LoadImage -> ImageInvert -> SaveImage with an
uploaded PNG returns the inverted image, pixel by pixel, whichever way the input was sent."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from yarl import URL

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.hub.worker_client import ProtocolWorker
from tests.worker.harness import (
    PNG,
    HubClient,
    invert_workflow,
    running_worker,
    worker_config,
)
from tests.worker.scenarios import (
    load_image_invert_returns_the_inverted_upload,
    submit_invert,
    upload,
)
from wgpu_protocol.credentials import worker_credential


@pytest.mark.parametrize("form", ["multipart", "base64", "ref", "url"])
async def test_load_image_invert_returns_the_inverted_upload(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    file_server: str,
    form: str,
) -> None:
    await load_image_invert_returns_the_inverted_upload(
        hub_factory, sim_factory, http, tmp_path, file_server, form
    )


async def test_uploads_are_content_addressed(
    hub_factory: HubFactory, http: aiohttp.ClientSession
) -> None:
    hub = await hub_factory()
    client = HubClient(http, hub.url)
    first = await upload(client, multipart=True)
    second = await upload(client, multipart=False)
    assert first == second
    assert first["ref"].startswith("sha256:") and len(first["ref"]) == 71
    assert first["size"] == len(PNG) and first["content_type"] == "image/png"
    assert first["name"] == "in.png"


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"other.png": {"data": base64.b64encode(PNG).decode()}}, "not named by any node"),
        ({"in.png": {"data": "not base64!"}}, "not valid base64"),
        ({"in.png": {"ref": "sha256:" + "0" * 64}}, "unknown"),
        ({"in.png": {"ref": "md5:abc"}}, "sha256:"),
        ({"in.png": {"url": "file:///etc/passwd"}}, "http"),
        ({"in.png": {"url": "http://169.254.169.254/latest/meta-data"}}, "private"),
        ({"in.png": {"url": "http://metadata.google.internal/x"}}, "is a metadata service"),
        ({"in.png": {"data": "", "url": "http://example.com/"}}, "one of"),
    ],
)
async def test_bad_inputs_are_refused_at_submit(
    hub_factory: HubFactory, http: aiohttp.ClientSession, inputs: dict[str, Any], says: str
) -> None:
    hub = await hub_factory()
    async with http.post(
        f"{hub.url}/jobs", json={"workflow": invert_workflow(), "inputs": inputs}
    ) as r:
        body = await r.json()
    assert r.status == 400, body
    assert says in body["error"]


async def test_loopback_urls_and_redirects_to_them_need_fetch_allowed_hosts(
    hub_factory: HubFactory, http: aiohttp.ClientSession, file_server: str
) -> None:
    hub = await hub_factory()  # FETCH_ALLOWED_HOSTS empty
    for url in (f"{file_server}/in.png", f"{file_server}/redirect"):
        body = {"workflow": invert_workflow(), "inputs": {"in.png": {"url": url}}}
        async with http.post(f"{hub.url}/jobs", json=body) as r:
            answer = await r.json()
        assert r.status == 400 and "FETCH_ALLOWED_HOSTS" in answer["error"], answer


async def test_an_input_over_max_input_bytes_is_refused(
    hub_factory: HubFactory, http: aiohttp.ClientSession
) -> None:
    hub = await hub_factory(max_input_bytes=1000)
    async with http.post(f"{hub.url}/uploads?name=in.png", data=PNG) as r:
        answer = await r.json()
    assert r.status == 400 and "MAX_INPUT_BYTES" in answer["error"]


async def test_a_jobs_inputs_go_only_to_the_worker_holding_it(
    hub_factory: HubFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    """Per-worker credentials on the input route, as on the socket: a worker gets the inputs of
    the job it holds now, with its own credential; another worker's credential, the fleet token
    itself, another input or a job that ended are refused."""
    token = "wt-secret"
    hub = await hub_factory(worker_token=token, api_keys=("ak-1",))
    key = {"X-API-Key": "ak-1"}
    refs = []
    for body in (PNG, PNG + b"other"):
        async with http.post(f"{hub.url}/uploads?name=in.png", data=body, headers=key) as r:
            refs.append((await r.json())["ref"].removeprefix("sha256:"))
    mine, other = refs
    async with http.post(
        f"{hub.url}/jobs",
        json={"workflow": invert_workflow(), "inputs": {"in.png": {"ref": f"sha256:{mine}"}}},
        headers=key,
    ) as r:
        job_id = (await r.json())["id"]
    holder = ProtocolWorker(hub.url, worker_id="m1-gpu0", token=token)
    await holder.connect()
    assigned = await holder.take_job()
    assert assigned.job_id == job_id

    async def fetch(sha256: str, worker_id: str, bearer: str, job: str = job_id) -> int:
        query = {"worker_id": worker_id, "job_id": job}
        headers = {"Authorization": f"Bearer {bearer}"}
        async with http.get(
            f"{hub.url}/worker/inputs/{sha256}", params=query, headers=headers
        ) as r:
            if r.status == 200:
                assert await r.read() == (PNG if sha256 == mine else PNG + b"other")
            return r.status

    m1, m2 = worker_credential(token, "m1-gpu0"), worker_credential(token, "m2-gpu0")
    assert await fetch(mine, "m1-gpu0", m1) == 200
    assert await fetch(mine, "m2-gpu0", m2) == 403  # a valid credential, not that job's worker
    assert await fetch(mine, "m1-gpu0", m2) == 401  # another worker's credential
    assert await fetch(mine, "m1-gpu0", token) == 401  # the fleet token itself
    assert await fetch(mine, "m1-gpu0", "ak-1") == 401
    assert await fetch(other, "m1-gpu0", m1) == 403  # not one of the job's inputs
    assert await fetch(mine, "m1-gpu0", m1, job="") == 400
    for bad in ("%ED%A0%80", "%00"):  # a lone surrogate, a NUL: refused before the HMAC
        url = URL(f"{hub.url}/worker/inputs/{mine}?worker_id=m1-gpu0{bad}&job_id=x", encoded=True)
        async with http.get(url, headers={"Authorization": f"Bearer {m1}"}) as r:
            assert r.status == 401, bad
    client = aioredis.Redis.from_url(redis_url)
    assert await client.delete(f"{hub.config.key_prefix}input:{mine}") == 1
    await client.aclose()
    assert await fetch(mine, "m1-gpu0", m1) == 404  # its description expired
    assert (await holder.complete(assigned)).ok
    assert await fetch(mine, "m1-gpu0", m1) == 403  # the job ended
    await holder.close()


async def test_a_worker_with_only_its_own_credential_runs_a_job_with_inputs(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    hub = await hub_factory(worker_token="wt-secret")
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    config = worker_config(
        hub.url,
        sim.url,
        tmp_path,
        worker_credential=worker_credential("wt-secret", "test-gpu0"),  # as `wgpu start` does
    )
    assert config.worker_token is None
    async with running_worker(config):
        job = await client.wait_for(await submit_invert(client, "ref", ""))
    assert job["status"] == "succeeded", job


async def test_inputs_expire_like_results(
    hub_factory: HubFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A blob whose description expired is swept; one still described is kept."""
    hub = await hub_factory(outputs_dir=str(tmp_path / "store"))
    client = HubClient(http, hub.url)
    kept = await upload(client, multipart=True)
    other = PNG + b"trailing bytes"
    async with http.post(f"{hub.url}/uploads?name=b.png", data=other) as r:
        expired = await r.json()
    blobs = tmp_path / "store" / "inputs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted(
        m["ref"].removeprefix("sha256:") for m in (kept, expired)
    )
    redis_client = aioredis.Redis.from_url(hub.config.redis_url)
    sha = expired["ref"].removeprefix("sha256:")
    assert await redis_client.delete(f"{hub.config.key_prefix}input:{sha}") == 1
    await redis_client.aclose()
    # The hub's own first sweep may run after the delete and take it first: the outcome counts.
    assert await hub.hub.maintenance.sweep_outputs() in (0, 1)
    assert [p.name for p in blobs.iterdir()] == [kept["ref"].removeprefix("sha256:")]


@pytest.mark.parametrize("name", ["a\nb.png", "a\x7fb.png", "\u00e9" * 130 + ".png"])
async def test_input_names_are_plain_file_names(
    hub_factory: HubFactory, http: aiohttp.ClientSession, name: str
) -> None:
    """An input's name becomes a file name in ComfyUI's input directory: control characters
    and names over 255 bytes are refused at the edge (400 naming the field), not by ComfyUI."""
    hub = await hub_factory()
    data = base64.b64encode(PNG).decode()
    body = {"workflow": invert_workflow(name), "inputs": {name: {"data": data}}}
    async with http.post(f"{hub.url}/jobs", json=body) as r:
        answer = await r.json()
    assert r.status == 400 and "plain file name" in answer["error"], answer
    async with http.post(f"{hub.url}/uploads", params={"name": name}, data=PNG) as r:
        answer = await r.json()
    assert r.status == 400 and "plain file name" in answer["error"], answer
    if not name.isprintable():
        return  # aiohttp's client refuses to send that as a part's file name
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename=name, content_type="image/png")
    async with http.post(f"{hub.url}/uploads", data=form) as r:
        answer = await r.json()
    assert r.status == 400 and "plain file name" in answer["error"], answer
