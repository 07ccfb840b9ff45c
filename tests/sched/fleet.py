"""The scheduling tests' fleet: a real hub's workers (in process), one per ComfyUI simulator,
started and settled; and the statuses a scheduled job can end in."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from comfyui_sim.server import RunningSim
from redis_api.server import RunningHub
from tests.polling import eventually
from tests.worker.harness import HubClient, running_worker, worker_config

ENDED = {"succeeded", "failed", "cancelled", "timed_out", "dead", "unschedulable", "expired"}

SETTLE_S = 15.0  # workers and the scheduler settle within this under a loaded machine


@contextlib.asynccontextmanager
async def fleet(
    hub: RunningHub,
    sims: Sequence[RunningSim],
    tmp_path: Path,
    api_key: str | None = None,
    busy_ok: bool = False,
    **overrides: Any,
) -> AsyncIterator[None]:
    """One worker per simulator, GPU ids 0..N-1 on machine `m`, all connected and ready
    (`api_key`: the key that reads /workers on a hub with API_KEYS; `busy_ok`: a queue was
    waiting, so ready workers are busy at once)."""
    ready = {"idle", "busy"} if busy_ok else {"idle"}
    async with contextlib.AsyncExitStack() as stack:
        for index, sim in enumerate(sims):
            config = worker_config(
                hub.url,
                sim.url,
                tmp_path / f"w{index}",
                machine_id="m",
                gpu_id=index,
                num_gpus=len(sims),
                **overrides,
            )
            (tmp_path / f"w{index}").mkdir(exist_ok=True)
            await stack.enter_async_context(running_worker(config))
        headers = {"X-API-Key": api_key} if api_key else {}
        async with aiohttp.ClientSession(headers=headers) as http:
            client = HubClient(http, hub.url)
            await eventually(
                client.workers,
                lambda ws: (
                    len(ws) == len(sims)
                    and all(w["status"] in ready and w["models"] is not None for w in ws)
                ),
                SETTLE_S,
            )
        yield
