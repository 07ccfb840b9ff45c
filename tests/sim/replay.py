"""Driving the simulator as the replay tests do: connect a client's socket, submit a recorded
prompt, wait for its run; and comparing JSON by shape (ids and times aside)."""

from __future__ import annotations

from typing import Any

import aiohttp

from comfyui_sim.server import RunningSim
from tests.fixtures.sim_traffic import WsRecorder, recorded


def shape(value: Any) -> Any:
    """The JSON structure without values: dict keys, list element shapes, scalar kinds."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def assert_same_shapes(sim_ws: WsRecorder, real_frames: list[dict[str, Any]]) -> None:
    real = [f["msg"] for f in real_frames if f["kind"] == "text"]
    for sim_msg, real_msg in zip(sim_ws.texts(), real, strict=True):
        assert shape(sim_msg) == shape(real_msg), (sim_msg, real_msg)


def without_status(summary: str) -> str:
    return " -> ".join(p for p in summary.split(" -> ") if not p.startswith("status("))


async def connect(
    session: aiohttp.ClientSession, sim: RunningSim, client_id: str | None, flags: bool = False
) -> WsRecorder:
    query = f"?clientId={client_id}" if client_id else ""
    recorder = WsRecorder(await session.ws_connect(f"{sim.url}/ws{query}"))
    if flags:
        await recorder.ws.send_json(
            {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
        )
    recorder.start()
    await recorder.wait_count("feature_flags" if flags else "status", 1)
    return recorder


async def submit(session: aiohttp.ClientSession, sim: RunningSim, body: dict[str, Any]) -> str:
    async with session.post(f"{sim.url}/prompt", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
        return str(answer["prompt_id"])


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def run_recorded(
    session: aiohttp.ClientSession, sim: RunningSim, name: str, flags: bool = False
) -> tuple[WsRecorder, list[str]]:
    """Submit every POST /prompt of a recording on its client's socket; wait for each run."""
    record = recorded(name)
    ws = await connect(session, sim, record["client_id"], flags)
    prompt_ids = []
    for exchange in record["http"]:
        if exchange["method"] == "POST" and exchange["path"] == "/prompt":
            prompt_id = await submit(session, sim, exchange["request_json"])
            await ws.wait_done(prompt_id)
            prompt_ids.append(prompt_id)
    await ws.close()
    return ws, prompt_ids
