"""The chaos run: jobs through several fake workers (separate processes) while workers are
SIGKILLed, the hub is SIGKILLed and restarted, and Redis (AOF everysec) is restarted. Then:
0 jobs lost, 0 double completions visible to a client, attempts never above the cap, and no
per-job key left in Redis once the result TTL has passed.

The Redis restart is a clean one (SIGTERM: Redis writes and fsyncs its AOF before it exits), the
case the durability promise covers ("with AOF a Redis restart loses no accepted job", README);
with everysec a crash or power cut may lose up to ~1 s of writes, which this run does not claim.

`python -m bench.chaos [--jobs 10000] [--workers 4] [--quick]`; exit status 1 when a check fails.
tests/bench/test_chaos_short.py runs a small version of the same function."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import procs
from bench.fault_run import fault_run_main
from bench.hub_system import HubProcess, wait_workers
from bench.report import Table
from orchestrator.stack.local_redis import LocalRedis

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "dead"}


@dataclass
class ChaosConfig:
    jobs: int = 10_000
    workers: int = 4
    rate: float = 800.0  # submissions per second, so that the faults land while work is in flight
    worker_kills: int = 20
    hub_restarts: int = 2
    redis_restarts: int = 2
    max_attempts: int = 5
    job_time_s: float = 0.002
    result_ttl_s: float = 15.0
    lease_s: float = 3.0
    heartbeat_s: float = 0.5
    settle_timeout_s: float = 180.0
    seed: int = 7


@dataclass
class ChaosReport:
    submitted: int = 0
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    lost_detail: list[dict[str, Any]] = field(default_factory=list)
    duplicate_jobs: list[str] = field(default_factory=list)
    double_completions: list[str] = field(default_factory=list)
    history_double_success: list[str] = field(default_factory=list)
    over_cap: list[str] = field(default_factory=list)
    max_attempts_seen: int = 0
    retried_jobs: int = 0
    expired_before_read: int = 0  # succeeded (acked to its worker), result gone before the check
    ack_lost_expired: int = 0  # succeeded (hub-counted, ack lost to a kill), result gone too
    submit_retries: int = 0
    faults: list[str] = field(default_factory=list)
    keys_baseline: int = 0
    keys_peak: int = 0
    keys_final: int = 0
    leftover_job_keys: list[str] = field(default_factory=list)
    seconds_to_settle: float = 0.0
    seconds_total: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicate_jobs
            or self.double_completions
            or self.history_double_success
            or self.over_cap
            or self.leftover_job_keys
            or self.accepted != self.submitted
        )

    def problems(self) -> list[str]:
        out = []
        for name in (
            "lost",
            "duplicate_jobs",
            "double_completions",
            "history_double_success",
            "over_cap",
            "leftover_job_keys",
        ):
            items = getattr(self, name)
            if items:
                out.append(f"{name}: {len(items)} (e.g. {items[:5]})")
        if self.lost_detail:
            out.append(f"lost jobs as last seen: {self.lost_detail}")
        if self.accepted != self.submitted:
            out.append(f"accepted {self.accepted} of {self.submitted} submissions")
        return out


class WorkerPool:
    """Fake worker processes with stable ids: a killed one is replaced by a fresh process with
    the same worker id, as a restarted container would be."""

    def __init__(self, hub_url: str, count: int, job_time_s: float, work_dir: Path) -> None:
        self.hub_url = hub_url
        self.job_time_s = job_time_s
        self.work_dir = work_dir
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    def completions_file(self, index: int) -> Path:
        return self.work_dir / f"completions-{index}.txt"

    def start(self, index: int) -> None:
        args = ["--hub", self.hub_url, "--machine", "chaos", "--first-index", str(index)]
        args += os.environ.get("BENCH_FAKE_WORKER_ARGS", "").split()
        args += ["--job-time", str(self.job_time_s)]
        args += ["--completions-file", str(self.completions_file(index))]
        log = self.work_dir / f"worker{index}.log"
        self.procs[index] = procs.spawn(procs.module_cmd("bench.fake_worker", *args), log)

    def start_all(self) -> None:
        for i in range(len(self.procs)):
            self.start(i)

    def kill_and_replace(self, index: int) -> None:
        procs.kill(self.procs[index])
        self.start(index)

    def stop_all(self) -> None:
        for proc in self.procs:
            procs.stop(proc)

    def completion_records(self, what: str) -> Counter[str]:
        """Per job id, how many `what` records (sent, acked) the workers wrote."""
        counts: Counter[str] = Counter()
        for i in range(len(self.procs)):
            path = self.completions_file(i)
            if path.exists():
                for line in path.read_text().splitlines():
                    fields = line.split()
                    if len(fields) == 4 and fields[3] == what:
                        counts[fields[0]] += 1
        return counts

    def acked_completions(self) -> Counter[str]:
        return self.completion_records("acked")

    def completion_lines(self, job_ids: set[str]) -> dict[str, list[str]]:
        """The workers' records of these jobs (for the report on a lost job)."""
        out: dict[str, list[str]] = {}
        for i in range(len(self.procs)):
            path = self.completions_file(i)
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.split()[:1] and line.split()[0] in job_ids:
                        out.setdefault(line.split()[0], []).append(line)
        return out


def fault_plan(cfg: ChaosConfig) -> list[tuple[int, str]]:
    """(after this many submissions, fault) pairs, spread over the submission window."""
    plan: list[tuple[int, str]] = []
    for i in range(cfg.worker_kills):
        plan.append((int(cfg.jobs * (i + 1) / (cfg.worker_kills + 1)), "worker"))
    for i in range(cfg.hub_restarts):
        plan.append((int(cfg.jobs * (i + 0.4) / cfg.hub_restarts), "hub"))
    for i in range(cfg.redis_restarts):
        plan.append((int(cfg.jobs * (i + 0.7) / cfg.redis_restarts), "redis"))
    return sorted(plan)


async def post_job(
    session: aiohttp.ClientSession, hub_url: str, key: str, cfg: ChaosConfig, report: ChaosReport
) -> str:
    """Submit with an idempotency key, retrying through hub and Redis restarts until accepted."""
    body = {
        "workflow": {"1": {"class_type": "ChaosNoop", "inputs": {"key": key}}},
        "idempotency_key": key,
        "max_attempts": cfg.max_attempts,
    }
    deadline = time.monotonic() + 60
    while True:
        try:
            async with session.post(hub_url + "/jobs", json=body) as resp:
                if resp.status in (200, 201):
                    return str((await resp.json())["id"])
                text = await resp.text()
                if resp.status < 500:
                    raise RuntimeError(f"POST /jobs answered {resp.status}: {text}")
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        report.submit_retries += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {key} not accepted within 60 s")
        await asyncio.sleep(0.1)


async def get_job(
    session: aiohttp.ClientSession, hub_url: str, job_id: str
) -> dict[str, Any] | None:
    try:
        async with session.get(f"{hub_url}/jobs/{job_id}") as resp:
            if resp.status == 404:
                return {"id": job_id, "status": "missing"}
            if resp.status != 200:
                return None
            return dict(await resp.json())
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        return None


def count_keys(client: redis.Redis[bytes]) -> int:
    try:
        return int(client.dbsize())
    except redis.exceptions.RedisError:
        return -1


async def run_chaos(cfg: ChaosConfig, server: LocalRedis, work_dir: Path) -> ChaosReport:
    report = ChaosReport()
    rng = random.Random(cfg.seed)
    client = redis.Redis.from_url(server.url)
    hub = HubProcess(
        server.url,
        work_dir,
        lease_s=cfg.lease_s,
        heartbeat_s=cfg.heartbeat_s,
        result_ttl_s=cfg.result_ttl_s,
        disconnect_grace_s=0.5,
        default_max_attempts=cfg.max_attempts,
    ).start()
    pool = WorkerPool(hub.url, cfg.workers, cfg.job_time_s, work_dir)
    t_start = time.monotonic()
    ids: dict[str, str] = {}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32), timeout=aiohttp.ClientTimeout(total=10)
        ) as session:
            pool.start_all()
            await wait_workers(session, hub.url, cfg.workers, 30)
            report.keys_baseline = count_keys(client)
            successes_baseline = await hub_success_count(session, hub.url)
            plan = fault_plan(cfg)

            async def fault(kind: str) -> None:
                t0 = time.monotonic()
                if kind == "worker":
                    index = rng.randrange(cfg.workers)
                    await asyncio.to_thread(pool.kill_and_replace, index)
                    what = f"SIGKILL worker {index}"
                elif kind == "hub":
                    await asyncio.to_thread(hub.restart, True)
                    what = "SIGKILL hub, restart"
                else:
                    await asyncio.to_thread(server.restart, False)  # SIGTERM, not a crash
                    what = "restart Redis (AOF everysec)"
                report.faults.append(f"{what} ({time.monotonic() - t0:.2f} s)")

            async def submit_one(i: int) -> None:
                key = f"chaoskey-{cfg.seed}-{i}"
                job_id = await post_job(session, hub.url, key, cfg, report)
                if key in ids and ids[key] != job_id:
                    report.duplicate_jobs.append(key)
                ids[key] = job_id
                report.accepted += 1

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            tasks = []
            faults = []
            for i in range(cfg.jobs):
                while plan and plan[0][0] <= i:
                    faults.append(asyncio.create_task(fault(plan.pop(0)[1])))
                delay = t0 + i / cfg.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(submit_one(i)))
                report.submitted += 1
                if i % 500 == 0:
                    report.keys_peak = max(report.keys_peak, count_keys(client))
            await asyncio.gather(*faults)
            await asyncio.gather(*tasks)

            t_settle = time.monotonic()
            pending = set(ids.values())
            final: dict[str, dict[str, Any]] = {}
            last_seen: dict[str, dict[str, Any]] = {}
            while pending and time.monotonic() - t_settle < cfg.settle_timeout_s:
                report.keys_peak = max(report.keys_peak, count_keys(client))
                batch = list(pending)
                for start in range(0, len(batch), 200):
                    chunk = batch[start : start + 200]
                    jobs = await asyncio.gather(*(get_job(session, hub.url, j) for j in chunk))
                    for job_id, job in zip(chunk, jobs, strict=True):
                        if job is not None:
                            last_seen[job_id] = job
                        if job is not None and job.get("status") in TERMINAL | {"missing"}:
                            final[job_id] = job
                            pending.discard(job_id)
                if pending:
                    await asyncio.sleep(0.2)
            report.seconds_to_settle = time.monotonic() - t_settle

            # A job's end is recorded as it happens, by the workers (a line before each
            # `completed` is sent and one per acknowledged completion) and by the hub (its
            # per-worker success counts, written by the script that records each success): see
            # settle_expired. So a success whose result expired before this check read it (a
            # slow machine, a short TTL, an ack lost to a kill) is a success, not a loss.
            hub_successes = await hub_success_count(session, hub.url) - successes_baseline
            report.expired_before_read, report.ack_lost_expired = settle_expired(
                final,
                pool.completion_records("acked"),
                pool.completion_records("sent"),
                hub_successes,
            )
            acked = pool.acked_completions()
            statuses: Counter[str] = Counter(job["status"] for job in final.values())
            statuses["not finished"] = len(pending)
            report.statuses = {k: v for k, v in statuses.items() if v}
            report.lost = sorted(pending) + [
                j for j, job in final.items() if job["status"] == "missing"
            ]
            report.lost_detail = [
                _job_summary(last_seen.get(j, {"id": j})) for j in report.lost[:5]
            ]
            records = pool.completion_lines(set(report.lost[:5]))
            for detail in report.lost_detail:
                detail["worker_records"] = records.get(str(detail["id"]), [])
            for job_id, job in final.items():
                if job.get("expired"):
                    continue  # only its end is known
                attempts = int(job.get("attempts") or 0)
                report.max_attempts_seen = max(report.max_attempts_seen, attempts)
                if attempts > int(job.get("max_attempts") or cfg.max_attempts):
                    report.over_cap.append(job_id)
                if attempts > 1:
                    report.retried_jobs += 1
                history = job.get("history") or []
                if sum(1 for h in history if h.get("outcome") == "succeeded") > 1:
                    report.history_double_success.append(job_id)
            report.double_completions = sorted(j for j, n in acked.items() if n > 1)

            # Per-job keys must go once the result TTL has passed (Redis expires them itself).
            all_ids = set(ids.values())
            deadline = time.monotonic() + cfg.result_ttl_s + 20
            while True:
                leftovers = [
                    k.decode()
                    for k in client.scan_iter(count=1000)
                    if _names_a_job(k.decode(), all_ids)
                ]
                if not leftovers or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            report.leftover_job_keys = leftovers
            report.keys_final = count_keys(client)
    finally:
        pool.stop_all()
        hub.stop()
        client.close()
        report.seconds_total = time.monotonic() - t_start
    return report


async def hub_success_count(session: aiohttp.ClientSession, hub_url: str) -> int:
    """Successes the hub recorded, summed over workers (`jobs_done`, counted in Redis by the
    script that records each success; the worker records outlive a job's result TTL)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            async with session.get(hub_url + "/workers") as resp:
                if resp.status == 200:
                    body = await resp.json()
                    return sum(int(w.get("jobs_done") or 0) for w in body["workers"])
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("GET /workers did not answer within 60 s")
        await asyncio.sleep(0.2)


def settle_expired(
    final: dict[str, dict[str, Any]],
    acked: Counter[str],
    sent: Counter[str],
    hub_successes: int,
) -> tuple[int, int]:
    """Turn `missing` jobs (404: their record expired, which the hub lets happen only once a job
    has ended) whose success is known into `succeeded`; returns how many (ack seen, ack lost).

    A success acked to its worker is known. A worker killed (or cut off by a hub kill) after
    sending `completed` but before reading the ack leaves only its "sent" line; such jobs count
    as succeeded only when the hub's own success count says all of them were recorded. That is
    exact: every success needs a `completed`, each sent one leaves a line first, and a job
    succeeds at most once, so the successes are a subset of (seen or acked) + (sent, missing)."""
    seen = sum(1 for job in final.values() if job["status"] == "succeeded")
    missing = [job_id for job_id, job in final.items() if job["status"] == "missing"]
    acked_missing = [job_id for job_id in missing if acked.get(job_id)]
    unacked = [job_id for job_id in missing if not acked.get(job_id) and sent.get(job_id)]
    confirmed = list(acked_missing)
    if unacked and hub_successes == seen + len(acked_missing) + len(unacked):
        confirmed += unacked
    for job_id in confirmed:
        final[job_id] = {"id": job_id, "status": "succeeded", "expired": True}
    return len(confirmed), len(confirmed) - len(acked_missing)


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "status", "attempts", "max_attempts", "worker_id", "created_at", "started_at")
    return {k: job.get(k) for k in (*keep, "history", "error")}


def _names_a_job(key: str, job_ids: set[str]) -> bool:
    # Job ids are long and unique; a key names a job when one of its ':'-separated parts is an id.
    return (
        any(part in job_ids for part in key.replace("{", ":").replace("}", ":").split(":"))
        or "chaoskey-" in key
    )


def chaos_table(cfg: ChaosConfig, report: ChaosReport) -> Table:
    table = Table(
        f"Chaos: {cfg.jobs} jobs, {cfg.workers} workers, cap {cfg.max_attempts} attempts",
        ["figure", "value"],
    )
    table.add("jobs submitted / accepted", f"{report.submitted} / {report.accepted}")
    table.add("final states", ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())))
    table.add("lost", len(report.lost))
    table.add("succeeded, result expired before the check read it", report.expired_before_read)
    table.add("  of which the ack was lost to a kill (hub-counted)", report.ack_lost_expired)
    table.add("duplicate jobs for one idempotency key", len(report.duplicate_jobs))
    table.add("double completions acked to workers", len(report.double_completions))
    table.add("jobs with two successes in history", len(report.history_double_success))
    table.add("jobs over the attempts cap", len(report.over_cap))
    table.add(
        "max attempts seen / retried jobs", f"{report.max_attempts_seen} / {report.retried_jobs}"
    )
    table.add("submit retries (hub or Redis down)", report.submit_retries)
    table.add("faults injected", len(report.faults))
    table.add(
        "Redis keys baseline / peak / after TTL",
        f"{report.keys_baseline} / {report.keys_peak} / {report.keys_final}",
    )
    table.add("per-job keys left after TTL", len(report.leftover_job_keys))
    table.add(
        "seconds to settle / total", f"{report.seconds_to_settle:.1f} / {report.seconds_total:.1f}"
    )
    table.add("verdict", "PASS" if report.ok else "FAIL: " + "; ".join(report.problems()))
    table.notes.append("faults: " + ", ".join(report.faults))
    return table


def chaos_config(quick: bool, workers: int) -> ChaosConfig:
    if not quick:
        return ChaosConfig(workers=workers)
    return ChaosConfig(
        jobs=1000,
        workers=workers,
        rate=300,
        worker_kills=5,
        hub_restarts=1,
        redis_restarts=1,
        result_ttl_s=5,
    )


def main() -> None:
    fault_run_main(
        "chaos", __doc__ or "", "1,000 jobs, fewer faults", chaos_config, run_chaos, chaos_table
    )


if __name__ == "__main__":
    main()
