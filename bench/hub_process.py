"""The hub as a separate process for benchmarks: `python -m bench.hub_process`, configured by the
hub's own environment variables (REDIS_URL, REDIS_API_PORT, ...). With BENCH_PROFILE=FILE it
runs under pyinstrument (wall time) and writes an HTML profile when it stops (SIGTERM); a FILE
ending in .prof runs it under cProfile instead (CPU time). With BENCH_GC_LOG=FILE it appends every
garbage collection over 1 ms to FILE (when, generation, ms)."""

from __future__ import annotations

import os
from pathlib import Path

from redis_api.config import HubConfig
from redis_api.server import run_hub


def log_gc_pauses(path: str) -> None:
    """Append "wall_time generation milliseconds" for every collection over 1 ms to `path`."""
    import gc
    import time

    started: list[float] = [0.0]
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process' life

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms > 1.0:
            out.write(f"{time.time():.3f} {info['generation']} {ms:.1f}\n")

    gc.callbacks.append(callback)


def main() -> None:
    config = HubConfig.from_env()
    if os.environ.get("BENCH_GC_LOG"):
        log_gc_pauses(os.environ["BENCH_GC_LOG"])
    profile_path = os.environ.get("BENCH_PROFILE")
    if not profile_path:
        run_hub(config)
        return
    if profile_path.endswith(".prof"):
        # cProfile: exact call counts (calls per job), at a higher cost per call, timed in CPU
        # time: on a loaded machine wall time charges a send() with the time the hub spends
        # preempted by the process it woke (the receiver), which puts socket writes on top.
        import cProfile
        import time

        cprofile = cProfile.Profile(time.process_time)
        try:
            cprofile.runcall(run_hub, config)
        finally:
            cprofile.dump_stats(profile_path)
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        run_hub(config)
    finally:
        profiler.stop()
        Path(profile_path).write_text(profiler.output_html())
        Path(profile_path).with_suffix(".txt").write_text(
            profiler.output_text(unicode=False, show_all=False)
        )


if __name__ == "__main__":
    main()
