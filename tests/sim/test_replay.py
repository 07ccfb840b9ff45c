"""Replays the recorded real ComfyUI traffic against the simulator: same WebSocket order, same
HTTP statuses and JSON shapes (ids and times aside)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from comfyui_sim.png import png_size
from comfyui_sim.server import RunningSim
from tests.fixtures.sim import SimFactory
from tests.fixtures.sim_traffic import (
    RECORDED,
    WORKFLOWS,
    png_pixels,
    recorded,
    sequences,
    summarise,
)
from tests.sim.replay import (
    assert_same_shapes,
    connect,
    get_json,
    run_recorded,
    shape,
    submit,
    without_status,
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def assert_history_shape(
    session: aiohttp.ClientSession, sim: RunningSim, prompt_id: str, exchange: dict[str, Any]
) -> dict[str, Any]:
    status, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
    assert status == exchange["status"]
    expected = next(iter(exchange["response_json"].values()))
    assert shape(history[prompt_id]) == shape(expected)
    entry: dict[str, Any] = history[prompt_id]
    return entry


@pytest.mark.parametrize("name", ["success_quick.json", "success_slow.json", "observed_quick.json"])
async def test_success_matches_recording(
    sim: RunningSim, session: aiohttp.ClientSession, name: str
) -> None:
    ws, (prompt_id,) = await run_recorded(session, sim, name)
    assert summarise(ws.frames) == sequences()[f"{name}:ws"]

    record = recorded(name)
    assert_same_shapes(ws, record["ws"])
    history_exchange = next(h for h in record["http"] if h["path"].startswith("/history/"))
    entry = await assert_history_shape(session, sim, prompt_id, history_exchange)
    expected_entry = next(iter(history_exchange["response_json"].values()))
    assert entry["prompt"][2] == expected_entry["prompt"][2]
    assert entry["prompt"][4] == expected_entry["prompt"][4]
    assert entry["meta"] == expected_entry["meta"]

    (image,) = next(iter(entry["outputs"].values()))["images"]
    real_image = next(iter(expected_entry["outputs"].values()))["images"][0]
    assert image["subfolder"] == real_image["subfolder"] and image["type"] == "output"
    assert image["filename"].startswith(real_image["filename"].rsplit("_", 2)[0] + "_")
    params = {k: image[k] for k in ("filename", "subfolder", "type")}
    async with session.get(f"{sim.url}/view", params=params) as response:
        assert response.status == 200
        assert response.content_type == "image/png"
        data = await response.read()
    width, height, _ = png_pixels(data)
    real_png = (record["images"][0]["saved_to"]).rsplit("/", 1)[1]
    assert (width, height) == png_size((RECORDED / real_png).read_bytes())


async def test_cached_resubmit_replays_the_same_file(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    ws, (first, second) = await run_recorded(session, sim, "cached_resubmit.json")
    assert summarise(ws.frames) == sequences()["cached_resubmit.json:ws"]
    assert_same_shapes(ws, recorded("cached_resubmit.json")["ws"])
    _, one = await get_json(session, f"{sim.url}/history/{first}")
    _, two = await get_json(session, f"{sim.url}/history/{second}")
    assert one[first]["outputs"] == two[second]["outputs"]
    files = list(sim.output_dir.rglob("*.png"))
    assert len(files) == 1, files


async def test_execution_error_matches_recording(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    ws, (prompt_id,) = await run_recorded(session, sim, "execution_error.json")
    # The recording began with another prompt still queued, so only queue counts differ.
    real = sequences()["execution_error.json:ws"]
    assert without_status(summarise(ws.frames)) == without_status(real)
    record = recorded("execution_error.json")
    (sim_error,) = ws.texts("execution_error")
    real_error = next(f["msg"] for f in record["ws"] if f["msg"]["type"] == "execution_error")
    assert shape(sim_error) == shape(real_error)
    for key in ("node_id", "node_type", "executed", "exception_message", "exception_type"):
        assert sim_error["data"][key] == real_error["data"][key], key
    assert sorted(sim_error["data"]["current_outputs"]) == sorted(
        real_error["data"]["current_outputs"]
    )
    entry = await assert_history_shape(session, sim, prompt_id, record["http"][1])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_error",
    ]


@pytest.mark.parametrize(
    ("name", "flags"), [("binary_legacy.json", False), ("binary_with_metadata_flag.json", True)]
)
async def test_binary_frames_match_recording(
    sim: RunningSim, session: aiohttp.ClientSession, name: str, flags: bool
) -> None:
    ws, (prompt_id,) = await run_recorded(session, sim, name, flags)
    assert summarise(ws.frames) == sequences()[f"{name}:ws"]
    assert_same_shapes(ws, recorded(name)["ws"])
    binaries = [f["decoded"] for f in ws.frames if f["kind"] == "binary"]
    assert binaries[0]["node_id"] == "2"
    assert binaries[0]["text"] == "width: 128, height: 96\n batch size: 2"
    for preview in binaries[1:]:
        assert png_pixels(preview["image"])[:2] == (96, 128)  # GetImageSize swapped w/h
        if flags:
            assert preview["metadata"]["prompt_id"] == prompt_id
            assert preview["metadata"]["image_type"] == "image/png"
        else:
            assert preview["image_format"] == "PNG"
    record = recorded(name)
    history_exchange = next(h for h in record["http"] if h["path"].startswith("/history/"))
    entry = await assert_history_shape(session, sim, prompt_id, history_exchange)
    temp_files = entry["outputs"]["5"]["images"]
    assert [f["type"] for f in temp_files] == ["temp", "temp"]
    for item in temp_files:
        async with session.get(f"{sim.url}/view", params=item) as response:
            assert response.status == 200
            assert png_pixels(await response.read())[:2] == (96, 128)


async def test_no_client_id_gets_only_broadcasts(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    record = recorded("no_client_id.json")
    other = await connect(session, sim, "someone-else")
    body = dict(record["http"][0]["request_json"])
    assert "client_id" not in body
    prompt_id = await submit(session, sim, body)
    await other.wait_for(lambda r: summarise(r.frames).endswith("status(q=0)"))
    await other.close()
    assert summarise(other.frames) == sequences()["no_client_id.json:other_client_ws"]
    assert_same_shapes(other, record["other_client_ws"])
    _, history = await get_json(session, f"{sim.url}/history/{prompt_id}")
    assert history[prompt_id]["prompt"][3] == {}


async def test_observers_see_status_only(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    observer = await connect(session, sim, "observer-1")
    anonymous = await connect(session, sim, None)
    assert anonymous.texts("status")[0]["data"]["sid"]  # a generated id
    runner = await connect(session, sim, "runner")
    body = json.loads((WORKFLOWS / "quick.json").read_text())
    prompt_id = await submit(session, sim, {"prompt": body, "client_id": "runner"})
    await runner.wait_done(prompt_id)
    for recorder, key in ((observer, "observer_ws"), (anonymous, "anonymous_ws")):
        await recorder.wait_for(lambda r: summarise(r.frames).endswith("status(q=0)"))
        await recorder.close()
        assert summarise(recorder.frames) == sequences()[f"observer.json:{key}"]
    await runner.close()


async def test_interrupt_and_queue_delete_match_recording(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(node_time_s=0.25)  # margin for the HTTP calls made during node 4
    record = recorded("interrupt.json")
    posts = [h["request_json"] for h in record["http"] if h["method"] + h["path"] == "POST/prompt"]
    ws = await connect(session, sim, record["client_id"])
    slow = await submit(session, sim, posts[0])
    deleted = await submit(session, sim, posts[1])
    quick = await submit(session, sim, posts[2])

    _, queue = await get_json(session, f"{sim.url}/queue")
    assert shape(queue) == shape(record["http"][3]["response_json"])
    assert [item[1] for item in queue["queue_pending"]] == [deleted, quick]
    assert (await get_json(session, f"{sim.url}/prompt"))[1] == {
        "exec_info": {"queue_remaining": 3}
    }

    await ws.wait_for(lambda r: any(m["data"]["node"] == "4" for m in r.texts("executing")))
    async with session.post(f"{sim.url}/queue", json={"delete": [deleted]}) as response:
        assert response.status == 200 and await response.read() == b""
    for prompt_id in (quick, slow):  # the first names a queued prompt: a no-op, as stock
        async with session.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}) as r:
            assert r.status == 200
    await ws.wait_done(quick)
    await ws.close()

    real = sequences()["interrupt.json:ws"]
    assert without_status(summarise(ws.frames)) == without_status(real)
    _, slow_history = await get_json(session, f"{sim.url}/history/{slow}")
    real_entry = next(iter(record["http"][9]["response_json"].values()))
    assert shape(slow_history[slow]) == shape(real_entry)
    assert slow_history[slow]["outputs"] == {}
    assert slow_history[slow]["status"]["status_str"] == "error"
    assert (await get_json(session, f"{sim.url}/history/{deleted}"))[1] == {}
    _, quick_history = await get_json(session, f"{sim.url}/history/{quick}")
    assert quick_history[quick]["status"]["status_str"] == "success"
    assert (await get_json(session, f"{sim.url}/queue"))[1] == {
        "queue_running": [],
        "queue_pending": [],
    }
