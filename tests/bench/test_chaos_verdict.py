"""The chaos run's verdict on jobs whose record expired (404) before the final check read them:
known successes count as succeeded, anything else stays lost (bench/chaos.py settle_expired)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.chaos import settle_expired


def _final(**statuses: str) -> dict[str, dict[str, Any]]:
    return {job_id: {"id": job_id, "status": status} for job_id, status in statuses.items()}


def test_an_acked_success_whose_result_expired_is_a_success() -> None:
    final = _final(a="succeeded", b="missing")
    assert settle_expired(final, Counter(a=1, b=1), Counter(a=1, b=1), hub_successes=2) == (1, 0)
    assert final["b"]["status"] == "succeeded"


def test_a_success_whose_ack_was_lost_counts_when_the_hub_counted_it() -> None:
    # b's worker sent `completed`, the hub recorded it, the ack was lost to a kill.
    final = _final(a="succeeded", b="missing", c="missing")
    assert settle_expired(final, Counter(a=1, c=1), Counter(a=1, b=1, c=1), 3) == (2, 1)
    assert [job["status"] for job in final.values()] == ["succeeded"] * 3


def test_a_sent_completion_the_hub_did_not_count_stays_lost() -> None:
    # b's `completed` was sent but the hub recorded only a's success: b is not known to be done.
    final = _final(a="succeeded", b="missing")
    assert settle_expired(final, Counter(a=1), Counter(a=1, b=1), hub_successes=1) == (0, 0)
    assert final["b"]["status"] == "missing"


def test_a_job_no_worker_completed_stays_lost_whatever_the_count() -> None:
    final = _final(a="succeeded", b="missing")
    assert settle_expired(final, Counter(a=1), Counter(a=1), hub_successes=2) == (0, 0)
    assert final["b"]["status"] == "missing"
