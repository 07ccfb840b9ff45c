"""How long a change takes to reach the dashboard's feed: `POST /jobs` answered -> its `job`
event read by a `GET /events` client, per submit (the feed pushes changes; it polled a
snapshot every second before).

    python -m bench.feed_latency [--jobs 40] [--viewers 1]

One Redis, one hub process (bench.hub_process), `--viewers` feeds open; submits one job at a
time and waits for every viewer to see it before the next. Prints median and p90 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

from bench import procs
from bench.fake_worker import bench_workflow
from bench.hub_system import HubProcess


async def viewer(feed: aiohttp.ClientResponse, arrived: dict[str, list[float]]) -> None:
    """Records when this viewer got its first `job` event of each job."""
    kind, mine = "", set[str]()
    async for raw in feed.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind == "job":
            job_id = json.loads(line.removeprefix("data: "))["job"]["id"]
            if job_id not in mine:
                mine.add(job_id)
                arrived.setdefault(job_id, []).append(time.perf_counter())


async def run(hub_url: str, jobs: int, viewers: int) -> list[float]:
    submitted: dict[str, float] = {}
    arrived: dict[str, list[float]] = {}  # may come before the POST's answer is read
    async with aiohttp.ClientSession() as http:
        feeds = [await http.get(hub_url + "/events?topics=jobs") for _ in range(viewers)]
        for feed in feeds:
            await feed.content.readline()  # the stream is open: the viewer is subscribed
        readers = [asyncio.create_task(viewer(feed, arrived)) for feed in feeds]
        for index in range(jobs):
            started = time.perf_counter()
            body = {"workflow": bench_workflow(index, 0)}
            async with http.post(hub_url + "/jobs", json=body) as answer:
                job_id = (await answer.json())["id"]
            submitted[job_id] = started
            deadline = time.monotonic() + 10
            while len(arrived.get(job_id, [])) < viewers:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not reach every feed within 10 s")
                await asyncio.sleep(0.001)
        for task in readers:
            task.cancel()
        for feed in feeds:
            feed.close()
    return [at - submitted[job_id] for job_id, times in arrived.items() for at in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--viewers", type=int, default=1)
    args = parser.parse_args()
    with procs.scratch_dir() as tmp, procs.local_redis(tmp / "redis") as redis:
        hub = HubProcess(redis.url, tmp).start()
        try:
            latencies = sorted(asyncio.run(run(hub.url, args.jobs, args.viewers)))
        finally:
            hub.stop()
    p90 = latencies[int(0.9 * (len(latencies) - 1))]
    print(
        f"submit -> job event: {len(latencies)} events, median "
        f"{1000 * statistics.median(latencies):.1f} ms, p90 {1000 * p90:.1f} ms"
    )


if __name__ == "__main__":
    main()
