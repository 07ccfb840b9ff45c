"""The simulator's other routes against the recorded misc_http traffic, plus /view's rules,
queue and history control, file naming and the PNG files themselves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from comfyui_sim.media_nodes import INVERT_TABLE
from comfyui_sim.png import make_png
from comfyui_sim.server import RunningSim
from tests.fixtures.sim import SimProcessFactory
from tests.fixtures.sim_traffic import (
    WORKFLOWS,
    WsRecorder,
    png_chunks,
    png_pixels,
    poll_history,
    recorded,
)

MISC = {h["path"]: h for h in recorded("misc_http.json")["http"]}
QUICK: dict[str, Any] = json.loads((WORKFLOWS / "quick.json").read_text())


def quick(color: int) -> dict[str, Any]:
    prompt: dict[str, Any] = json.loads(json.dumps(QUICK))
    prompt["1"]["inputs"]["color"] = color
    return prompt


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, json=body) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_object_info_matches_stock(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    for path in ("/object_info/EmptyImage", "/object_info/NoSuchNode"):
        status, body = await get(session, sim.url + path)
        assert (status, body) == (200, MISC[path]["response_json"])
    for name in ("SaveImage", "ImageBlur"):
        _, body = await get(session, f"{sim.url}/object_info/{name}")
        real = MISC[f"/object_info/{name}"]["response_json"][name]
        for key in ("input_order", "output", "output_node", "category", "python_module"):
            assert body[name][key] == real[key], (name, key)
        assert body[name]["input"]["required"].keys() == real["input"]["required"].keys()
    _, everything = await get(session, f"{sim.url}/api/object_info")
    workflow_classes = {
        node["class_type"]
        for path in WORKFLOWS.glob("*.json")
        for node in json.loads(path.read_text()).values()
    }
    assert workflow_classes - {"NoSuchNodeType"} <= everything.keys()
    assert {"WgpuSimFault", "WgpuSimSleep", "KSampler"} <= everything.keys()


async def test_info_routes_match_stock_shapes(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    _, stats = await get(session, f"{sim.url}/system_stats")
    real = MISC["/system_stats"]["response_json"]
    assert real["system"].keys() <= stats["system"].keys()
    (device,) = stats["devices"]
    assert device.keys() == real["devices"][0].keys() and device["index"] == 0
    assert await get(session, f"{sim.url}/features") == (200, MISC["/features"]["response_json"])
    assert await get(session, f"{sim.url}/prompt") == (200, {"exec_info": {"queue_remaining": 0}})
    assert await get(session, f"{sim.url}/history/not-a-real-id") == (200, {})
    assert await post(session, f"{sim.url}/free", {"unload_models": True}) == (200, None)
    assert await post(session, f"{sim.url}/interrupt", None) == (200, None)  # idle: no-op
    assert await post(session, f"{sim.url}/queue", {"clear": True}) == (200, None)
    assert await get(session, f"{sim.url}/queue") == (200, MISC["/queue"]["response_json"])


async def test_view_rules(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    (sim.output_dir / "sub").mkdir()
    (sim.output_dir / "sub" / "a.png").write_bytes(make_png(2, 2, (1, 2, 3)))
    cases = [
        ({"filename": "a.png", "subfolder": "sub", "type": "output"}, 200),
        ({"filename": "a.png [output]", "subfolder": "sub"}, 200),
        ({"filename": "missing.png", "type": "output"}, 404),
        ({}, 404),
        ({"filename": "../a.png", "subfolder": "sub"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "a.png", "type": "nonsense"}, 400),
        ({"filename": "passwd", "subfolder": "../../../../etc"}, 403),
    ]
    for params, expected in cases:
        async with session.get(f"{sim.url}/view", params=params) as response:
            assert response.status == expected, params


async def test_save_counters_history_and_pngs(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    ws = WsRecorder(await session.ws_connect(f"{sim.url}/ws?clientId=c1"))
    ws.start()
    ids = []
    for color in (0x102030, 0x405060):
        status, answer = await post(
            session, f"{sim.url}/prompt", {"prompt": quick(color), "client_id": "c1"}
        )
        assert status == 200 and answer["node_errors"] == {}
        ids.append(answer["prompt_id"])
    await ws.wait_done(ids[1])
    await ws.close()
    names = []
    for prompt_id, color in zip(ids, (0x102030, 0x405060), strict=True):
        entry = await poll_history(session, sim.url, prompt_id)
        (image,) = entry["outputs"]["5"]["images"]
        names.append(image["filename"])
        async with session.get(f"{sim.url}/api/view", params=image) as response:
            data = await response.read()
        width, height, raw = png_pixels(data)
        assert (width, height) == (1024, 1024)
        inverted = color.to_bytes(3, "big").translate(INVERT_TABLE)  # ImageInvert ran
        assert raw[1:4] == inverted
        assert any(kind == b"tEXt" for kind, _ in png_chunks(data))
    assert names == ["quick_00001_.png", "quick_00002_.png"]
    _, all_history = await get(session, f"{sim.url}/history")
    assert list(all_history) == ids
    _, last = await get(session, f"{sim.url}/history?max_items=1")
    assert list(last) == ids[1:]
    assert await post(session, f"{sim.url}/history", {"delete": [ids[0]]}) == (200, None)
    assert list((await get(session, f"{sim.url}/history"))[1]) == ids[1:]
    assert await post(session, f"{sim.url}/api/history", {"clear": True}) == (200, None)
    assert (await get(session, f"{sim.url}/history"))[1] == {}


async def test_queue_order_front_and_chosen_ids(
    sim_factory: Any, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory()
    hang = {"1": {"class_type": "WgpuSimFault", "inputs": {"mode": "hang"}}}
    status, first = await post(session, f"{sim.url}/prompt", {"prompt": hang, "prompt_id": "h"})
    assert status == 200 and first["prompt_id"] == "h"
    _, back = await post(session, f"{sim.url}/prompt", {"prompt": quick(1)})
    _, front = await post(session, f"{sim.url}/prompt", {"prompt": quick(2), "front": True})
    _, queue = await get(session, f"{sim.url}/queue")
    assert [item[1] for item in queue["queue_running"]] == ["h"]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], back["prompt_id"]]
    assert await post(session, f"{sim.url}/interrupt", {"prompt_id": "h"}) == (200, None)
    entry = await poll_history(session, sim.url, back["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    interrupted = await poll_history(session, sim.url, "h")
    assert interrupted["status"]["messages"][-1][0] == "execution_interrupted"
    # A stale global interrupt (nothing running) does not hit the next prompt.
    assert await post(session, f"{sim.url}/interrupt", {}) == (200, None)
    _, again = await post(session, f"{sim.url}/prompt", {"prompt": quick(3), "prompt_id": "h"})
    assert again["prompt_id"] == "h"
    deadline = time.monotonic() + 10
    while (await get(session, f"{sim.url}/prompt"))[1]["exec_info"]["queue_remaining"]:
        assert time.monotonic() < deadline, "queue never drained"
        await asyncio.sleep(0.01)
    entry = await poll_history(session, sim.url, "h")
    assert entry["status"]["status_str"] == "success"  # a reused id overwrites its history


async def test_partially_valid_prompt_runs_valid_outputs(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    case = recorded("validation_errors.json")["cases"]["partially_valid_accepted"]
    status, answer = await post(session, f"{sim.url}/prompt", {"prompt": case})
    assert status == 200 and list(answer["node_errors"]) == ["10"]
    entry = await poll_history(session, sim.url, answer["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    assert sorted(entry["outputs"]) == ["5", "9"]
    assert entry["outputs"]["9"]["images"][0]["filename"] == "123_00001_.png"


async def test_sampler_reports_progress_steps(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        },
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
        },
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 7,
                "steps": 4,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "sd"}},
    }
    ws = WsRecorder(await session.ws_connect(f"{sim.url}/ws?clientId=c1"))
    ws.start()
    _, answer = await post(session, f"{sim.url}/prompt", {"prompt": prompt, "client_id": "c1"})
    await ws.wait_done(answer["prompt_id"])
    await ws.close()
    steps = [(m["data"]["value"], m["data"]["max"]) for m in ws.texts("progress")]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {m["data"]["node"] for m in ws.texts("progress")} == {"4"}


async def test_process_fixture_and_cli(sim_process_factory: SimProcessFactory) -> None:
    proc = await sim_process_factory(node_time_s=0.0)
    async with aiohttp.ClientSession() as session:
        status, stats = await get(session, f"{proc.url}/system_stats")
    assert status == 200 and "--node-time" in stats["system"]["argv"]
    proc.terminate()
    assert proc.process is not None and proc.process.returncode == 0

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["sim", "--help"])
    assert result.exit_code == 0 and "--node-time" in result.output


async def test_partial_cache_reruns_only_changed_nodes(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    ws = WsRecorder(await session.ws_connect(f"{sim.url}/ws?clientId=c1"))
    ws.start()
    first = quick(0xABCDEF)
    second = quick(0xABCDEF)
    second["5"]["inputs"]["filename_prefix"] = "other/run"
    ids = []
    for prompt in (first, second):
        _, answer = await post(session, f"{sim.url}/prompt", {"prompt": prompt, "client_id": "c1"})
        await ws.wait_done(answer["prompt_id"])
        ids.append(answer["prompt_id"])
    await ws.close()
    cached = [m["data"]["nodes"] for m in ws.texts("execution_cached")]
    assert cached == [[], ["1", "2", "3", "4"]]
    second_run = [m for m in ws.texts("executing") if m["data"]["prompt_id"] == ids[1]]
    assert [m["data"]["node"] for m in second_run] == ["5", None]
    entry = await poll_history(session, sim.url, ids[1])
    assert entry["outputs"]["5"]["images"] == [
        {"filename": "run_00001_.png", "subfolder": "other", "type": "output"}
    ]
    width, height, raw = png_pixels((sim.output_dir / "other" / "run_00001_.png").read_bytes())
    inverted = bytes([0xAB, 0xCD, 0xEF]).translate(INVERT_TABLE)
    assert (width, height, raw[1:4]) == (1024, 1024, inverted)


async def test_cache_none_reruns_everything(
    sim_factory: Any, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(cache_enabled=False)
    ids = []
    for _ in range(2):
        _, answer = await post(session, f"{sim.url}/prompt", {"prompt": quick(5)})
        ids.append(answer["prompt_id"])
    names = []
    for prompt_id in ids:
        entry = await poll_history(session, sim.url, prompt_id)
        assert entry["status"]["messages"][1][1]["nodes"] == []
        names.append(entry["outputs"]["5"]["images"][0]["filename"])
    assert names == ["quick_00001_.png", "quick_00002_.png"]
