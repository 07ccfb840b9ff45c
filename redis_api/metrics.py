"""Prometheus text exposition, by hand (no client library needed for four metrics)."""

from __future__ import annotations

from bisect import bisect_left

# Dispatch latency buckets in seconds: from well under a Redis round trip to a slow queue.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


# delivered; retry (failed, tried again later); gave_up (failed, no attempts left); refused (an
# unsafe target, never sent).
WEBHOOK_OUTCOMES = ("delivered", "retry", "gave_up", "refused")


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class HubMetrics:
    """Counters of this hub process; gauges of the queue come from Redis at scrape time."""

    def __init__(self) -> None:
        self.dispatch_latency = Histogram()
        self.dispatched = 0
        self.completed = 0
        self.failed = 0
        self.refused_reports = 0
        self.bad_messages = 0
        self.webhooks: dict[str, int] = dict.fromkeys(WEBHOOK_OUTCOMES, 0)

    def webhook(self, outcome: str) -> None:
        self.webhooks[outcome] = self.webhooks.get(outcome, 0) + 1

    def render(self, jobs_by_state: dict[str, int], workers_connected: int) -> str:
        lines = [
            "# HELP wgpu_jobs Jobs in Redis per state (all hubs).",
            "# TYPE wgpu_jobs gauge",
            *(f'wgpu_jobs{{state="{state}"}} {n}' for state, n in jobs_by_state.items()),
            "# HELP wgpu_workers_connected Worker sockets connected to this hub.",
            "# TYPE wgpu_workers_connected gauge",
            f"wgpu_workers_connected {workers_connected}",
            "# HELP wgpu_dispatch_latency_seconds Time from enqueue to claim, per claim.",
            "# TYPE wgpu_dispatch_latency_seconds histogram",
            *self.dispatch_latency.render("wgpu_dispatch_latency_seconds"),
            "# HELP wgpu_jobs_dispatched_total Jobs this hub sent to workers.",
            "# TYPE wgpu_jobs_dispatched_total counter",
            f"wgpu_jobs_dispatched_total {self.dispatched}",
            "# HELP wgpu_jobs_completed_total Completions this hub recorded.",
            "# TYPE wgpu_jobs_completed_total counter",
            f"wgpu_jobs_completed_total {self.completed}",
            "# HELP wgpu_jobs_failed_total Failures this hub recorded (retried or final).",
            "# TYPE wgpu_jobs_failed_total counter",
            f"wgpu_jobs_failed_total {self.failed}",
            "# HELP wgpu_reports_refused_total Worker reports refused (stale token, finished).",
            "# TYPE wgpu_reports_refused_total counter",
            f"wgpu_reports_refused_total {self.refused_reports}",
            "# HELP wgpu_bad_messages_total Invalid worker messages answered with an error.",
            "# TYPE wgpu_bad_messages_total counter",
            f"wgpu_bad_messages_total {self.bad_messages}",
            "# HELP wgpu_webhook_deliveries_total Webhook attempts by this hub, by outcome.",
            "# TYPE wgpu_webhook_deliveries_total counter",
            *(
                f'wgpu_webhook_deliveries_total{{outcome="{outcome}"}} {n}'
                for outcome, n in self.webhooks.items()
            ),
        ]
        return "\n".join(lines) + "\n"
