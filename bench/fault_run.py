"""The command line both fault runs share (`bench.chaos`, `bench.abuse`): `--jobs`, `--workers`,
`--quick`, `--keep`, a work directory and a durable local Redis, then the run, its table under
bench/results/, and exit 1 when the run's verdict is FAIL."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bench import procs
from bench.report import Table, emit
from orchestrator.stack.local_redis import LocalRedis


class FaultConfig(Protocol):
    jobs: int
    workers: int


class FaultReport(Protocol):
    @property
    def ok(self) -> bool: ...


C = TypeVar("C", bound=FaultConfig)
R = TypeVar("R", bound=FaultReport)


def fault_run_main(
    name: str,
    description: str,
    quick_help: str,
    config: Callable[[bool, int], C],
    run: Callable[[C, LocalRedis, Path], Coroutine[Any, Any, R]],
    table: Callable[[C, R], Table],
    timeout_s: float | None = None,
) -> None:
    """Parse the shared options, make `config(quick, workers)`, run it and report."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    cfg = config(args.quick, args.workers)
    if args.jobs:
        cfg.jobs = args.jobs
    with contextlib.ExitStack() as stack:
        tmp = (
            Path(stack.enter_context(procs.scratch_dir(f"wgpu-{name}-")))
            if not args.keep
            else Path(f"/tmp/wgpu-{name}-{int(time.time())}")
        )
        server = stack.enter_context(procs.local_redis(tmp / "redis", aof=True))
        print(f"{name}: {cfg.jobs} jobs, {cfg.workers} workers, work dir {tmp}", flush=True)
        report = asyncio.run(asyncio.wait_for(run(cfg, server, tmp), timeout_s))
    emit(name, [table(cfg, report)], {"config": cfg, "report": report})
    sys.exit(0 if report.ok else 1)
