"""Relay overhead: one job through hub + worker + simulator against the same workflow POSTed
straight to the simulator. Each path waits for the end of the job the way a client would: the
simulator's WebSocket `executing` with node null (the socket open beforehand); the hub's SSE
`done` event (POST /jobs, then GET /jobs/{id}/events: the overhead the goal is judged on); and,
as a second hub row, `POST /jobs?wait=` (one request that answers with the finished job).

`python -m bench.relay [--quick] [--samples N]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import procs
from bench.hub_system import HubProcess, wait_workers
from bench.report import Table, emit
from bench.stats import latency_summary_ms, percentile
from orchestrator.stack.local_redis import free_port

# /work/shared/comfyui/workflows/quick.json: stock nodes, no model weights.
WORKFLOW: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16744448},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {
        "class_type": "SaveImage",
        "inputs": {"images": ["2", 0], "filename_prefix": "bench/relay"},
    },
}


async def direct_once(session: aiohttp.ClientSession, sim_url: str) -> float:
    client_id = uuid.uuid4().hex
    ws_url = sim_url.replace("http://", "ws://") + f"/ws?clientId={client_id}"
    async with session.ws_connect(ws_url) as ws:
        t0 = time.perf_counter()
        async with session.post(
            sim_url + "/prompt", json={"prompt": WORKFLOW, "client_id": client_id}
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"simulator refused the prompt: {body}")
        prompt_id = body["prompt_id"]
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if event.get("type") == "executing" and data.get("node") is None:
                return time.perf_counter() - t0
            if event.get("type") == "execution_error":
                raise RuntimeError(f"simulator failed the prompt: {data}")
    raise RuntimeError("simulator socket closed before the prompt finished")


async def hub_once(
    session: aiohttp.ClientSession, hub_url: str, workflow: dict[str, Any] | None = None
) -> float:
    """Submit `workflow` (default: WORKFLOW) and follow its SSE stream to `done`: seconds."""
    t0 = time.perf_counter()
    body = {"workflow": workflow or WORKFLOW}
    async with session.post(hub_url + "/jobs", json=body) as resp:
        job = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"hub refused the job: {job}")
    async with session.get(f"{hub_url}/jobs/{job['id']}/events") as resp:
        event = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "done":
                elapsed = time.perf_counter() - t0
                final = json.loads(line.split(":", 1)[1])
                if final.get("status") != "succeeded":
                    raise RuntimeError(f"job ended {final.get('status')}: {final.get('error')}")
                return elapsed
    raise RuntimeError("event stream ended before the job was done")


async def wait_once(session: aiohttp.ClientSession, hub_url: str) -> float:
    """Submit WORKFLOW with `?wait=` and read the finished job from the answer: seconds."""
    t0 = time.perf_counter()
    async with session.post(hub_url + "/jobs?wait=60", json={"workflow": WORKFLOW}) as resp:
        job = await resp.json()
    elapsed = time.perf_counter() - t0
    if resp.status != 200 or job.get("status") != "succeeded":
        raise RuntimeError(f"hub answered {resp.status}: {job}")
    return elapsed


async def measure(hub_url: str, sim_url: str, samples: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        await wait_workers(session, hub_url, 1, 60)
        for _ in range(3):  # warm every path
            await direct_once(session, sim_url)
            await hub_once(session, hub_url)
            await wait_once(session, hub_url)
        direct, via_hub, via_wait = [], [], []
        for _ in range(samples):  # interleaved, so drift hits all alike
            direct.append(await direct_once(session, sim_url))
            via_hub.append(await hub_once(session, hub_url))
            via_wait.append(await wait_once(session, hub_url))
    return {"direct": direct, "via_hub": via_hub, "via_wait": via_wait}


@dataclass
class RelayStack:
    """Redis, the hub, one real worker (comfy_worker) and the simulator, each its own process."""

    redis_url: str
    redis_pid: int
    hub: HubProcess
    sim_url: str
    sim: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]


@contextlib.contextmanager
def relay_stack(
    tmp: Path, sim_args: tuple[str, ...] = (), worker_settings: dict[str, str] | None = None
) -> Iterator[RelayStack]:
    """The whole relay path on loopback; on failure the parts' logs are printed."""
    with procs.local_redis(tmp / "redis") as server:
        sim_port = free_port()
        sim: subprocess.Popen[bytes] | None = None
        worker: subprocess.Popen[bytes] | None = None
        hub = HubProcess(server.url, tmp / "logs", outputs_dir=str(tmp / "outputs"))
        client = redis.Redis.from_url(server.url)
        try:
            sim_cmd = ("--port", str(sim_port), "--host", "127.0.0.1", "--node-time", "0")
            sim = procs.spawn(
                procs.module_cmd("comfyui_sim", *sim_cmd, *sim_args), tmp / "logs" / "sim.log"
            )
            sim_url = f"http://127.0.0.1:{sim_port}"
            procs.wait_http(sim_url + "/system_stats", 30, sim)
            hub.start()
            worker_env = {
                "HUB_URL": hub.url.replace("http://", "ws://"),
                "COMFYUI_HOST": "127.0.0.1",
                "EXECUTION_SERVICE_PORT": str(sim_port),
                "MACHINE_ID": "relay",
                "GPU_ID": "0",
                "NUM_GPUS": "1",
                "LOG_LEVEL": "WARNING",
                "HEALTH_FILE": str(tmp / "health.json"),
                **(worker_settings or {}),
            }
            worker = procs.spawn(
                procs.module_cmd("comfy_worker"), tmp / "logs" / "worker.log", worker_env
            )
            redis_pid = int(client.info("server")["process_id"])
            yield RelayStack(server.url, redis_pid, hub, sim_url, sim, worker)
        except Exception:
            logs = "\n".join(
                f"--- {p.name}\n{p.read_text()[-1500:]}"
                for p in sorted((tmp / "logs").glob("*.log"))
            )
            print(logs, flush=True)
            raise
        finally:
            procs.stop(worker)
            hub.stop()
            procs.stop(sim)
            client.flushdb()
            client.close()


def run(quick: bool, samples: int | None = None) -> tuple[list[Table], dict[str, Any]]:
    n = samples or (30 if quick else 150)
    table = Table(
        "Relay overhead: one job, hub + worker + simulator vs straight to the simulator",
        ["path", "p50 ms", "p99 ms", "samples"],
    )
    raw: dict[str, Any] = {}
    with procs.scratch_dir() as tmp:
        try:
            with relay_stack(tmp) as stack:
                raw = asyncio.run(measure(stack.hub.url, stack.sim_url, n))
        except Exception as exc:
            table.notes.append(f"failed: {type(exc).__name__}: {exc}")
    if raw:
        d, h = latency_summary_ms(raw["direct"]), latency_summary_ms(raw["via_hub"])
        w = latency_summary_ms(raw["via_wait"])
        table.add("straight to the simulator", d["p50_ms"], d["p99_ms"], n)
        table.add("through hub + worker (SSE)", h["p50_ms"], h["p99_ms"], n)
        table.add("through hub + worker (POST ?wait=)", w["p50_ms"], w["p99_ms"], n)
        for label, key in (("SSE", "via_hub"), ("?wait=", "via_wait")):
            pairs = [b - a for a, b in zip(raw["direct"], raw[key], strict=True)]
            table.add(
                f"added, {label} (p50 / p99 of the difference)",
                percentile(pairs, 50) * 1000,
                percentile(pairs, 99) * 1000,
                n,
            )
        table.notes.append(
            "simulator --node-time 0, 3-node workflow with one 64x64 PNG output; the SSE"
            " client POSTs the job, then follows its events to done (the goal's figure); the"
            " ?wait= client makes one request"
        )
    return [table], raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int)
    args = parser.parse_args()
    tables, raw = run(args.quick, args.samples)
    emit("relay", tables, {"relay": raw})


if __name__ == "__main__":
    main()
