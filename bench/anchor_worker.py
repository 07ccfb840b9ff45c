"""One anchor worker process: `python -m bench.anchor_worker arq|rq|dramatiq|taskiq [N]`
(BENCH_REDIS_URL set). N jobs at a time per process (default 1, like one GPU worker): Dramatiq
threads, taskiq async tasks. Library logging left at WARNING."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable


def run_arq(tuned: bool = False) -> None:
    from arq.worker import run_worker

    from bench.anchor_jobs import ArqSettings, ArqTunedSettings

    run_worker(ArqTunedSettings if tuned else ArqSettings)  # type: ignore[arg-type]


def run_rq() -> None:
    import redis
    from rq import Queue, SimpleWorker

    from bench.anchor_jobs import REDIS_URL, RQ_QUEUE

    conn = redis.Redis.from_url(REDIS_URL)
    # SimpleWorker runs jobs in-process: faster than rq's default fork-per-job Worker.
    worker = SimpleWorker([Queue(RQ_QUEUE, connection=conn)], connection=conn)
    worker.work(logging_level="WARNING", with_scheduler=False)


def run_dramatiq(concurrency: int = 1) -> None:
    import dramatiq

    from bench.anchor_jobs import dramatiq_noop  # noqa: F401 - declares the actor

    worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=concurrency)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    worker.start()
    stopped.wait()
    worker.stop()


def run_taskiq(concurrency: int = 1) -> None:
    """What one `taskiq worker` child process runs, in this process (so its CPU is counted)."""
    from taskiq.cli.worker.args import WorkerArgs
    from taskiq.cli.worker.run import start_listen

    args = ["bench.anchor_jobs:taskiq_broker", "--max-async-tasks", str(concurrency)]
    start_listen(WorkerArgs.from_cli([*args, "--log-level", "WARNING"]))


RUNNERS: dict[str, Callable[[int], None]] = {
    "arq": lambda _n: run_arq(),
    "arq-tuned": lambda _n: run_arq(tuned=True),
    "rq": lambda _n: run_rq(),
    "dramatiq": run_dramatiq,
    "taskiq": run_taskiq,
}

if __name__ == "__main__":
    RUNNERS[sys.argv[1]](int(sys.argv[2]) if len(sys.argv) > 2 else 1)
