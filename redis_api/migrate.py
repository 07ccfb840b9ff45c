"""Moves jobs an older hub stored into today's layout, at every hub start (idempotent).

Before pools (git 933b293), a queued job was a member of the `queue` sorted set (score
(1000 - priority) * 2^40 + seq) and its hash had no `pool`, `requires`, `owner` or `score` of
today's form; today's claim looks only at pool lanes, so such a job would wait for ever. This
reads each such job's workflow and constraints, computes its requirements and pool as a submit
does today (jobs.loader_table, wgpu_protocol.models) and lets lua/migrate.lua place it, in the
jobs' old order. Running jobs get their pool too (a retry requeues them by it). A job that has a
pool is left alone, so hubs starting together or again do nothing twice.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from wgpu_protocol import models

from .config import HubConfig
from .jobs import loader_table
from .store import Store

log = logging.getLogger(__name__)

BATCH = 500  # jobs per script call


async def migrate_old_jobs(store: Store, config: HubConfig) -> tuple[int, int]:
    """Returns (queued jobs moved into pools, running jobs given their pool)."""
    old = await store.jobs_without_pool()
    if not old:
        return 0, 0
    loaders = loader_table(config.model_loaders)
    rows = []
    for job_id, workflow_json, constraints_json in old:
        requires = models.workflow_requirements(_object(workflow_json), loaders)
        constraints = _object(constraints_json) or None
        rows.append(
            (
                job_id,
                models.pool_id(requires, constraints),
                json.dumps(requires, separators=(",", ":")) if requires else "",
            )
        )
    moved = fixed = 0
    sched_ms = int(config.schedule_timeout_s * 1000)
    for start in range(0, len(rows), BATCH):
        queued, running = await store.migrate_jobs(rows[start : start + BATCH], sched_ms)
        moved, fixed = moved + queued, fixed + running
    if moved or fixed:
        log.info(
            "moved %d queued job(s) of an older hub into pools (%d running given their pool)",
            moved,
            fixed,
        )
    return moved, fixed


def _object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
