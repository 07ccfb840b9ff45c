"""What the hub looks like right now, read from Redis: worker views, queue counts and recent
jobs. Shared by the REST routes (`GET /workers`) and the dashboard's live feed."""

from __future__ import annotations

from collections.abc import Callable

from wgpu_protocol.rest import JobJson, QueueSummaryJson, WorkerJson

from .config import HubConfig
from .jobs import job_view, worker_view
from .store import Store

# How many queued jobs a breakdown by priority and tenant reads (in dispatch order). The totals
# per state are always exact; the breakdown says how many it scanned.
BREAKDOWN_SCAN = 10_000
WAITING_SHOWN = 20


# The owners (API key names) of a worker's current job and of the job it relays (pipelining).
JobOwners = tuple[str | None, str | None]


async def worker_views(store: Store, config: HubConfig) -> list[tuple[WorkerJson, JobOwners]]:
    """Each worker's view with the owners of the jobs it holds, so that a viewer's visibility
    can be applied."""
    rows = await store.workers()
    current = [
        row[field] for row in rows for field in ("current_job", "relay_job") if row.get(field)
    ]
    jobs = {row["id"]: row for row in await store.get_jobs(current)} if current else {}
    now = await store.now_ms()
    drains = await store.drains()
    files = await store.worker_models([row.get("id", "") for row in rows])
    views = [
        worker_view(
            row,
            now,
            config.stale_ms,
            jobs,
            drains.get(row.get("id", "")),
            files.get(row.get("id", "")),
        )
        for row in rows
    ]

    def owner(job_id: str | None) -> str | None:
        return jobs.get(job_id or "", {}).get("owner") or None

    return [(view, (owner(view["current_job"]), owner(view["relaying_job"]))) for view in views]


def worker_for(
    worker: WorkerJson, owners: JobOwners, may_see: Callable[[str | None], bool]
) -> WorkerJson:
    """A worker's view for a caller: another key's job is not named (the caller sees the GPU
    busy, no more)."""
    shown = worker
    if worker.get("current_job") and not may_see(owners[0]):
        shown = {**shown, "current_job": None, "progress": None}
    if worker.get("relaying_job") and not may_see(owners[1]):
        shown = {**shown, "relaying_job": None}
    return shown


async def waiting_reasons(
    store: Store, config: HubConfig, rows: list[dict[str, str]]
) -> dict[str, str]:
    """Why each queued job of `rows` waits, by pool (one script for all of them)."""
    pools = [row.get("pool", "") for row in rows if row.get("status") == "queued"]
    return await store.waiting_reasons([p for p in pools if p], config.stale_ms)


async def queue_summary(store: Store) -> QueueSummaryJson:
    """Jobs per state (all), and the queued ones per priority and per tenant (API key name)."""
    counts = await store.counts()
    queued = await store.queued_breakdown(BREAKDOWN_SCAN)
    by_priority: dict[str, int] = {}
    by_tenant: dict[str, int] = {}
    by_pool: dict[str, int] = {}
    for priority, owner, pool in queued:
        by_priority[priority] = by_priority.get(priority, 0) + 1
        by_tenant[owner] = by_tenant.get(owner, 0) + 1
        by_pool[pool] = by_pool.get(pool, 0) + 1
    return {
        "counts": counts,
        "queued_by_priority": by_priority,
        "queued_by_tenant": by_tenant,
        "queued_by_pool": by_pool,
        "queued_scanned": len(queued),
    }


def worker_states(workers: list[tuple[WorkerJson, JobOwners]]) -> dict[str, int]:
    """Workers per state: idle, busy, unavailable, offline, or draining/drained/quarantined
    when that says more."""
    states: dict[str, int] = {}
    for view, _owners in workers:
        drain = view.get("drain")
        state: str = drain["state"] if drain else view["status"]
        if view.get("quarantined"):
            state = "quarantined"
        states[state] = states.get(state, 0) + 1
    return states


async def recent_jobs(
    store: Store, config: HubConfig, status: str | None, limit: int
) -> list[JobJson]:
    """Queued (in dispatch order, with why they wait), running, then finished newest first; as
    `GET /jobs`."""
    rows = await store.get_jobs(await store.list_job_ids(status, limit))
    reasons = await waiting_reasons(store, config, rows)
    return [job_view(row, False, reasons.get(row.get("pool", ""))) for row in rows]
