"""Outputs: how long the GPU (ComfyUI) sits idle between two jobs for 0, 5 and 50 MB outputs,
with pipelining off ("before": the worker takes its next job once the previous job's outputs are
stored) and on ("after": it takes it while they are relayed), and how fast an output is relayed
from ComfyUI to the hub's storage against a plain file copy on the same disk (the physical
limit).

Redis, hub, worker and simulator each their own process (bench.relay.relay_stack), a fresh
stack per run; the worker's WORKER_PIPELINE picks the mode. The idle gap is read from the
simulator's own history timestamps: `execution_start` of job k+1 minus `execution_success` of
job k, with the jobs queued up front so that the worker goes straight from one to the next.
Each job computes for COMPUTE_S (a WgpuSimSleep node) before writing its output, longer than a
50 MB relay takes, as a GPU job does: pipelining hides a relay behind the next job's compute,
and where the relay is the longer of the two the GPU waits for the difference. The modes
alternate within each round; the table gives the median over rounds of each run's median gap.

`python -m bench.outputs_bench [--quick]`."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import procs
from bench.hub_system import wait_workers
from bench.relay import relay_stack
from bench.report import Table, emit
from bench.stats import median
from wgpu_protocol import worker_env

MB = 1_000_000
COMPUTE_S = 1.0  # a 50 MB relay takes ~0.4 s here: the compute still covers it
MODES = {"before": False, "after": True}  # name -> WorkerConfig.pipeline


def blob_workflow(size: int, index: int, compute_s: float) -> dict[str, Any]:
    workflow: dict[str, Any] = {
        "1": {
            "class_type": "WgpuSimBlob",
            "inputs": {
                "size_bytes": size,
                "filename_prefix": f"bench/o{index}",
                "extension": "bin",
                "seed": index,
            },
        }
    }
    if compute_s > 0:
        workflow["2"] = {
            "class_type": "WgpuSimSleep",
            "inputs": {"seconds": compute_s, "steps": 10},
        }
        # The blob node runs after the sleep: it takes the sleep's image (and ignores it).
        workflow["1"]["inputs"]["image"] = ["2", 0]
    return workflow


def _stamp(entry: dict[str, Any], kind: str) -> float:
    for name, data in entry["status"]["messages"]:
        if name == kind:
            return float(data["timestamp"])
    raise KeyError(kind)


def _gaps_ms(history: dict[str, Any], prompt_order: list[str]) -> list[float]:
    return [
        _stamp(history[after], "execution_start") - _stamp(history[before], "execution_success")
        for before, after in itertools.pairwise(prompt_order)
    ]


def measure(
    size: int, jobs: int, workdir: Path, pipeline: bool, compute_s: float
) -> dict[str, Any]:
    """One run on a fresh stack: `jobs` jobs queued up front, each with one `size`-byte output."""
    settings = {worker_env.PIPELINE: "1" if pipeline else "0"}
    # --cache-none: every job computes (stock ComfyUI serves a repeated node from its cache).
    with relay_stack(workdir, ("--cache-none",), settings) as stack:
        return asyncio.run(_jobs(stack.hub.url, stack.sim_url, size, jobs, compute_s))


async def _jobs(
    hub_url: str, sim_url: str, size: int, jobs: int, compute_s: float
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        await wait_workers(http, hub_url, 1, 60)
        ids = []
        for index in range(jobs):
            body = {"workflow": blob_workflow(size, index, compute_s), "timeout_s": 600}
            async with http.post(f"{hub_url}/jobs", json=body) as r:
                ids.append((await r.json())["id"])
        done = []
        for job_id in ids:
            while True:
                async with http.get(f"{hub_url}/jobs/{job_id}") as r:
                    job = await r.json()
                if job["status"] not in ("queued", "assigned", "running"):
                    done.append(job)
                    break
                await asyncio.sleep(0.02)
        async with http.get(f"{sim_url}/history") as r:
            history = await r.json()
    by_started = sorted(history, key=lambda p: _stamp(history[p], "execution_start"))
    gaps = _gaps_ms(history, by_started)
    # Relay time of each output: ComfyUI finished -> the hub recorded the job.
    relay_s = []
    by_seed = {e["prompt"][2]["1"]["inputs"]["seed"]: e for e in history.values()}
    for index, job in enumerate(done):
        success_ms = _stamp(by_seed[index], "execution_success")
        relay_s.append(job["finished_at"] - success_ms / 1000)
    return {
        "gaps_ms": gaps,
        "gap_ms_median": median(gaps) if gaps else float("nan"),
        "gap_ms_max": max(gaps) if gaps else float("nan"),
        "relay_s_median": median(relay_s),
        "ok": all(j["status"] == "succeeded" for j in done),
    }


def copy_mb_s(size: int, workdir: Path) -> float:
    source = workdir / "copy-src.bin"
    with open(source, "wb") as out:
        block = bytes(range(256)) * 4096
        written = 0
        while written < size:
            out.write(block[: size - written])
            written += len(block[: size - written])
    target = workdir / "copy-dst.bin"
    started = time.perf_counter()
    shutil.copyfile(source, target)
    with open(target, "rb+") as handle:
        os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    source.unlink()
    target.unlink()
    return size / MB / elapsed


def run(quick: bool) -> tuple[list[Table], dict[str, Any]]:
    jobs = 4 if quick else 6
    rounds = 1 if quick else 3
    compute_s = COMPUTE_S / 2 if quick else COMPUTE_S
    relay_size = (64 if quick else 256) * MB
    sizes = (0, 5 * MB, 50 * MB)
    raw: dict[str, Any] = {"compute_s": compute_s, "rounds": rounds, "jobs": jobs}
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with procs.scratch_dir("wgpu-bench-out-") as workdir:
        for round_no in range(rounds):
            order = list(MODES) if round_no % 2 == 0 else list(reversed(MODES))
            for size in sizes:
                for mode in order:
                    where = workdir / f"r{round_no}-{mode}-{size}"
                    result = measure(size, jobs, where, MODES[mode], compute_s)
                    runs.setdefault((size, mode), []).append(result)
        relay = measure(relay_size, 2, workdir / "relay", True, 0.0)
        copy = copy_mb_s(relay_size, workdir)
    gap = Table(
        "Outputs: ComfyUI idle between jobs, pipelining off (before) and on (after)",
        [
            "output",
            "before: gap median (ms)",
            "before: gap max (ms)",
            "after: gap median (ms)",
            "after: gap max (ms)",
            "relay median (s)",
        ],
        notes=[
            f"{jobs} jobs per run, {rounds} round(s) alternating the modes, each job computes "
            f"{compute_s:g} s then writes its output; medians over rounds of each run's median "
            "gap; max over every gap; relay = ComfyUI done -> job recorded, pipelining on.",
            "Target (issue 11): within 20 ms at 50 MB, pipelining on.",
        ],
    )
    for size in sizes:
        cells: list[Any] = [f"{size / MB:g} MB"]
        for mode in MODES:
            results = runs[(size, mode)]
            cells.append(median(r["gap_ms_median"] for r in results))
            cells.append(max(r["gap_ms_max"] for r in results))
            raw[f"gap_{size}_{mode}"] = results
        cells.append(median(r["relay_s_median"] for r in runs[(size, "after")]))
        gap.add(*cells)
    relay_mb_s = relay_size / MB / relay["relay_s_median"]
    raw["relay"] = {**relay, "relay_mb_s": relay_mb_s, "copy_mb_s": copy}
    raw["ok"] = relay["ok"] and all(r["ok"] for rs in runs.values() for r in rs)
    throughput = Table(
        "Outputs: relay throughput against a plain copy on the same disk",
        ["path", "MB/s", "ratio"],
        notes=[
            f"{relay_size / MB:g} MB output: ComfyUI /view -> worker -> hub -> local storage, "
            "sha256 on both sides; copy = shutil.copyfile + fsync."
        ],
    )
    throughput.add("relay (hub, worker, sim: one process each)", relay_mb_s, relay_mb_s / copy)
    throughput.add("plain file copy", copy, 1.0)
    return [gap, throughput], raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tables, raw = run(args.quick)
    emit("outputs", tables, {"outputs": raw, "quick": args.quick})


if __name__ == "__main__":
    main()
