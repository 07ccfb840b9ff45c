"""One anchor worker process: `python -m bench.anchor_worker arq|rq|dramatiq` (BENCH_REDIS_URL
set). One job at a time per process, like one GPU worker; library logging left at WARNING."""

from __future__ import annotations

import signal
import sys
import threading


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


def run_dramatiq() -> None:
    import dramatiq

    from bench.anchor_jobs import dramatiq_noop  # noqa: F401 - declares the actor

    worker = dramatiq.Worker(dramatiq.get_broker(), worker_threads=1)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    worker.start()
    stopped.wait()
    worker.stop()


RUNNERS = {
    "arq": run_arq,
    "arq-tuned": lambda: run_arq(tuned=True),
    "rq": run_rq,
    "dramatiq": run_dramatiq,
}

if __name__ == "__main__":
    RUNNERS[sys.argv[1]]()
