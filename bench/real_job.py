"""What one real job costs: 30 progress updates (a sampler's steps, 2 ms each) and two 1.5 MB
outputs, through the hub, one real worker (comfy_worker) and the simulator (no other compute
time; --node-time 0), against
the smallest job through the same path (one node, one 64x64 PNG). A client follows every job on
its SSE stream, as one watching a job does.

`python -m bench.real_job [--quick] [--jobs N] [--rounds R]`

Per job, from deltas over a batch of jobs run one at a time (one GPU's worth): Redis' own
accounting (INFO commandstats: µs inside commands, and calls), the Redis process' CPU
(commands plus networking), bytes the clients wrote to Redis (INFO stats
total_net_input_bytes), and the hub's, worker's and simulator's CPU. "GPUs one Redis core can
serve" is 10 s of GPU time per job divided by the Redis process' CPU per job: the fleet size at
which Redis, shared by every hub replica, is the bound. The two kinds alternate, R rounds each;
tables give the median with min-max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import redis

from bench import procs
from bench.hub_system import wait_workers
from bench.relay import WORKFLOW as MINIMAL_WORKFLOW
from bench.relay import RelayStack, hub_once, relay_stack
from bench.report import Table, emit
from bench.stats import percentile
from wgpu_protocol.worker_env import PROGRESS_INTERVAL_S

PROGRESS_STEPS = 30
STEP_S = 0.002  # a step's length: long enough that every step is its own progress event
IMAGE_SIDE = 724  # RGB noise: 724 x 724 x 3 bytes = 1.5 MiB per PNG, two of them
GPU_SECONDS_PER_JOB = 10.0


def realistic_workflow(seed: int) -> dict[str, Any]:
    """A sampler's 30 steps (WgpuSimSleep reports each as a progress event) on the way to two
    noise images of ~1.5 MB each (incompressible pixels, so the PNGs are as big as real ones).
    Every node feeds the SaveImage: ComfyUI runs only what an output node needs. `seed` keeps
    ComfyUI's cache from answering for it."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": IMAGE_SIDE, "height": IMAGE_SIDE, "batch_size": 2, "color": 0},
        },
        "2": {
            "class_type": "WgpuSimSleep",
            "inputs": {
                "seconds": STEP_S * PROGRESS_STEPS,
                "steps": PROGRESS_STEPS,
                "image": ["1", 0],
            },
        },
        "3": {
            "class_type": "ImageAddNoise",
            "inputs": {"image": ["2", 0], "seed": seed, "strength": 1.0},
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": f"bench/real{seed}"},
        },
    }


KINDS = {
    "minimal job (1 node, one 64x64 PNG)": lambda _seed: MINIMAL_WORKFLOW,
    f"realistic job ({PROGRESS_STEPS} progress steps, 2 x 1.5 MB outputs)": realistic_workflow,
}


def _redis_counters(client: redis.Redis[bytes]) -> dict[str, float]:
    stats: Mapping[str, Any] = client.info("commandstats")
    net: Mapping[str, Any] = client.info("stats")
    return {
        "usec": float(sum(s["usec"] for s in stats.values())),
        "calls": float(sum(s["calls"] for s in stats.values())),
        "bytes_in": float(net["total_net_input_bytes"]),
    }


def _commands(client: redis.Redis[bytes]) -> dict[str, float]:
    stats: Mapping[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): float(v["calls"]) for k, v in stats.items()}


def _cpu(stack: RelayStack) -> dict[str, float]:
    """CPU seconds so far: Redis' own getrusage (INFO cpu, µs resolution), the others from
    /proc (10 ms ticks)."""
    pids = {"hub": stack.hub.pid, "worker": stack.worker.pid, "simulator": stack.sim.pid}
    out = {name: procs.cpu_seconds(pid) for name, pid in pids.items()}
    client = redis.Redis.from_url(stack.redis_url)
    try:
        cpu: Mapping[str, Any] = client.info("cpu")
    finally:
        client.close()
    out["redis"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return out


IDLE_S = 10.0  # how long the idle baseline of each round is measured (a few reaper rounds)


def _counters(stack: RelayStack, client: redis.Redis[bytes]) -> dict[str, float]:
    out = _redis_counters(client)
    out.update({f"{name}_cpu": seconds for name, seconds in _cpu(stack).items()})
    out["t"] = time.monotonic()
    return out


async def idle_rates(stack: RelayStack, seconds: float = IDLE_S) -> dict[str, float]:
    """What the stack costs per second with no job (the hub's reaper rounds, its idle-worker
    refresh, the worker's heartbeat, Redis' own timers): a per-hub cost, not a per-job one.
    Also, as `cmd:NAME`, each command's calls per second (what still runs when nothing
    happens)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        before, before_cmds = _counters(stack, client), _commands(client)
        await asyncio.sleep(seconds)  # measuring an interval: the wait is the measurement
        after, after_cmds = _counters(stack, client), _commands(client)
    finally:
        client.close()
    elapsed = after["t"] - before["t"]
    rates = {k: (after[k] - before[k]) / elapsed for k in after if k != "t"}
    for name, calls in after_cmds.items():
        if calls > before_cmds.get(name, 0.0) and name != "info":  # ours, not the stack's
            rates[f"cmd:{name}"] = (calls - before_cmds.get(name, 0.0)) / elapsed
    return rates


async def batch(
    stack: RelayStack, kind: str, jobs: int, first_seed: int, idle: dict[str, float]
) -> dict[str, Any]:
    """`jobs` jobs of `kind` one after another; the per-job cost over the batch, and net of
    the stack's idle cost over the batch's duration (`idle`, per second)."""
    client = redis.Redis.from_url(stack.redis_url)
    make = KINDS[kind]
    try:
        async with aiohttp.ClientSession() as session:
            await wait_workers(session, stack.hub.url, 1, 60)
            await hub_once(session, stack.hub.url, make(first_seed - 1))  # warm, not counted
            before_redis, before_cpu = _redis_counters(client), _cpu(stack)
            before_cmds = _commands(client)
            t0 = time.monotonic()
            latencies = []
            for i in range(jobs):
                latencies.append(await hub_once(session, stack.hub.url, make(first_seed + i)))
            after_redis, after_cpu = _redis_counters(client), _cpu(stack)
            after_cmds = _commands(client)
            elapsed = time.monotonic() - t0
    finally:
        client.close()
    per_job = {k: (after_redis[k] - before_redis[k]) / jobs for k in after_redis}
    cpu_us = {k: (after_cpu[k] - before_cpu[k]) / jobs * 1e6 for k in after_cpu}
    commands = {
        k: (v - before_cmds.get(k, 0.0)) / jobs
        for k, v in after_cmds.items()
        if v - before_cmds.get(k, 0.0) > 0
    }
    # The idle cost that fell into the batch, per job: what a job of this kind adds is the rest.
    idle_share = {k: v * elapsed / jobs for k, v in idle.items() if not k.startswith("cmd:")}
    return {
        "idle_share": idle_share,
        "net_redis_usec": per_job["usec"] - idle_share["usec"],
        "net_redis_calls": per_job["calls"] - idle_share["calls"],
        "net_redis_bytes_in": per_job["bytes_in"] - idle_share["bytes_in"],
        "net_redis_cpu_us": cpu_us["redis"] - idle_share["redis_cpu"] * 1e6,
        "net_hub_cpu_us": cpu_us["hub"] - idle_share["hub_cpu"] * 1e6,
        "net_worker_cpu_us": cpu_us["worker"] - idle_share["worker_cpu"] * 1e6,
        "redis_usec": per_job["usec"],
        "redis_calls": per_job["calls"],
        "redis_bytes_in": per_job["bytes_in"],
        "redis_cpu_us": cpu_us["redis"],
        "hub_cpu_us": cpu_us["hub"],
        "worker_cpu_us": cpu_us["worker"],
        "sim_cpu_us": cpu_us["simulator"],
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "commands": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
    }


def _median(runs: list[dict[str, Any]], key: str) -> tuple[float, float, float]:
    values = [float(r[key]) for r in runs]
    return percentile(values, 50), min(values), max(values)


def run(
    quick: bool, jobs: int | None = None, rounds: int | None = None
) -> tuple[list[Table], dict[str, Any]]:
    jobs = jobs or (30 if quick else 100)
    rounds = rounds or 3
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    idles: list[dict[str, float]] = []
    table = Table(
        "Cost of one job: hub + real worker + simulator (no compute), a client on SSE, net of"
        " the stack's idle cost",
        [
            "job",
            "Redis µs (commandstats)",
            "Redis cmds",
            "Redis CPU µs",
            "bytes to Redis",
            "hub CPU µs",
            "worker CPU µs",
            "GPUs per Redis core @10 s/job",
            "p50 ms",
        ],
    )
    with procs.scratch_dir() as tmp:
        try:
            # Every step reaches the hub, as at a real sampler's pace (a step every ~0.3 s is
            # above the worker's 50 ms progress throttle); with no compute time it would
            # otherwise fold the 30 steps into one or two messages.
            every_step = {PROGRESS_INTERVAL_S: "0.000001"}
            sim_args = ("--cache-none",)
            with relay_stack(tmp, sim_args, every_step) as stack:
                seed = 1
                for _ in range(rounds):  # alternated, so drift falls on both kinds
                    idle = asyncio.run(idle_rates(stack))
                    idles.append(idle)
                    for kind in KINDS:
                        results[kind].append(asyncio.run(batch(stack, kind, jobs, seed, idle)))
                        seed += jobs + 1
        except Exception as exc:
            table.notes.append(f"failed: {type(exc).__name__}: {exc}")
    for kind, runs in results.items():
        if not runs:
            continue

        def cell(key: str, runs: list[dict[str, Any]] = runs) -> str:
            mid, lo, hi = _median(runs, key)
            return f"{mid:,.0f} ({lo:,.0f}-{hi:,.0f})"

        redis_cpu = _median(runs, "net_redis_cpu_us")[0]
        capacity = GPU_SECONDS_PER_JOB / (redis_cpu / 1e6) if redis_cpu > 0 else float("nan")
        table.add(
            kind,
            cell("net_redis_usec"),
            f"{_median(runs, 'net_redis_calls')[0]:.1f}",
            cell("net_redis_cpu_us"),
            cell("net_redis_bytes_in"),
            cell("net_hub_cpu_us"),
            cell("net_worker_cpu_us"),
            capacity,
            _median(runs, "latency_p50_ms")[0],
        )
    kinds = list(KINDS)
    if all(results[k] for k in kinds):
        for key, what in (
            ("net_redis_usec", "commandstats µs"),
            ("net_redis_cpu_us", "CPU µs"),
            ("net_redis_calls", "commands"),
        ):
            minimal, realistic = (_median(results[k], key)[0] for k in kinds)
            ratio = realistic / minimal if minimal else float("nan")
            table.notes.append(
                f"realistic / minimal Redis {what} per job: {ratio:.2f}x (goal <= 2x)"
            )
        raw = [_median(results[k], "redis_cpu_us")[0] for k in kinds]
        usec = [_median(results[k], "redis_usec")[0] for k in kinds]
        calls = [_median(results[k], "redis_calls")[0] for k in kinds]
        table.notes.append(
            "raw, before taking off the idle cost (realistic / minimal): Redis CPU µs "
            f"{raw[0]:,.0f} / {raw[1]:,.0f} ({raw[1] / raw[0]:.2f}x), commandstats µs "
            f"{usec[0]:,.0f} / {usec[1]:,.0f} ({usec[1] / usec[0]:.2f}x), commands "
            f"{calls[0]:.1f} / {calls[1]:.1f} ({calls[1] / calls[0]:.2f}x)"
        )
    if idles:
        keys = [k for k in idles[0] if not k.startswith("cmd:")]
        rate = {k: percentile([i[k] for i in idles], 50) for k in keys}
        names = {k for i in idles for k in i if k.startswith("cmd:")}
        by_cmd = {k[4:]: percentile([i.get(k, 0.0) for i in idles], 50) for k in names}
        top = ", ".join(
            f"{name} {calls:.1f}" for name, calls in sorted(by_cmd.items(), key=lambda kv: -kv[1])
        )
        table.notes.append(
            f"cells are net of the stack's idle cost (measured {IDLE_S:g} s before each round:"
            f" {rate['calls']:.1f} Redis commands/s, {rate['redis_cpu'] * 1e6:,.0f} µs/s Redis"
            f" CPU, {rate['hub_cpu'] * 1e6:,.0f} µs/s hub CPU): a cost per hub, not per job,"
            " that a long job would otherwise carry more of than a short one; raw deltas are in"
            f" realjob.json. Idle commands/s: {top[:400]}"
        )
    table.notes += [
        f"median (min-max) of {rounds} alternated batches of {jobs} jobs, one at a time",
        "Redis CPU is Redis' own (INFO cpu, µs); hub and worker CPU come from /proc in"
        f" {1e6 / procs.CLOCK_TICKS:,.0f} µs ticks: +- {1e6 / procs.CLOCK_TICKS / jobs:,.0f} µs"
        " per job",
        "the client's SSE stream is part of each job's cost (it is what a watching client costs)",
        f"load average at the end: {os.getloadavg()[0]:.2f}",
    ]
    return [table], {"jobs_per_batch": jobs, "rounds": rounds, "runs": results, "idle": idles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    tables, raw = run(args.quick, args.jobs, args.rounds)
    emit("realjob", tables, raw)  # the name `python -m bench` gives it


if __name__ == "__main__":
    main()
