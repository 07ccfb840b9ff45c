"""Model-aware scheduling: 4 simulated GPUs, 4 checkpoints, 400 txt2img jobs in random order,
model load 2 s, run 0.5 s; side by side in one run: (a) affinity on, (b) the same hub with affinity
off (FIFO), (c) round robin (job i pinned to GPU i mod 4). Then a heterogeneous fleet (each
checkpoint on 1 or 2 of the 4 GPUs): validation failures. Then head-of-line: a runnable job's
latency behind 100,000 jobs nobody can take, against behind none.

`python -m bench.sched [--quick] [--scale 0.5]`: every duration (load, run, affinity wait) is
multiplied by --scale (default 0.5: about 8 minutes); the ratios are what count. Per-job hub and
worker overhead does not scale, so a smaller scale understates affinity's gain.
Real hub on a local Redis, real workers and simulators, in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from comfy_worker import Worker, WorkerConfig

from bench import procs
from bench.report import Table, emit
from bench.stats import percentile
from comfyui_sim.server import RunningSim, SimConfig, start_sim
from redis_api.config import HubConfig
from redis_api.server import RunningHub, start_hub
from redis_api.store import JobSpec, Store
from wgpu_protocol import models

REPO = Path(__file__).resolve().parent.parent
TXT2IMG: dict[str, Any] = json.loads((REPO / "examples" / "txt2img.json").read_text())
CHECKPOINTS = [f"ckpt{i}.safetensors" for i in range(4)]
GPUS = 4
STEPS = 10
ENDED = {"succeeded", "failed", "cancelled", "timed_out", "dead", "unschedulable", "expired"}


def txt2img(ckpt: str, seed: int = 1, steps: int = 2) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph (examples/txt2img.json) naming `ckpt`; the
    scheduling tests use it too."""
    graph = copy.deepcopy(TXT2IMG)
    graph["4"]["inputs"]["ckpt_name"] = ckpt
    graph["3"]["inputs"].update(seed=seed, steps=steps)
    return graph


def job_graph(ckpt: str, seed: int) -> dict[str, Any]:
    return txt2img(ckpt, seed, STEPS)


@contextlib.asynccontextmanager
async def stack(
    redis_url: str,
    inventories: Sequence[list[str]],
    scale: float,
    base: Path,
    **hub_settings: Any,
) -> AsyncIterator[tuple[RunningHub, list[RunningSim]]]:
    """A hub (flushed Redis) and one simulator + worker per inventory."""
    store = Store.from_url(redis_url)
    await store.redis.flushdb()
    await store.close()
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "redis_url": redis_url,
        "outputs_dir": str(base / "outputs"),
        "affinity_wait_ms": max(1, int(1000 * scale)),
        "max_queued_jobs": 200_000,
    }
    settings.update(hub_settings)
    hub = await start_hub(HubConfig(**settings))
    sims: list[RunningSim] = []
    workers: list[tuple[Worker, asyncio.Task[None]]] = []
    try:
        for gpu, files in enumerate(inventories):
            sims.append(
                await start_sim(
                    SimConfig(
                        port=0,
                        base_dir=base / f"sim{gpu}",
                        node_time_s=0.0005,
                        # The sampler's steps make the run time; the loader costs the load.
                        step_time_s=0.5 * scale / STEPS,
                        load_time_s=2.0 * scale,
                        models={"checkpoints": files},
                        crash_exits=False,
                    )
                )
            )
            config = WorkerConfig(
                machine_id="bench",
                gpu_id=gpu,
                num_gpus=len(inventories),
                hub_url="ws" + hub.url.removeprefix("http"),
                comfyui_url=sims[-1].url,
                health_file=base / f"health{gpu}.json",
                comfyui_check_s=0.2,
                progress_interval_s=1.0,
            )
            worker = Worker(config)
            workers.append((worker, asyncio.create_task(worker.run())))
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"{hub.url}/workers") as response:
                    ws = (await response.json())["workers"]
                if len(ws) == len(inventories) and all(
                    w["status"] == "idle" and w["models"] is not None for w in ws
                ):
                    break
                await asyncio.sleep(0.05)
        yield hub, sims
    finally:
        for worker, _ in workers:
            worker.request_stop()
        await asyncio.gather(*(task for _, task in workers), return_exceptions=True)
        for sim in sims:
            await sim.close()
        await hub.close()


async def run_jobs(
    hub: RunningHub, sims: Sequence[RunningSim], order: Sequence[str], pin: bool
) -> dict[str, Any]:
    """Submit every job at once, wait for all; loads, makespan, queue waits, failures."""
    loads_before = sum(s.server.executor.models.loads for s in sims)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        ids = []
        for i, ckpt in enumerate(order):
            body: dict[str, Any] = {"workflow": job_graph(ckpt, i), "max_attempts": 1}
            if pin:
                body["constraints"] = {"gpu": i % GPUS}
            async with http.post(f"{hub.url}/jobs", json=body) as response:
                ids.append((await response.json())["id"])
        jobs: dict[str, Any] = {}
        while len(jobs) < len(ids):
            async with http.get(f"{hub.url}/jobs?limit=1000") as response:
                for job in (await response.json())["jobs"]:
                    if job["status"] in ENDED:
                        jobs[job["id"]] = job
            await asyncio.sleep(0.1)
        makespan = max(j["finished_at"] for j in jobs.values()) - min(
            j["created_at"] for j in jobs.values()
        )
        del started
    waits = [
        j["started_at"] - j["created_at"] for j in jobs.values() if j["started_at"] is not None
    ]
    failed = [j for j in jobs.values() if j["status"] != "succeeded"]
    validation = [
        j
        for j in jobs.values()
        for h in j["history"]
        if h["outcome"] == "failed" and (h.get("error") or {}).get("type") == "validation_error"
    ]
    return {
        "loads": sum(s.server.executor.models.loads for s in sims) - loads_before,
        "makespan_s": makespan,
        "p50_wait_s": percentile(waits, 50),
        "p99_wait_s": percentile(waits, 99),
        "failed": len(failed),
        "validation_failures": len(validation),
        "jobs": len(jobs),
    }


async def head_of_line(redis_url: str, base: Path, blockers: int, repeats: int) -> dict[str, Any]:
    """Latency of a runnable job (submit -> succeeded) behind `blockers` unrunnable ones, and
    behind none; medians of `repeats` alternated... runs per side."""
    results: dict[str, list[float]] = {"none": [], "blocked": []}
    constraints = {"machine_id": "offline-machine"}
    blocker = JobSpec(
        json.dumps(job_graph(CHECKPOINTS[0], 0)),
        0,
        600,
        1,
        constraints=constraints,
        requires={"checkpoints": [CHECKPOINTS[0]]},
        pool=models.pool_id({"checkpoints": [CHECKPOINTS[0]]}, constraints),
        schedule_timeout_s=3600,
    )
    enqueue_s = 0.0
    for side in ("none", "blocked"):
        async with stack(redis_url, [CHECKPOINTS[:1]], 0.01, base / side) as (hub, _sims):
            if side == "blocked":
                store = Store.from_url(redis_url)
                t0 = time.monotonic()
                await store.enqueue_many([(f"blocker{i}", blocker) for i in range(blockers)])
                enqueue_s = time.monotonic() - t0
                await store.close()
            async with aiohttp.ClientSession() as http:
                for i in range(repeats):
                    t0 = time.monotonic()
                    body = {"workflow": job_graph(CHECKPOINTS[0], 1000 + i)}
                    async with http.post(f"{hub.url}/jobs", json=body) as response:
                        job_id = (await response.json())["id"]
                    while True:
                        async with http.get(f"{hub.url}/jobs/{job_id}") as response:
                            job = await response.json()
                        if job["status"] in ENDED:
                            break
                        await asyncio.sleep(0.005)
                    assert job["status"] == "succeeded", job
                    results[side].append(time.monotonic() - t0)
    none, blocked = statistics.median(results["none"]), statistics.median(results["blocked"])
    return {
        "blockers": blockers,
        "latency_none_s": none,
        "latency_blocked_s": blocked,
        "ratio": blocked / none,
        "enqueue_s": enqueue_s,
        "runs": results,
    }


async def main_async(args: argparse.Namespace) -> tuple[list[Table], dict[str, Any]]:
    scale, jobs = args.scale, (100 if args.quick else 400)
    rng = random.Random(12)
    order = [rng.choice(CHECKPOINTS) for _ in range(jobs)]
    raw: dict[str, Any] = {"scale": scale, "jobs": jobs}
    with procs.scratch_dir("wgpu-bench-sched-") as base, procs.local_redis(base / "redis") as redis:
        everywhere = [list(CHECKPOINTS) for _ in range(GPUS)]
        modes = {
            "affinity on": ({"affinity": True}, False),
            "affinity off (FIFO)": ({"affinity": False}, False),
            "round robin": ({"affinity": False}, True),
        }
        for name, (settings, pin) in modes.items():
            print(f"-- {name}", flush=True)
            async with stack(redis.url, everywhere, scale, base / name, **settings) as (
                hub,
                sims,
            ):
                raw[name] = await run_jobs(hub, sims, order, pin)
            print(raw[name], flush=True)
        # Each checkpoint on 1 or 2 of the 4 GPUs.
        hetero = [
            [CHECKPOINTS[0], CHECKPOINTS[1]],
            [CHECKPOINTS[1], CHECKPOINTS[2]],
            [CHECKPOINTS[2], CHECKPOINTS[0]],
            [CHECKPOINTS[3]],
        ]
        print("-- heterogeneous fleet", flush=True)
        async with stack(redis.url, hetero, scale, base / "hetero") as (hub, sims):
            raw["heterogeneous"] = await run_jobs(hub, sims, order, False)
        print(raw["heterogeneous"], flush=True)
        print("-- head-of-line", flush=True)
        raw["head_of_line"] = await head_of_line(
            redis.url, base / "hol", 10_000 if args.quick else 100_000, 15
        )
        print(raw["head_of_line"], flush=True)
    return tables(raw), raw


def tables(raw: dict[str, Any]) -> list[Table]:
    scale = raw["scale"]
    main = Table(
        f"model-aware scheduling: 4 GPUs, 4 checkpoints, {raw['jobs']} jobs in random order, "
        f"load 2 s, run 0.5 s (times x{scale:g})",
        ["mode", "model loads", "makespan s", "p50 wait s", "p99 wait s", "failed"],
    )
    for mode in ("affinity on", "affinity off (FIFO)", "round robin"):
        r = raw[mode]
        main.add(
            mode,
            r["loads"],
            f"{r['makespan_s']:.2f}",
            f"{r['p50_wait_s']:.2f}",
            f"{r['p99_wait_s']:.2f}",
            r["failed"],
        )
    on, fifo = raw["affinity on"], raw["affinity off (FIFO)"]
    main.notes.append(
        f"affinity vs FIFO: {fifo['loads'] / max(1, on['loads']):.1f}x fewer loads, "
        f"{fifo['makespan_s'] / on['makespan_s']:.1f}x shorter makespan, p99 wait "
        f"{on['p99_wait_s']:.2f} s vs {fifo['p99_wait_s']:.2f} s"
    )
    main.notes.append(
        f"durations scaled by {scale:g} (load {2 * scale:g} s, run {0.5 * scale:g} s)"
    )
    het = raw["heterogeneous"]
    hetero = Table(
        "heterogeneous fleet: each checkpoint on 1 or 2 of 4 GPUs (affinity on)",
        ["jobs", "succeeded", "validation failures", "model loads", "makespan s"],
    )
    hetero.add(
        het["jobs"],
        het["jobs"] - het["failed"],
        het["validation_failures"],
        het["loads"],
        f"{het['makespan_s']:.2f}",
    )
    hol = raw["head_of_line"]
    head = Table(
        "head-of-line: a runnable job's latency (submit -> succeeded, median of 15)",
        ["queued ahead of it", "latency s", "ratio"],
    )
    head.add("none", f"{hol['latency_none_s']:.3f}", "1.00")
    head.add(
        f"{hol['blockers']:,} nobody can take",
        f"{hol['latency_blocked_s']:.3f}",
        f"{hol['ratio']:.2f}",
    )
    head.notes.append(f"blockers enqueued (pipelined) in {hol['enqueue_s']:.1f} s")
    return [main, hetero, head]


def run(quick: bool, scale: float = 0.5) -> tuple[list[Table], dict[str, Any]]:
    return asyncio.run(main_async(argparse.Namespace(quick=quick, scale=scale)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 jobs, 10,000 blockers")
    parser.add_argument("--scale", type=float, default=0.5, help="multiply every duration")
    args = parser.parse_args()
    found, raw = run(args.quick, args.scale)
    emit("sched", found, raw)


if __name__ == "__main__":
    main()
