"""The machine's load while benchmarks run: sampled when the run starts, every `interval_s` in
between and when it ends, so that the results can say how busy the machine was (absolute
figures on a shared 2-core machine swing with it; only ratios from one run count)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

from bench.stats import percentile


@dataclass(frozen=True)
class LoadSample:
    when_utc: str
    one: float
    five: float
    fifteen: float
    label: str = ""


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


class LoadSampler:
    """`with LoadSampler() as load:` samples at entry, every `interval_s` from a daemon thread,
    at each `load.sample(label)` call and at exit."""

    def __init__(
        self,
        interval_s: float = 30.0,
        read: Callable[[], tuple[float, float, float]] = os.getloadavg,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.interval_s = interval_s
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[LoadSample] = []

    def sample(self, label: str = "") -> LoadSample:
        one, five, fifteen = self._read()
        taken = LoadSample(self._clock(), one, five, fifteen, label)
        with self._lock:
            self.samples.append(taken)
        return taken

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample("periodic")

    def __enter__(self) -> LoadSampler:
        self.sample("start")
        self._thread = threading.Thread(target=self._loop, name="load-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample("end")

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return summarize(list(self.samples))


def summarize(samples: Sequence[LoadSample]) -> dict[str, Any]:
    """The 1-minute load average at the first and last sample, its min, median and max over
    all of them, and every sample (as dicts, for JSON)."""
    ones = [s.one for s in samples]
    return {
        "start": ones[0] if ones else None,
        "end": ones[-1] if ones else None,
        "min": min(ones) if ones else None,
        "median": percentile(ones, 50) if ones else None,
        "max": max(ones) if ones else None,
        "samples": [asdict(s) for s in samples],
    }


def describe(load: dict[str, Any]) -> str:
    """One line for a README: "1-minute load average 3.3 at the start, 2.1-11.0 during ..."."""
    if not load or load.get("start") is None:
        return "load average not recorded"
    count = len(load.get("samples", []))
    return (
        f"1-minute load average {load['start']:.1f} at the start, {load['min']:.1f}-"
        f"{load['max']:.1f} (median {load['median']:.1f}) over {count} samples,"
        f" {load['end']:.1f} at the end"
    )
