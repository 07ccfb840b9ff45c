"""Replays the recordings of inputs and outputs (uploads, LoadImage, every output kind, per-step
progress, interrupts, large files) against the simulator: same WebSocket order, same answers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from comfyui_sim.png import decode_png, encode_png
from comfyui_sim.server import RunningSim
from tests.fixtures.sim import SimFactory
from tests.fixtures.sim_traffic import RECORDED, recorded, sequences, summarise
from tests.sim.replay import (
    assert_same_shapes,
    connect,
    get_json,
    run_recorded,
    shape,
    submit,
    without_status,
)

MASK_SHA256 = "2d64c913c36bb61f2c7b954f7585c02e1124b4b6f96dcc3f85f7bffe7e5b3199"
_FOLDED = re.compile(r"\(([^()]*progress\((\d+)\.\.(\d+)/(\d+)\)[^()]*)\)x(\d+)")


def unfold(summary: str) -> str:
    """`(a -> progress(1..3/3) -> b)x3` as the frames it stands for."""

    def expand(match: re.Match[str]) -> str:
        inner, first, last, _total, count = match.groups()
        start = int(first)
        assert int(last) - start + 1 == int(count), match.group(0)
        parts = []
        for value in range(start, start + int(count)):
            parts.append(re.sub(r"progress\(\d+\.\.\d+/", f"progress({value}/", inner))
        return " -> ".join(parts)

    return _FOLDED.sub(expand, summary)


def node_runs(summary: str) -> list[str]:
    """The sequence with node ids blanked: output nodes run in no fixed order."""
    return re.sub(r"\((\d+)\)", "(N)", summary).split(" -> ")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def history_entry(record: dict[str, Any]) -> dict[str, Any]:
    exchange = next(h for h in record["http"] if h["path"].startswith("/history/"))
    entry: dict[str, Any] = next(iter(exchange["response_json"].values()))
    return entry


async def view(session: aiohttp.ClientSession, sim: RunningSim, item: dict[str, Any]) -> bytes:
    params = {k: item[k] for k in ("filename", "subfolder", "type")}
    async with session.get(f"{sim.url}/view", params=params) as response:
        assert response.status == 200, params
        return await response.read()


@pytest.mark.parametrize(
    ("name", "ordered"),
    [
        ("batch_save.json", True),
        ("preview_only.json", True),
        ("animated_webp.json", True),
        ("animated_png.json", True),
        ("video_mp4.json", True),
        ("large_output.json", True),
        ("stepped_progress.json", True),
        ("multi_save.json", False),
        ("text_output.json", False),
    ],
)
async def test_output_kinds_match_recording(
    sim: RunningSim, session: aiohttp.ClientSession, name: str, ordered: bool
) -> None:
    ws, (prompt_id,) = await run_recorded(session, sim, name)
    real = unfold(sequences()[f"{name}:ws"])
    if ordered:
        assert summarise(ws.frames) == real
    else:
        assert sorted(node_runs(summarise(ws.frames))) == sorted(node_runs(real))
    record = recorded(name)
    real_entry = history_entry(record)
    _, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
    entry = history[prompt_id]
    assert entry["prompt"][4] == real_entry["prompt"][4] or not ordered
    assert sorted(entry["outputs"]) == sorted(real_entry["outputs"])
    for node_id, real_output in real_entry["outputs"].items():
        output = entry["outputs"][node_id]
        assert output.keys() == real_output.keys(), node_id
        if "text" in real_output:
            assert output["text"] == real_output["text"]  # str() of ints, floats, booleans
            continue
        assert "animated" not in real_output or output["animated"] == [True]
        assert len(output["images"]) == len(real_output["images"])
        for item, real_item in zip(output["images"], real_output["images"], strict=True):
            assert (item["subfolder"], item["type"]) == (real_item["subfolder"], real_item["type"])
            prefix = item["filename"].rsplit("_", 2)[0]
            if item["type"] == "temp":  # PreviewImage: 5 random letters per instance
                assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}", prefix)
            else:
                assert prefix == real_item["filename"].rsplit("_", 2)[0]
            assert item["filename"].rsplit(".", 1)[1] == real_item["filename"].rsplit(".", 1)[1]
            data = await view(session, sim, item)
            assert data[:4] == _magic(real_item["filename"])


def _magic(filename: str) -> bytes:
    return {"png": b"\x89PNG", "webp": b"RIFF", "mp4": bytes(3) + b"\x18"}[
        filename.rsplit(".", 1)[1]
    ]


async def test_large_noise_output_is_realistic_and_view_is_a_static_file(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(max_image_side=4096)
    record = recorded("large_output.json")
    _ws, (prompt_id,) = await run_recorded(session, sim, "large_output.json")
    _, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
    (item,) = history[prompt_id]["outputs"]["3"]["images"]
    params = {k: item[k] for k in ("filename", "subfolder", "type")}
    real_views = [h for h in record["http"] if h["path"] == "/view"]
    real_size = int(real_views[0]["response_headers"]["Content-Length"])
    async with session.head(f"{sim.url}/view", params=params) as head:
        assert head.status == 200 and head.headers["Accept-Ranges"] == "bytes"
        size = int(head.headers["Content-Length"])
        etag = head.headers["Etag"]
    assert 0.9 * real_size < size < 1.8 * real_size  # noise: no longer a flat-colour file
    async with session.get(
        f"{sim.url}/view", params=params, headers={"Range": "bytes=0-99"}
    ) as ranged:
        assert ranged.status == 206
        assert ranged.headers["Content-Range"] == f"bytes 0-99/{size}"
        assert len(await ranged.read()) == 100
    async with session.get(
        f"{sim.url}/view", params=params, headers={"If-None-Match": etag}
    ) as cached:
        assert cached.status == 304


async def test_save_image_websocket_sends_whole_images(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    for name, flags in (
        ("save_image_websocket.json", False),
        ("save_image_websocket_metadata_flag.json", True),
    ):
        ws, (prompt_id,) = await run_recorded(session, sim, name, flags)
        assert summarise(ws.frames) == unfold(sequences()[f"{name}:ws"])
        assert_same_shapes(ws, recorded(name)["ws"])
        images = [f["decoded"] for f in ws.frames if f["kind"] == "binary"]
        assert len(images) == 8
        real_frame = (RECORDED / name.replace(".json", "_frame15.bin")).read_bytes()
        for decoded in images:
            width, height, pixels, _ = decode_png(decoded["image"])
            assert (width, height) == (128, 128)
            # Noise, like the real 39 KB frame: not a flat colour.
            assert len(decoded["image"]) > len(real_frame) // 2
            assert len(set(pixels)) > 16
            if flags:
                assert decoded["metadata"]["node_id"] == "3"
                assert decoded["metadata"]["prompt_id"] == prompt_id
        _, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
        assert history[prompt_id]["outputs"] == {} and history[prompt_id]["meta"] == {}
        assert history[prompt_id]["status"]["status_str"] == "success"


async def _upload(
    session: aiohttp.ClientSession,
    url: str,
    form: dict[str, Any],
    field: str = "image",
    route: str = "/upload/image",
) -> tuple[int, Any]:
    data = aiohttp.FormData()
    for key, value in form.items():
        if isinstance(value, tuple):
            filename, content, content_type = value
            data.add_field(field, content, filename=filename, content_type=content_type)
        else:
            data.add_field(key, value)
    async with session.post(url + route, data=data) as response:
        body = await response.read()
        return response.status, (json.loads(body) if body else None)


async def test_uploads_match_recording(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    """Each POST /upload/* of the recording, in order, with the recorded bytes' sizes and
    hashes: the same status and answer (renames, identical bytes kept once, escapes refused)."""
    record = recorded("upload_image.json")
    png = (RECORDED / "upload_image_in.png").read_bytes()
    width, height, _, _ = decode_png(png)
    # The uploaded mask was not kept (only the merged result): one of the same size.
    mask = encode_png(
        width,
        height,
        bytes(width * height * 3),
        alpha=bytes(i % 256 for i in range(width * height)),
    )
    variants = {hashlib.sha256(png).hexdigest(): png, MASK_SHA256: mask}
    for exchange in record["http"]:
        if not exchange["path"].startswith("/upload/"):
            continue
        form: dict[str, Any] = {}
        field = "image"
        for key, value in exchange["request_form"].items():
            if isinstance(value, dict):
                field = key
                content = variants.get(value["sha256"])
                if content is None:  # another file of that size: same size, other bytes
                    content = variants.setdefault(value["sha256"], _other_bytes(value))
                form["file"] = (value["filename"], content, value["content_type"])
            else:
                form[key] = value
        status, answer = await _upload(session, sim.url, form, field, exchange["path"])
        assert status == exchange["status"], exchange["request_form"]
        assert answer == exchange.get("response_json"), exchange["request_form"]
    # The mask merged into the original: its RGB, the mask's alpha.
    data = await view(session, sim, {"filename": "clipspace-mask-1.png", "subfolder": "clipspace",
                                     "type": "input"})  # fmt: skip
    width, height, rgb, alpha = decode_png(data)
    # The original at that point: in.png as overwritten ("overwrite": "1") before the mask.
    in_png = decode_png(await view(session, sim, {"filename": "in.png", "subfolder": "wgpu/job123",
                                                  "type": "input"}))  # fmt: skip
    assert (width, height, rgb) == in_png[:3]
    assert alpha == decode_png(mask)[3]
    _, info = await get_json(session, f"{sim.url}/object_info/LoadImage")
    real_info = next(
        h["response_json"] for h in record["http"] if h["path"] == "/object_info/LoadImage"
    )
    assert info == real_info  # lists top-level input files only


def _other_bytes(described: dict[str, Any]) -> bytes:
    """Distinct bytes for a recorded upload whose content was not kept (a PNG for a PNG)."""
    seed = bytes.fromhex(described["sha256"])
    if described["content_type"] == "image/png":
        return encode_png(32, 24, (seed * 72)[: 32 * 24 * 3])
    return (seed * (described["bytes"] // len(seed) + 1))[: described["bytes"]]


async def test_load_image_inverts_pixels_like_stock(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    record = recorded("upload_image.json")
    png = (RECORDED / "upload_image_in.png").read_bytes()
    form = {"file": ("in.png", png, "image/png"), "type": "input", "subfolder": "wgpu/job123"}
    assert (await _upload(session, sim.url, form))[0] == 200
    ws = await connect(session, sim, record["client_id"])
    posts = [h for h in record["http"] if h["method"] + h["path"] == "POST/prompt"]
    good = await submit(session, sim, posts[0]["request_json"])
    await ws.wait_done(good)
    # A stored non-image passes validation and fails at run time, as in the recording.
    text = {"file": ("notes.txt", b"hello, not an image\n", "text/plain")}
    form = {**text, "type": "input", "subfolder": "wgpu/job123", "overwrite": "true"}
    assert (await _upload(session, sim.url, form))[0] == 200
    bad = await submit(session, sim, posts[1]["request_json"])
    await ws.wait_done(bad)
    await ws.close()
    assert summarise(ws.frames) == sequences()["upload_image.json:ws"]
    assert_same_shapes(ws, record["ws"])
    _, history = await get_json(session, f"{sim.url}/history/{good}")
    (item,) = history[good]["outputs"]["3"]["images"]
    out = decode_png(await view(session, sim, item))
    real_out = decode_png((RECORDED / "upload_image_uploaded_00001_.png").read_bytes())
    assert out[:3] == real_out[:3]  # pixel by pixel, float32 rounding and all
    (error,) = ws.texts("execution_error")
    real_error = next(f["msg"] for f in record["ws"] if f["msg"]["type"] == "execution_error")
    for key in ("node_id", "node_type", "exception_type", "current_inputs"):
        assert error["data"][key] == real_error["data"][key], key
    assert error["data"]["exception_message"].startswith("cannot identify image file '")


async def test_load_image_missing_matches_recording(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    record = recorded("load_image_missing.json")
    ws = await connect(session, sim, record["client_id"])
    for exchange in record["http"]:
        if exchange["method"] + exchange["path"] != "POST/prompt":
            continue
        async with session.post(f"{sim.url}/prompt", json=exchange["request_json"]) as response:
            answer = await response.json()
        assert response.status == exchange["status"]
        if response.status == 400:
            assert answer == exchange["response_json"]
        else:
            await ws.wait_done(answer["prompt_id"])
    await ws.close()
    assert summarise(ws.frames) == sequences()["load_image_missing.json:ws"]
    (error,) = ws.texts("execution_error")
    assert error["data"]["exception_type"] == "IsADirectoryError"


async def test_partial_node_errors_run_only_the_valid_output(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    record = recorded("partial_node_errors.json")
    exchange = record["http"][0]
    ws = await connect(session, sim, record["client_id"])
    async with session.post(f"{sim.url}/prompt", json=exchange["request_json"]) as response:
        answer = await response.json()
    assert response.status == 200
    real = exchange["response_json"]["node_errors"]
    assert sorted(answer["node_errors"]) == sorted(real)
    for node_id, node_error in real.items():
        mine = answer["node_errors"][node_id]
        assert mine["class_type"] == node_error["class_type"]
        assert [e["type"] for e in mine["errors"]] == [e["type"] for e in node_error["errors"]]
        # Stock walks its outputs in set order, so later entries vary; the first never does.
        assert node_error["dependent_outputs"][0] in mine["dependent_outputs"]
    await ws.wait_done(answer["prompt_id"])
    await ws.close()
    assert summarise(ws.frames) == sequences()["partial_node_errors.json:ws"]
    _, history = await get_json(session, f"{sim.url}/history/{answer['prompt_id']}")
    assert history[answer["prompt_id"]]["prompt"][4] == ["2"]
    assert list(history[answer["prompt_id"]]["outputs"]) == ["2"]


async def test_interrupt_mid_node_stops_at_the_next_step(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(step_time_s=0.02)
    record = recorded("interrupt_mid_node.json")
    posts = [h["request_json"] for h in record["http"] if h["method"] + h["path"] == "POST/prompt"]
    ws = await connect(session, sim, record["client_id"])
    upscale = await submit(session, sim, posts[0])
    deleted = await submit(session, sim, posts[1])
    preview = await submit(session, sim, posts[2])
    async with session.post(f"{sim.url}/queue", json={"delete": [deleted]}) as response:
        assert response.status == 200
    await ws.wait_for(lambda r: any(m["data"]["value"] == 20 for m in r.texts("progress")))
    async with session.post(f"{sim.url}/interrupt", json={"prompt_id": upscale}) as response:
        assert response.status == 200
    seen_at_post = len(ws.texts("progress"))
    await ws.wait_done(preview)
    await ws.close()
    # At most the step already under way reports after the POST; then the interrupt.
    assert len(ws.texts("progress")) <= seen_at_post + 1
    (interrupted,) = ws.texts("execution_interrupted")
    real = record["execution_interrupted_frame"]["msg"]
    assert interrupted["data"]["node_id"] == real["data"]["node_id"] == "3"
    assert interrupted["data"]["node_type"] == real["data"]["node_type"]
    real_runs = without_status(unfold(sequences()["interrupt_mid_node.json:ws"]))
    mine = without_status(summarise(ws.frames))
    # The recording ran with the loader cached from an earlier prompt; here it runs.
    assert mine.split("execution_interrupted")[1] == real_runs.split("execution_interrupted")[1]
    _, history = await get_json(session, f"{sim.url}/history/{upscale}")
    assert history[upscale]["status"]["status_str"] == "error"
    assert history[upscale]["outputs"] == {}
    assert (await get_json(session, f"{sim.url}/history/{deleted}"))[1] == {}


async def test_busy_node_ignores_interrupts_until_it_ends(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {"class_type": "WgpuSimBusy", "inputs": {"seconds": 0.6}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    ws = await connect(session, sim, "busy")
    prompt_id = await submit(session, sim, {"prompt": prompt, "client_id": "busy"})
    await ws.wait_for(lambda r: any(m["data"]["node"] == "1" for m in r.texts("executing")))
    loop = asyncio.get_running_loop()
    posted = loop.time()
    async with session.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}):
        pass
    await ws.wait_done(prompt_id)
    waited = loop.time() - posted
    await ws.close()
    (interrupted,) = ws.texts("execution_interrupted")
    assert interrupted["data"]["node_id"] == "2"  # honoured at the next node boundary
    assert waited > 0.3  # the busy node was not cut short


async def test_blob_writes_exactly_n_bytes(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    size = 3 * (1 << 20) + 7
    prompt = {
        "1": {
            "class_type": "WgpuSimBlob",
            "inputs": {"size_bytes": size, "filename_prefix": "big/blob", "extension": "bin"},
        }
    }
    ws = await connect(session, sim, "blob")
    prompt_id = await submit(session, sim, {"prompt": prompt, "client_id": "blob"})
    await ws.wait_done(prompt_id)
    await ws.close()
    _, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
    (item,) = history[prompt_id]["outputs"]["1"]["images"]
    assert item == {"filename": "blob_00001_.bin", "subfolder": "big", "type": "output"}
    data = await view(session, sim, item)
    assert len(data) == size
    assert data[: 1 << 20] != data[1 << 20 : 2 << 20]  # not one block repeated verbatim
    assert shape(ws.texts("executed")[0]["data"]["output"]) == {
        "images": [{"filename": "str", "subfolder": "str", "type": "str"}]
    }
