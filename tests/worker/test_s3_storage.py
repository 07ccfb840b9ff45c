"""The S3 backend (STORAGE_URL=s3://bucket/prefix) passes the same output and input tests as the
local directory, against a real S3-compatible server (moto_server, tests/fixtures/s3.py)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session

from redis_api.server import RunningHub
from tests.fixtures.hub import HubFactory
from tests.fixtures.s3 import S3Bucket, S3Server
from tests.fixtures.sim import SimFactory
from tests.fixtures.webhooks import LOCAL, Receivers, verified
from tests.worker.harness import PNG, HubClient, blob_workflow, running_worker, worker_config
from tests.worker.scenarios import (
    every_output_kind_arrives_described,
    load_image_invert_returns_the_inverted_upload,
)


@pytest.fixture
async def storage_url(s3_bucket: S3Bucket) -> str:
    return await s3_bucket()


@pytest.fixture
def s3_hub_factory(hub_factory: HubFactory, storage_url: str) -> HubFactory:
    async def factory(**overrides: Any) -> RunningHub:
        return await hub_factory(storage_url=storage_url, **overrides)

    return factory


async def bucket_keys(server: S3Server, storage_url: str) -> list[str]:
    bucket = storage_url.removeprefix("s3://").split("/", 1)[0]
    async with get_session().create_client("s3", endpoint_url=server.endpoint) as s3:
        listed = await s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


async def test_every_output_kind_arrives_in_the_bucket(
    s3_hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    s3_server: S3Server,
    storage_url: str,
) -> None:
    await every_output_kind_arrives_described(s3_hub_factory, sim_factory, http, tmp_path)
    keys = await bucket_keys(s3_server, storage_url)
    assert "outputs/.wgpu-outputs" in keys  # the prefix is marked as this hub store's
    assert sum(key.endswith(".png") for key in keys) >= 6  # saved, previews, websocket images
    assert not any(key.endswith(".part") for key in keys)


@pytest.mark.parametrize("form", ["multipart", "base64", "ref", "url"])
async def test_inputs_come_from_the_bucket(
    s3_hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    file_server: str,
    form: str,
    s3_server: S3Server,
    storage_url: str,
) -> None:
    await load_image_invert_returns_the_inverted_upload(
        s3_hub_factory, sim_factory, http, tmp_path, file_server, form
    )
    sha = hashlib.sha256(PNG).hexdigest()
    assert f"outputs/inputs/{sha}" in await bucket_keys(s3_server, storage_url)


async def test_a_multipart_output_is_checked_and_served_by_redirect(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    storage_url: str,
) -> None:
    """Several S3 parts (8 MiB each), the sha256 checked end to end; OUTPUT_REDIRECT=presigned
    sends the client to the object store instead of relaying the bytes."""
    size = 21 * (1 << 20) + 5
    hub = await hub_factory(storage_url=storage_url, output_redirect="presigned")
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    workflow = blob_workflow(size, "s3/blob")
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job = await client.wait_for(await client.submit(workflow), timeout_s=120.0)
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    async with http.get(hub.url + output["url"], allow_redirects=False) as r:
        assert r.status == 307
        location = r.headers["Location"]
    assert "Signature" in location or "X-Amz-Signature" in location
    async with http.get(location) as r:
        assert r.status == 200
        data = await r.read()
    assert len(data) == size == output["size"]
    assert hashlib.sha256(data).hexdigest() == output["sha256"]
    expected = (sim.output_dir / "s3" / "blob_00001_.bin").read_bytes()
    assert data == expected


async def test_a_webhook_names_presigned_output_urls(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    storage_url: str,
    receivers: Receivers,
) -> None:
    """With a storage backend that presigns (S3), the webhook body's output URLs are presigned:
    the receiver fetches the bytes from the object store with no API key and no hub."""
    hub = await hub_factory(storage_url=storage_url, **LOCAL)
    sim = await sim_factory()
    port = await receivers.add()
    client = HubClient(http, hub.url)
    workflow = blob_workflow(4096, "hook/blob")
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job_id = await client.submit(workflow, webhook_url=f"http://127.0.0.1:{port}/done")
        job = await client.wait_for(job_id, timeout_s=60.0)
    assert job["status"] == "succeeded", job
    await asyncio.wait_for(receivers.arrived.wait(), timeout=15.0)
    (call,) = receivers.to("/done")  # the final event only: progress was not asked for
    body = verified(call)
    assert body["event"] == "job.succeeded" and body["id"] == job_id
    (output,) = body["outputs"]
    assert not output["url"].startswith(hub.url) and "Signature" in output["url"]
    async with http.get(output["url"]) as r:
        assert r.status == 200
        data = await r.read()
    assert hashlib.sha256(data).hexdigest() == output["sha256"] == job["outputs"][0]["sha256"]
