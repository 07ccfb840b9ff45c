"""Prometheus text exposition, by hand (no client library needed for four metrics)."""

from __future__ import annotations

from bisect import bisect_left

from wgpu_protocol.rest import HELD_STATES

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


# Job durations and queue waits: from a fraction of a second to hours. The scripts that end an
# attempt count into these in Redis (lua/common.lua observe_attempt; the loader hands them over).
DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# The outcome of an ended attempt: the job's status after it (succeeded, failed, dead,
# cancelled, timed_out), `retried` (queued again after a failure or a lost lease) or `released`
# (handed back unfinished, not counted: a drain, a stopping worker).


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labelled(name: str, histograms: dict[str, Histogram]) -> list[str]:
    lines: list[str] = []
    for outcome in sorted(histograms):
        lines += histograms[outcome].render(name, f'outcome="{_label(outcome)}"')
    return lines


class QueueGauges:
    """What an autoscaler reads (KEDA's Prometheus scaler): queued jobs per priority, per
    tenant (API key name) and per requirement pool, and workers per state; all hubs, from
    Redis at scrape time."""

    def __init__(
        self,
        by_priority: dict[str, int],
        by_tenant: dict[str, int],
        by_pool: dict[str, int],
        scanned: int,
        workers: dict[str, int],
    ) -> None:
        self.by_priority = by_priority
        self.by_tenant = by_tenant
        self.by_pool = by_pool
        self.scanned = scanned
        self.workers = workers

    def render(self) -> list[str]:
        def gauge(name: str, label: str, values: dict[str, int], help_: str) -> list[str]:
            return [
                f"# HELP {name} {help_}",
                f"# TYPE {name} gauge",
                *(f'{name}{{{label}="{_label(k)}"}} {n}' for k, n in sorted(values.items())),
            ]

        return [
            *gauge("wgpu_queue_depth", "priority", self.by_priority, "Queued jobs per priority."),
            *gauge(
                "wgpu_queue_depth_by_tenant",
                "tenant",
                self.by_tenant,
                "Queued jobs per API key name ('' without keys).",
            ),
            *gauge(
                "wgpu_queue_depth_by_pool",
                "pool",
                self.by_pool,
                "Queued jobs per requirement pool (jobs that need the same models and GPU).",
            ),
            "# HELP wgpu_queue_depth_scanned Queued jobs the breakdowns above counted (a cap).",
            "# TYPE wgpu_queue_depth_scanned gauge",
            f"wgpu_queue_depth_scanned {self.scanned}",
            *gauge("wgpu_workers", "state", self.workers, "Registered workers per state."),
        ]


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    @classmethod
    def of_counts(cls, buckets: tuple[float, ...], counts: list[int], total: float) -> Histogram:
        """One counted elsewhere (in Redis): `counts` per bucket, the last one past them all."""
        histogram = cls(buckets)
        histogram.counts = counts
        histogram.total = total
        histogram.count = sum(counts)
        return histogram

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        """`labels`: e.g. 'outcome="failed"', added to every sample."""
        lines, running = [], 0
        extra = labels + "," if labels else ""
        plain = f"{{{labels}}}" if labels else ""
        for bound, n in zip(self.buckets, self.counts, strict=False):
            running += n
            lines.append(f'{name}_bucket{{{extra}le="{bound}"}} {running}')
        lines.append(f'{name}_bucket{{{extra}le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{plain} {self.total:.6f}")
        lines.append(f"{name}_count{plain} {self.count}")
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

    def render(
        self,
        jobs_by_state: dict[str, int],
        workers_connected: int,
        queue: QueueGauges | None = None,
        attempts: AttemptHistograms | None = None,
    ) -> str:
        attempts = attempts or AttemptHistograms({}, {})
        lines = [
            "# HELP wgpu_jobs Jobs in Redis per state (all hubs).",
            "# TYPE wgpu_jobs gauge",
            *(f'wgpu_jobs{{state="{state}"}} {n}' for state, n in jobs_by_state.items()),
            "# HELP wgpu_jobs_held Jobs a worker holds (assigned + running), for autoscalers.",
            "# TYPE wgpu_jobs_held gauge",
            f"wgpu_jobs_held {sum(jobs_by_state.get(s, 0) for s in HELD_STATES)}",
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
            "# HELP wgpu_job_queue_wait_seconds Enqueue to execution_start (or to the claim, if it"
            " never ran), per attempt ended, by outcome (all hubs).",
            "# TYPE wgpu_job_queue_wait_seconds histogram",
            *_labelled("wgpu_job_queue_wait_seconds", attempts.queue_wait),
            "# HELP wgpu_job_duration_seconds execution_start (or the claim) to the attempt's end,"
            " by outcome (all hubs).",
            "# TYPE wgpu_job_duration_seconds histogram",
            *_labelled("wgpu_job_duration_seconds", attempts.duration),
            *(queue.render() if queue is not None else []),
        ]
        return "\n".join(lines) + "\n"


class AttemptHistograms:
    """Queue wait and run time of every ended attempt, by outcome, as the scripts that end
    attempts counted them in Redis (so every attempt counts once, whichever hub ended it)."""

    def __init__(self, queue_wait: dict[str, Histogram], duration: dict[str, Histogram]) -> None:
        self.queue_wait = queue_wait
        self.duration = duration

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> AttemptHistograms:
        """From the Redis hash: `<outcome>:<w|d>:<bucket, 1-based>` counts, `...:sum` in ms."""
        size = len(DURATION_BUCKETS) + 1
        counts: dict[tuple[str, str], list[int]] = {}
        sums: dict[tuple[str, str], float] = {}
        for name, value in fields.items():
            outcome, _, rest = name.partition(":")
            kind, _, slot = rest.partition(":")
            if kind not in ("w", "d"):
                continue
            if slot == "sum":
                sums[(outcome, kind)] = int(value) / 1000
            elif slot.isdigit() and 1 <= int(slot) <= size:
                counts.setdefault((outcome, kind), [0] * size)[int(slot) - 1] = int(value)
        made = {
            key: Histogram.of_counts(DURATION_BUCKETS, n, sums.get(key, 0.0))
            for key, n in counts.items()
        }
        return cls(
            {outcome: h for (outcome, kind), h in made.items() if kind == "w"},
            {outcome: h for (outcome, kind), h in made.items() if kind == "d"},
        )


def lua_buckets_ms() -> str:
    """DURATION_BUCKETS for the scripts (lua/common.lua observe_attempt), in ms."""
    return ", ".join(str(round(b * 1000)) for b in DURATION_BUCKETS)
