"""The simulator's model inventory against the recordings (object_info_models*.json): listing
routes, loader COMBO lists, `value_not_in_list` for a file it lacks, the new-style loader failing
at run time, load cost, and a model added while it runs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from comfyui_sim.model_store import ModelStoreError, parse_models_option, parse_slot_models
from comfyui_sim.server import RunningSim
from tests.fixtures.sim import RECORDED_MODELS, SimFactory
from tests.fixtures.sim_traffic import recorded

LOADERS = ("CheckpointLoaderSimple", "LoraLoader", "UpscaleModelLoader", "VAELoader")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def prompt(session: aiohttp.ClientSession, sim: RunningSim, graph: dict[str, Any]) -> Any:
    async with session.post(f"{sim.url}/prompt", json={"prompt": graph}) as response:
        return response.status, await response.json()


def recorded_answers(name: str) -> dict[str, tuple[int, Any]]:
    return {h["path"]: (h["status"], h.get("response_json")) for h in recorded(name)["http"]}


def txt2img(ckpt: str, seed: int = 1) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph in API format."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": 2,
                "cfg": 8.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t"}},
    }


@pytest.mark.parametrize("name", ["object_info_models.json", "object_info_models_fresh.json"])
async def test_listing_routes_and_loader_lists_match_the_recording(
    sim_factory: SimFactory, session: aiohttp.ClientSession, name: str
) -> None:
    sim = await sim_factory(
        models={**RECORDED_MODELS, "checkpoints": ["rec_dummy_ckpt.safetensors"]}
    )
    real = recorded_answers(name)
    for path in (
        "/models",
        "/models/checkpoints",
        "/models/loras",
        "/models/upscale_models",
        "/models/vae",
        "/models/embeddings",
        "/models/no_such_folder",
        "/embeddings",
    ):
        assert await get(session, sim.url + path) == real[path], path
    for loader in LOADERS:
        status, info = await get(session, f"{sim.url}/object_info/{loader}")
        want = real[f"/object_info/{loader}"][1][loader]
        assert status == 200
        for key in ("input", "input_order", "output", "output_name", "name", "display_name"):
            assert info[loader][key] == want[key], (loader, key)


async def test_a_checkpoint_the_simulator_lacks_fails_validation_like_comfyui(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(models={"checkpoints": []})
    status, answer = await prompt(session, sim, txt2img("nope.safetensors"))
    assert status == 400
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = answer["node_errors"]["4"]["errors"]
    # The exact shape ComfyUI 0.3.64 answers (shared/comfyui/API.md).
    assert error == {
        "type": "value_not_in_list",
        "message": "Value not in list",
        "details": "ckpt_name: 'nope.safetensors' not in []",
        "extra_info": {
            "input_name": "ckpt_name",
            "input_config": [[], {"tooltip": "The name of the checkpoint (model) to load."}],
            "received_value": "nope.safetensors",
        },
    }


async def test_the_new_style_upscale_loader_fails_only_when_it_runs(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(models={"upscale_models": []})
    exchange = next(h for h in recorded("stepped_progress.json")["http"] if h["path"] == "/prompt")
    graph = exchange["request_json"]["prompt"]
    prompt_id = await run(session, sim, graph)  # accepted: 0.3.64 does not check this list
    _, history = await get(session, f"{sim.url}/history/{prompt_id}")
    messages = dict(history[prompt_id]["status"]["messages"])
    error = messages["execution_error"]
    assert error["exception_type"] == "FileNotFoundError"
    assert error["exception_message"] == (
        "Model in folder 'upscale_models' with filename 'wgpu_tiny_compact_x1.safetensors' "
        "not found."
    )
    assert error["node_type"] == "UpscaleModelLoader"


async def run(session: aiohttp.ClientSession, sim: RunningSim, graph: dict[str, Any]) -> str:
    async with session.ws_connect(f"{sim.url}/ws?clientId=t") as ws:
        async with session.post(
            f"{sim.url}/prompt", json={"prompt": graph, "client_id": "t"}
        ) as response:
            assert response.status == 200, await response.text()
            prompt_id = (await response.json())["prompt_id"]
        async for message in ws:
            data = json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else {}
            done = data.get("type") == "executing" and data["data"].get("node") is None
            if done and data["data"].get("prompt_id") == prompt_id:
                return str(prompt_id)
        raise AssertionError("the event socket closed before the prompt ended")


async def loads(session: aiohttp.ClientSession, sim: RunningSim) -> int:
    return int((await get(session, f"{sim.url}/wgpu-sim/models"))[1]["loads"])


@pytest.mark.parametrize(("vram_models", "expected"), [(1, 3), (2, 2)])
async def test_switching_checkpoints_costs_a_load_each_time_unless_it_is_still_loaded(
    sim_factory: SimFactory, session: aiohttp.ClientSession, vram_models: int, expected: int
) -> None:
    sim = await sim_factory(
        models={"checkpoints": ["a.safetensors", "b.safetensors"]}, vram_models=vram_models
    )
    for ckpt, seed in (("a.safetensors", 1), ("b.safetensors", 2), ("a.safetensors", 3)):
        await run(session, sim, txt2img(ckpt, seed))
    assert await loads(session, sim) == expected
    await run(session, sim, txt2img("a.safetensors", 4))  # same model again: no load
    assert await loads(session, sim) == expected


async def test_a_model_added_while_it_runs_is_listed_and_accepted(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    sim = await sim_factory(models={"checkpoints": ["a.safetensors"]})
    assert (await prompt(session, sim, txt2img("new.safetensors")))[0] == 400
    # Copied into the models folder, as one would with stock ComfyUI...
    (sim.server.executor.models.root / "checkpoints" / "new.safetensors").touch()
    assert (await get(session, f"{sim.url}/models/checkpoints"))[1] == [
        "a.safetensors",
        "new.safetensors",
    ]
    assert (await prompt(session, sim, txt2img("new.safetensors")))[0] == 200
    # ...or through the simulator's control route.
    async with session.post(
        f"{sim.url}/wgpu-sim/models", json={"add": {"loras": ["x.safetensors"]}}
    ) as response:
        assert (await response.json())["models"]["loras"] == ["x.safetensors"]
    async with session.post(f"{sim.url}/wgpu-sim/models", json={"add": {"nope": ["x"]}}) as bad:
        assert bad.status == 400


def test_models_options_parse() -> None:
    assert parse_models_option(
        ["checkpoints=a.safetensors,b.safetensors", "loras=x.safetensors"]
    ) == {
        "checkpoints": ["a.safetensors", "b.safetensors"],
        "loras": ["x.safetensors"],
    }
    assert parse_slot_models("0:checkpoints=a.safetensors;1:checkpoints=b.safetensors") == {
        0: ["checkpoints=a.safetensors"],
        1: ["checkpoints=b.safetensors"],
    }
    with pytest.raises(ModelStoreError, match="FOLDER"):
        parse_models_option(["ckpts=a"])
    with pytest.raises(ModelStoreError, match="SLOT"):
        parse_slot_models("x:checkpoints=a")
