"""Masks through hub + worker + simulator: an input declared `mask_for` an image input goes to
ComfyUI's `/upload/mask` after its image (ComfyUI saves the image with the mask's alpha), so the
LoadImage naming the image gives the image and its MASK (1 - alpha), as ComfyUI's mask editor
sets it up; the worker's request is the recorded one; bad declarations are a 400 at submit."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from comfy_worker.comfy_client import ComfyClient

from comfyui_sim.png import decode_png, encode_png
from tests.fixtures.http import serving
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.fixtures.sim_traffic import recorded
from tests.worker.harness import PNG, HubClient, running_worker, worker_config

WIDTH, HEIGHT, RGB, _ = decode_png(PNG)
ALPHA = bytes((7 * i) % 256 for i in range(WIDTH * HEIGHT))
# What a mask editor sends: any picture, only its alpha matters.
MASK = encode_png(WIDTH, HEIGHT, bytes(3 * WIDTH * HEIGHT), alpha=ALPHA)


def mask_workflow() -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "m"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "i"}},
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.redis
@pytest.mark.parametrize("form", ["json", "multipart"])
async def test_a_mask_input_reaches_loadimage_as_its_mask(
    hub_factory: HubFactory,
    sim_factory: SimFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    form: str,
) -> None:
    hub = await hub_factory()
    sim = await sim_factory()
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        if form == "json":
            inputs = {
                "in.png": {"data": b64(PNG)},
                "mask.png": {"data": b64(MASK), "mask_for": "in.png"},
            }
            job_id = await client.submit(mask_workflow(), inputs=inputs)
        else:
            body = {"workflow": mask_workflow(), "inputs": {"mask.png": {"mask_for": "in.png"}}}
            data = aiohttp.FormData()
            data.add_field("job", json.dumps(body), content_type="application/json")
            data.add_field("in.png", PNG, filename="photo.png", content_type="image/png")
            data.add_field("mask.png", MASK, filename="mask.png", content_type="image/png")
            async with http.post(f"{hub.url}/jobs", data=data) as r:
                answer = await r.json()
                assert r.status == 201, answer
                job_id = answer["id"]
        job = await client.wait_for(job_id)
    assert job["status"] == "succeeded", job
    outputs = {o["name"].split("_")[0]: o for o in job["outputs"]}
    mask_png, _ = await client.output(job_id, outputs["m"]["name"])
    image_png, _ = await client.output(job_id, outputs["i"]["name"])
    width, height, mask_rgb, _ = decode_png(mask_png)
    assert (width, height) == (WIDTH, HEIGHT)
    # ComfyUI's MASK is 1 - alpha: every pixel, grey.
    assert mask_rgb == bytes(v for a in ALPHA for v in (255 - a,) * 3)
    assert decode_png(image_png)[2] == RGB  # the image itself is the input's
    (entry,) = (await (await http.get(f"{sim.url}/history")).json()).values()
    # LoadImage read the merged file, beside the image (named after the image's file).
    stem = "in" if form == "json" else "photo"
    assert entry["prompt"][2]["1"]["inputs"]["image"] == f"wgpu/{job_id}/{stem}-masked.png"


async def test_the_mask_upload_is_the_recorded_request(tmp_path: Path) -> None:
    """The worker's /upload/mask has the fields real ComfyUI was sent in the recording (file
    `image`, type input, overwrite, original_ref JSON of the image) and reads its answer."""
    (sent,) = [h for h in recorded("upload_image.json")["http"] if h["path"] == "/upload/mask"][:1]
    answer = sent["response_json"]
    seen: dict[str, Any] = {}

    async def upload_mask(request: web.Request) -> web.Response:
        form = await request.post()
        seen.update({k: (v if isinstance(v, str) else v.filename) for k, v in form.items()})
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/upload/mask", upload_mask)
    path = tmp_path / "mask.png"
    path.write_bytes(MASK)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        stored = await ComfyClient(session, url).upload_mask(
            str(path), "clipspace-mask-1.png", "wgpu/job123", "in.png"
        )
    assert stored == answer["name"]
    form = sent["request_form"]
    assert seen.keys() == form.keys()
    assert seen["image"] == form["image"]["filename"]
    assert (seen["type"], seen["overwrite"]) == (form["type"], form["overwrite"])
    assert json.loads(seen["original_ref"]) == json.loads(form["original_ref"])


@pytest.mark.redis
async def test_bad_mask_declarations_are_a_400_naming_the_field(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    image = {"data": b64(PNG)}
    cases = [
        ({"mask.png": {"data": b64(MASK), "mask_for": "nope.png"}}, "inputs.mask.png.mask_for"),
        ({"mask.png": {"data": b64(MASK), "mask_for": 3}}, "inputs.mask.png.mask_for"),
        (
            {"in.png": image, "mask.png": {"data": b64(MASK), "mask_for": "mask.png"}},
            "inputs.mask.png.mask_for",
        ),
        (
            {
                "in.png": image,
                "a.png": {"data": b64(MASK), "mask_for": "in.png"},
                "b.png": {"data": b64(MASK), "mask_for": "a.png"},
            },
            "inputs.b.png.mask_for",
        ),
        (
            {
                "in.png": image,
                "a.png": {"data": b64(MASK), "mask_for": "in.png"},
                "b.png": {"data": b64(MASK), "mask_for": "in.png"},
            },
            "has a mask already",
        ),
        ({"in.png": image, "mask.png": {"mask_for": "in.png"}}, "inputs.mask.png"),
        ({"in.png": {**image, "mask_for": "in.png"}}, "inputs.in.png.mask_for"),
    ]
    async with aiohttp.ClientSession() as http:
        for inputs, fragment in cases:
            body = {"workflow": mask_workflow(), "inputs": inputs}
            async with http.post(f"{hub.url}/jobs", json=body) as r:
                reply = await r.json()
                assert r.status == 400 and fragment in reply["error"], (inputs, reply)
