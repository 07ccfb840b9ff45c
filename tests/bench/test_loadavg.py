"""bench.loadavg: the load average kept at the start, during and at the end of a run."""

from __future__ import annotations

import itertools

from bench.loadavg import LoadSampler, describe, summarize


def test_the_sampler_keeps_the_first_labelled_and_last_samples() -> None:
    loads = iter([(1.0, 0, 0), (4.0, 0, 0), (2.0, 0, 0)])
    clock = (f"t{i}" for i in itertools.count())
    with LoadSampler(interval_s=3600, read=lambda: next(loads), clock=lambda: next(clock)) as s:
        s.sample("dispatch start")
    summary = s.summary()
    assert [x["label"] for x in summary["samples"]] == ["start", "dispatch start", "end"]
    assert (summary["start"], summary["end"], summary["min"], summary["max"]) == (
        1.0,
        2.0,
        1.0,
        4.0,
    )
    assert summary["median"] == 2.0
    assert describe(summary) == (
        "1-minute load average 1.0 at the start, 1.0-4.0 (median 2.0) over 3 samples,"
        " 2.0 at the end"
    )


def test_no_samples_says_so() -> None:
    assert describe(summarize([])) == "load average not recorded"
