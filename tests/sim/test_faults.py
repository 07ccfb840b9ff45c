"""Failure injection: WgpuSimFault nodes and POST /wgpu-sim/faults, in-process and as a process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from comfyui_sim.server import RunningSim
from tests.fixtures.sim import SimFactory, SimProcessFactory
from tests.fixtures.sim_traffic import WORKFLOWS, WsRecorder, poll_history, summarise

QUICK: dict[str, Any] = json.loads((WORKFLOWS / "quick.json").read_text())


def with_fault(mode: str, after_s: float = 0.0) -> dict[str, Any]:
    prompt: dict[str, Any] = json.loads(json.dumps(QUICK))
    prompt["9"] = {
        "class_type": "WgpuSimFault",
        "inputs": {"mode": mode, "after_s": after_s, "image": ["4", 0]},
    }
    return prompt


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def listen(session: aiohttp.ClientSession, url: str, client_id: str) -> WsRecorder:
    recorder = WsRecorder(await session.ws_connect(f"{url}/ws?clientId={client_id}"))
    recorder.start()
    await recorder.wait_count("status", 1)
    return recorder


async def submit(
    session: aiohttp.ClientSession, url: str, prompt: dict[str, Any], client_id: str
) -> str:
    body = {"prompt": prompt, "client_id": client_id}
    async with session.post(f"{url}/prompt", json=body) as response:
        answer = await response.json()
        assert response.status == 200, answer
        return str(answer["prompt_id"])


async def history(session: aiohttp.ClientSession, url: str, prompt_id: str) -> dict[str, Any]:
    async with session.get(f"{url}/history/{prompt_id}") as response:
        data: dict[str, Any] = await response.json()
        return data


async def inject(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{url}/wgpu-sim/faults", json=body) as response:
        return response.status, await response.json()


async def test_fault_node_execution_error(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    ws = await listen(session, sim.url, "c1")
    prompt_id = await submit(session, sim.url, with_fault("execution_error"), "c1")
    await ws.wait_done(prompt_id)
    (error,) = ws.texts("execution_error")
    assert error["data"]["node_id"] == "9"
    assert error["data"]["node_type"] == "WgpuSimFault"
    assert error["data"]["exception_type"] == "RuntimeError"
    assert error["data"]["traceback"] and error["data"]["current_inputs"]["mode"] == [
        "execution_error"
    ]
    assert not ws.texts("execution_success")
    entry = (await history(session, sim.url, prompt_id))[prompt_id]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_error"


async def test_injected_oom_hits_next_prompt_only(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    status, answer = await inject(session, sim.url, {"next": "oom"})
    assert status == 200 and answer == {"pending": [{"mode": "oom", "after_s": 0.0}]}
    ws = await listen(session, sim.url, "c1")
    failed = await submit(session, sim.url, QUICK, "c1")
    await ws.wait_done(failed)
    (error,) = ws.texts("execution_error")
    assert error["data"]["exception_type"] == "torch.OutOfMemoryError"
    assert error["data"]["exception_message"].startswith("Allocation on device 0")
    assert "out of memory" in error["data"]["exception_message"]
    assert error["data"]["node_id"] == "1"
    succeeded = await submit(session, sim.url, QUICK, "c1")
    await ws.wait_done(succeeded)
    assert ws.texts("execution_success")[-1]["data"]["prompt_id"] == succeeded


async def test_hang_runs_until_interrupted(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    ws = await listen(session, sim.url, "c1")
    prompt_id = await submit(session, sim.url, with_fault("hang"), "c1")
    await ws.wait_for(lambda r: any(m["data"]["node"] == "9" for m in r.texts("executing")))
    async with session.get(f"{sim.url}/queue") as response:
        assert [item[1] for item in (await response.json())["queue_running"]] == [prompt_id]
    assert await history(session, sim.url, prompt_id) == {}
    async with session.post(f"{sim.url}/interrupt", json={"prompt_id": prompt_id}) as response:
        assert response.status == 200
    await ws.wait_done(prompt_id)
    assert summarise(ws.frames).endswith(
        "executing(9) -> execution_interrupted(node=9) -> status(q=0) -> executing(None)"
    )
    interrupted = ws.texts("execution_interrupted")[0]["data"]
    assert interrupted["executed"] == ["1", "2", "3", "4", "5"]


async def test_silent_ws_completes_without_frames(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    await inject(session, sim.url, {"next": "silent_ws"})
    ws = await listen(session, sim.url, "c1")
    silent = await submit(session, sim.url, QUICK, "c1")
    await ws.wait_count("execution_start", 1)
    # The run finishes and is recorded, though the socket hears nothing more of it.
    entry = await poll_history(session, sim.url, silent)
    assert entry["status"]["status_str"] == "success"
    after_start = len(ws.frames)
    loud = await submit(session, sim.url, QUICK, "c1")
    await ws.wait_done(loud)
    prompt_ids = {m["data"].get("prompt_id") for m in ws.texts()[after_start:]}
    assert silent not in prompt_ids
    assert summarise(ws.frames[:after_start]).endswith("status(q=1)x2 -> execution_start")


async def test_in_process_crash_stops_serving(
    sim_factory: SimFactory, session: aiohttp.ClientSession
) -> None:
    calls: list[str] = []
    sim = await sim_factory(crash_hook=lambda: calls.append("crash"))
    ws = await listen(session, sim.url, "c1")
    await submit(session, sim.url, with_fault("crash"), "c1")
    await ws.wait_for(lambda r: r.ws.closed)
    assert calls == ["crash"]
    assert sim.crashed
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{sim.url}/system_stats"):
            pass


async def test_process_crash_exits_and_restarts(
    sim_process_factory: SimProcessFactory, session: aiohttp.ClientSession
) -> None:
    proc = await sim_process_factory()
    await inject(session, proc.url, {"next": "crash", "after_s": 0.05})
    ws = await listen(session, proc.url, "c1")
    await submit(session, proc.url, QUICK, "c1")
    assert await proc.wait_exit() == 1
    await ws.wait_for(lambda r: r.ws.closed)
    await proc.restart()
    async with session.get(f"{proc.url}/history") as response:
        assert await response.json() == {}  # a restarted ComfyUI remembers nothing
    ws = await listen(session, proc.url, "c1")
    prompt_id = await submit(session, proc.url, QUICK, "c1")
    await ws.wait_done(prompt_id)
    assert ws.texts("execution_success")
    proc.terminate()
    assert proc.process is not None and proc.process.returncode == 0


async def test_fault_requests_are_validated(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    status, answer = await inject(session, sim.url, {"next": "explode"})
    assert status == 400 and "explode" in answer["error"]
    status, answer = await inject(session, sim.url, {"mode": "oom"})
    assert status == 400
    await inject(session, sim.url, {"next": "hang"})
    status, answer = await inject(session, sim.url, {"next": None})
    assert status == 200 and answer == {"pending": []}


async def test_interrupt_inside_progress_steps(
    sim: RunningSim, session: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {"class_type": "WgpuSimSleep", "inputs": {"seconds": 60.0, "steps": 6000}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    ws = await listen(session, sim.url, "c1")
    prompt_id = await submit(session, sim.url, prompt, "c1")
    await ws.wait_count("progress", 2)
    async with session.post(f"{sim.url}/interrupt") as response:  # global: hits the running one
        assert response.status == 200
    await ws.wait_done(prompt_id)
    interrupted = ws.texts("execution_interrupted")[0]["data"]
    assert (interrupted["node_id"], interrupted["node_type"]) == ("1", "WgpuSimSleep")
    assert interrupted["executed"] == []
    progress = [m["data"] for m in ws.texts("progress")]
    assert progress[0] == {"value": 1, "max": 6000, "prompt_id": prompt_id, "node": "1"}
    assert len(progress) < 6000


async def test_programmatic_injection(sim: RunningSim, session: aiohttp.ClientSession) -> None:
    sim.inject_fault("execution_error")
    ws = await listen(session, sim.url, "c1")
    prompt_id = await submit(session, sim.url, QUICK, "c1")
    await ws.wait_done(prompt_id)
    assert ws.texts("execution_error")[0]["data"]["node_type"] == "EmptyImage"
