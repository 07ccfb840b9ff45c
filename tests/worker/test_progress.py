"""Progress that tells the truth: a sampler's steps move the figure smoothly, every update says
which node class runs, and the last update before `done` is 100 %."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import SimFactory
from tests.worker.harness import HubClient, running_worker, worker_config


def txt2img(steps: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        },
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 1,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t"}},
    }


async def test_sampler_steps_move_the_bar_and_it_ends_at_100(
    hub_factory: HubFactory, sim_factory: SimFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    hub = await hub_factory()
    sim = await sim_factory(step_time_s=0.03)
    client = HubClient(http, hub.url)
    async with running_worker(worker_config(hub.url, sim.url, tmp_path)):
        job_id = await client.submit(txt2img(25))
        events = await client.events(job_id)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and events[-1][1]["status"] == "succeeded"
    progress = [data for kind, data in events if kind == "progress"]
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents)
    # The last word before the result is 100 %, never a throttled 60-80 %.
    last_progress = max(i for i, kind in enumerate(kinds) if kind == "progress")
    assert percents[-1] == 100.0 and kinds.index("done") > last_progress
    # The sampler's 25 steps weigh 25 of the 31 units: many distinct values inside it.
    in_sampler = [p for p in progress if p["node_class"] == "KSampler"]
    assert len({p["percent"] for p in in_sampler}) >= 8, progress
    assert all(p.keys() == {"node", "node_class", "value", "max", "percent"} for p in progress)
    assert progress[-1]["max"] == 31.0
