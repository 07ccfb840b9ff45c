"""Whole scenarios that more than one test module runs: the same end-to-end checks against the
hub's local storage (test_outputs, test_inputs) and against S3 (test_s3_storage)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp

from comfyui_sim.media_nodes import INVERT_TABLE
from comfyui_sim.png import decode_png
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.worker.harness import (
    PNG,
    REAL_INVERTED,
    HubClient,
    invert_workflow,
    running_worker,
    worker_config,
)

OUTPUT_FIELDS = {"name", "url", "size", "content_type", "sha256", "node_id", "kind", "subfolder"}


def every_kind_workflow() -> dict[str, Any]:
    noise = {
        "class_type": "ImageAddNoise",
        "inputs": {"image": ["1", 0], "seed": 7, "strength": 0.5},
    }
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 128, "height": 96, "batch_size": 2, "color": 0x336699},
        },
        "2": noise,
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "k/a"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "5": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
        "6": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.125}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["6", 0]}},
        "8": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}},
        "10": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}},
        "11": {
            "class_type": "SaveVideo",
            "inputs": {
                "video": ["10", 0],
                "filename_prefix": "k/v",
                "format": "mp4",
                "codec": "h264",
            },
        },
    }


async def stored_bytes(client: HubClient, output: dict[str, Any]) -> bytes:
    async with client.http.get(client.url + output["url"]) as response:
        assert response.status == 200
        assert response.content_type == output["content_type"]
        return await response.read()


async def every_output_kind_arrives_described(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Every kind of output ComfyUI makes arrives, described (the 8 fields) and stored with the
    bytes ComfyUI wrote, whatever storage the hub from `hub_factory` uses."""
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job = await client.wait_for(await client.submit(every_kind_workflow()))
    assert job["status"] == "succeeded", job
    outputs = job["outputs"]
    assert all(set(o) == OUTPUT_FIELDS for o in outputs), outputs
    assert len({o["name"] for o in outputs}) == len(outputs)  # unique in the job
    by_node: dict[str, list[dict[str, Any]]] = {}
    for output in outputs:
        by_node.setdefault(output["node_id"], []).append(output)
        data = await stored_bytes(client, output)
        assert len(data) == output["size"]
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
    saved = by_node["3"]
    assert [(o["kind"], o["subfolder"]) for o in saved] == [("output", "k"), ("output", "k")]
    assert [o["kind"] for o in by_node["4"]] == ["temp", "temp"]
    assert [o["content_type"] for o in by_node["11"]] == ["video/mp4"]
    # SaveImageWebsocket: only ever binary frames; each batch image arrives as a PNG.
    ws_images = by_node["5"]
    assert len(ws_images) == 2
    for output in ws_images:
        assert output["content_type"] == "image/png"
        width, height, pixels, _ = decode_png(await stored_bytes(client, output))
        assert (width, height) == (128, 96) and len(set(pixels)) > 16  # the noise image
    # Non-file UI values, as ComfyUI's history has them.
    assert job["results"] == {"7": {"text": ["0.125"]}, "9": {"text": ["128"]}}
    # Same bytes as ComfyUI wrote.
    for output in saved:
        path = sim.output_dir / output["subfolder"] / output["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == output["sha256"]


async def upload(client: HubClient, multipart: bool) -> dict[str, Any]:
    if multipart:
        form = aiohttp.FormData()
        form.add_field("file", PNG, filename="in.png", content_type="image/png")
        async with client.http.post(f"{client.url}/uploads", data=form) as r:
            assert r.status == 201, await r.text()
            return await r.json()  # type: ignore[no-any-return]
    async with client.http.post(f"{client.url}/uploads?name=in.png", data=PNG) as r:
        assert r.status == 201, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def submit_invert(client: HubClient, form: str, server: str) -> str:
    """The input-file workflow, its input sent as `form` (multipart, base64, ref or url)."""
    workflow = invert_workflow()
    if form == "multipart":
        data = aiohttp.FormData()
        data.add_field("job", json.dumps({"workflow": workflow}), content_type="application/json")
        data.add_field("in.png", PNG, filename="photo.png", content_type="image/png")
        async with client.http.post(f"{client.url}/jobs", data=data) as r:
            body = await r.json()
            assert r.status == 201, body
            return str(body["id"])
    if form == "base64":
        spec: dict[str, Any] = {"data": base64.b64encode(PNG).decode()}
    elif form == "ref":
        spec = {"ref": (await upload(client, multipart=True))["ref"]}
    else:
        spec = {"url": f"{server}/redirect"}  # followed, and checked at every hop
    return await client.submit(workflow, inputs={"in.png": spec})


async def load_image_invert_returns_the_inverted_upload(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    file_server: str,
    form: str,
) -> None:
    """An uploaded PNG through LoadImage -> ImageInvert -> SaveImage comes back inverted, pixel
    by pixel as real ComfyUI made it, whatever storage the hub from `hub_factory` uses."""
    hub = await hub_factory(fetch_allowed_hosts=("127.0.0.1",))
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    config = worker_config(hub.url, sim.url, tmp_path, comfyui_input_dir=sim.input_dir)
    async with running_worker(config):
        job_id = await submit_invert(client, form, file_server)
        job = await client.wait_for(job_id)
    assert job["status"] == "succeeded", job
    (output,) = job["outputs"]
    data, _ = await client.output(job_id, output["name"])
    width, height, pixels, _ = decode_png(data)
    in_width, in_height, in_pixels, _ = decode_png(PNG)
    assert (width, height) == (in_width, in_height) == (32, 24)
    assert pixels == in_pixels.translate(INVERT_TABLE)  # every pixel
    assert (width, height, pixels) == REAL_INVERTED[:3]  # as real ComfyUI made it
    # ComfyUI loaded it from the job's own folder; that folder is gone after the job.
    (entry,) = (await (await http.get(f"{sim.url}/history")).json()).values()
    assert entry["prompt"][2]["1"]["inputs"]["image"].startswith(f"wgpu/{job_id}/")
    assert not (sim.input_dir / "wgpu" / job_id).exists()
