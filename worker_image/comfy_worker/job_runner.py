"""Runs one hub job on ComfyUI and turns what happened into the hub's terms.

The run: subscribe to our own prompt id (chosen before submitting, so no early event is missed),
`POST /prompt`, relay progress, and wait for the end. The end is read from `/history/{id}`, which
is the authoritative record; events only say when to look. A watchdog looks anyway when the
socket is silent or dropped, and tells "still queued or running" (keep waiting) from "ComfyUI
forgot it" (it restarted) and from "ComfyUI does not answer" (it died).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from wgpu_protocol.messages import (
    Completed,
    Failed,
    JobAssigned,
    JobError,
)

from .comfy_client import (
    DISCONNECTED,
    IMAGE_FRAME,
    ComfyClient,
    ComfyError,
    ComfyEvents,
    ComfyUnreachable,
    PromptRejected,
)
from .config import WorkerConfig
from .inputs import InputUnavailable, place_inputs, remove_inputs, rewrite
from .outputs import OutputSource, collect, unique_name

__all__ = ["JobRunner", "Outcome", "unique_name"]

log = logging.getLogger(__name__)

END_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
PROGRESS_EVENTS = frozenset(
    {"progress", "progress_state", "executing", "executed", "execution_cached"}
)
# ComfyUI took the prompt from its queue and runs it (the job goes assigned -> running).
EXECUTION_START = "execution_start"
_POKE = "wgpu.poke"  # pseudo event: something changed outside (cancel, ComfyUI died); look now
_OOM_MARKERS = ("outofmemory", "out of memory", "allocation on device")
# The node whose images arrive only as binary WebSocket frames.
WEBSOCKET_SAVER = "SaveImageWebsocket"
# How long an interrupted (cancelled, timed out) run may take to stop before we report anyway.
INTERRUPT_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to tell the hub: the outputs to relay first (streamed in chunks when delivered; a
    Completed gets their refs then) and the final message. `spool_dir` holds SaveImageWebsocket
    images until the hub has them."""

    final: Completed | Failed
    sources: tuple[OutputSource, ...] = ()
    spool_dir: str | None = None


class _RunEnded(Exception):
    """Internal: the run is over without a history record; `error` says why."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


SendStarted = Callable[[str], Awaitable[None]]
SendProgress = Callable[[str | None, float, float], Awaitable[None]]


class JobRunner:
    """One job's run. `cancel()` and `poke()` may be called from elsewhere while `run()` waits."""

    def __init__(
        self,
        job: JobAssigned,
        client: ComfyClient,
        events: ComfyEvents,
        config: WorkerConfig,
        on_started: SendStarted,
        on_progress: SendProgress,
        on_running: SendStarted | None = None,
    ) -> None:
        self.job = job
        self._client = client
        self._events = events
        self._config = config
        self._on_started = on_started
        self._on_progress = on_progress
        self._on_running = on_running
        self.executing = False  # ComfyUI began executing our prompt (told once via on_running)
        self.prompt_id = uuid.uuid4().hex
        self._queue = events.subscribe(self.prompt_id)
        self._submitted = False
        self._stop_reason: str | None = None  # "cancelled" or "timeout" once we interrupted
        self._stop_requested_at: float | None = None
        self._pending_stop: str | None = None
        self._spool_dir: str | None = None
        self._tracker: ProgressTracker | None = None
        self._ws_images: list[tuple[str, str, str]] = []  # (node_id, image type, path)

    # -- control from outside ---------------------------------------------------------------

    def cancel(self, reason: str = "cancelled") -> None:
        """The hub cancelled the job: interrupt it in ComfyUI (soon, from `run`)."""
        if self._pending_stop is None and self._stop_reason is None:
            self._pending_stop = reason
        self.poke()

    def poke(self) -> None:
        """Make the run look at ComfyUI now instead of at the next watchdog tick."""
        self._queue.put_nowait((_POKE, {}))

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except asyncio.CancelledError:
            # The job was taken from us (hub gave it away, or shutdown): stop it in ComfyUI.
            if self._submitted:
                await asyncio.shield(self._stop_in_comfyui())
            raise
        finally:
            self._events.unsubscribe(self.prompt_id)
            if self.job.inputs:
                await asyncio.shield(remove_inputs(self._config, self.job.job_id))

    async def _run(self) -> Outcome:
        job = self.job
        if self._pending_stop is not None:
            return self._fail(self._pending_stop, "the job was cancelled before it started", False)
        workflow = job.workflow
        if job.inputs:
            try:
                placed = await place_inputs(self._client, self._config, job.job_id, job.inputs)
            except InputUnavailable as exc:
                return self._fail("input_unavailable", str(exc), True)
            except ComfyUnreachable as exc:
                return self._fail("comfyui_unavailable", f"uploading inputs: {exc}", True)
            except ComfyError as exc:
                return self._fail("input_unavailable", f"uploading inputs: {exc}", True)
            workflow = rewrite(workflow, placed)
        # Events go only to a connected socket: give it a moment, the watchdog covers the rest.
        await self._events.wait_connected(2.0)
        self._submitted = True  # from here on a cancellation must try to stop it in ComfyUI
        try:
            submitted = await self._client.submit_prompt(
                workflow, self._events.client_id, self.prompt_id
            )
        except PromptRejected as rejected:
            message, node_id = describe_rejection(rejected.body)
            return self._fail("validation_error", message, False, node_id)
        except ComfyUnreachable as exc:
            return self._fail("comfyui_unavailable", f"ComfyUI did not answer: {exc}", True)
        except ComfyError as exc:
            return self._fail("comfyui_error", str(exc), True)
        actual = submitted.prompt_id
        if actual != self.prompt_id:  # a ComfyUI that ignores client-chosen ids
            self._events.unsubscribe(self.prompt_id)
            self.prompt_id = actual
            self._queue = self._events.subscribe(actual)
        if submitted.node_errors and not job.allow_partial:
            # ComfyUI would run only the valid outputs: never a partial result unasked for.
            await self._stop_in_comfyui()
            message, node_id = describe_rejection(
                {
                    "error": {"type": "prompt_outputs_failed_validation"},
                    "node_errors": submitted.node_errors,
                }
            )
            message += ' (send "allow_partial": true to run the valid outputs anyway)'
            return self._fail("validation_error", message, False, node_id)
        log.info("job %s (attempt %s) running as prompt %s", job.job_id, job.attempt, actual)
        await self._on_started(actual)
        try:
            entry = await self._wait_for_end()
        except _RunEnded as ended:
            return Outcome(Failed(job.job_id, job.token, ended.error))
        return await self._outcome_from_history(entry)

    def _fail(
        self, kind: str, message: str, retryable: bool, node_id: str | None = None
    ) -> Outcome:
        log.info("job %s failed: %s: %s", self.job.job_id, kind, message)
        error = JobError(kind, message[:10_000], node_id, retryable)
        return Outcome(Failed(self.job.job_id, self.job.token, error))

    async def _wait_for_end(self) -> dict[str, Any]:
        config = self._config
        tracker = ProgressTracker(self.job.workflow)
        self._tracker = tracker
        throttle = _Throttle(config.progress_interval_s)
        deadline = time.monotonic() + self.job.timeout_s if self.job.timeout_s > 0 else None
        # With the socket open, its events say when to look (the watchdog covers silence and
        # a drop says so); without it, look right away: the run may be over already.
        check_at = time.monotonic()
        if self._events.connected:
            check_at = max(self._events.last_frame_at, check_at) + config.watchdog_s
        end_seen = False
        unreachable_since: float | None = None
        lost_count = 0
        while True:
            now = time.monotonic()
            wake = min(t for t in (check_at, throttle.flush_at, deadline) if t is not None)
            try:
                # asyncio.timeout, not wait_for: wait_for can swallow a cancellation (3.11).
                async with asyncio.timeout(max(0.0, wake - now)):
                    kind, data = await self._queue.get()
            except TimeoutError:
                kind, data = "", {}
            now = time.monotonic()
            if kind == EXECUTION_START or (kind in PROGRESS_EVENTS and not self.executing):
                # Any sign of our prompt running says so too (a missed execution_start frame).
                await self._executing()
            if (kind in PROGRESS_EVENTS and kind != "executing") or (
                kind == "executing" and data.get("node") is not None
            ):
                if tracker.update(kind, data):
                    throttle.offer(tracker.snapshot())
            elif kind in END_EVENTS or kind == "executing":
                end_seen = True
                check_at = now
                throttle.clear()  # the result comes next, after its own 100 %
            elif kind in (DISCONNECTED, _POKE):
                check_at = now
            elif kind == IMAGE_FRAME:
                await self._spool_image(data)
            # Events that came together (a fast node's burst) make one update: the latest.
            if self._queue.empty() and (pending := throttle.take_due(now)) is not None:
                await self._on_progress(*pending)
            if self._pending_stop is not None:
                await self._interrupt(self._pending_stop)
                check_at = now
            if deadline is not None and now >= deadline and self._stop_reason is None:
                await self._interrupt("timeout")
                check_at = now
            stop_at = self._stop_requested_at
            if stop_at is not None and now - stop_at > INTERRUPT_WAIT_S:
                raise _RunEnded(self._stopped_error())
            if now < check_at:
                continue
            # Look at ComfyUI: queue first, then history (a run leaves the queue only once its
            # history is written, so this order never misses one that finishes in between).
            # After an end event the record is most likely written already: one request.
            try:
                if end_seen:
                    entry = await self._client.history(self.prompt_id)
                    if entry is not None:
                        await self._executing()  # the end came without any of our events
                        return entry
                queue = await self._client.queue()
                entry = (
                    None if self.prompt_id in queue else await self._client.history(self.prompt_id)
                )
            except (ComfyUnreachable, ComfyError) as exc:
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= config.comfyui_lost_s:
                    raise _RunEnded(
                        JobError("comfyui_crashed", f"ComfyUI stopped answering: {exc}", None, True)
                    ) from None
                check_at = now + min(0.25, config.comfyui_lost_s / 4)
                continue
            unreachable_since = None
            if self.prompt_id in queue.running or entry is not None:
                await self._executing()  # the watchdog saw it run (or end) without our events
            if entry is not None:
                return entry
            if self.prompt_id not in queue:
                # Neither queued nor in history: deleted by our cancel, or ComfyUI restarted.
                lost_count += 1
                if self._stop_reason is not None:
                    raise _RunEnded(self._stopped_error())
                if lost_count >= 2:
                    raise _RunEnded(
                        JobError(
                            "comfyui_crashed",
                            "ComfyUI no longer knows the prompt (it restarted mid-run)",
                            None,
                            True,
                        )
                    )
                check_at = now + 0.1
                continue
            lost_count = 0
            if end_seen or self._stop_reason is not None:
                check_at = now + 0.05  # the end event came; the history record is moments away
            elif not self._events.connected:
                check_at = now + min(1.0, config.watchdog_s)
            else:
                check_at = max(self._events.last_frame_at, now) + config.watchdog_s

    async def _executing(self) -> None:
        if not self.executing:
            self.executing = True
            if self._on_running is not None:
                await self._on_running(self.prompt_id)

    async def _interrupt(self, reason: str) -> None:
        self._pending_stop = None
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_requested_at = time.monotonic()
            log.info("job %s: interrupting prompt %s (%s)", self.job.job_id, self.prompt_id, reason)
            await self._stop_in_comfyui()

    async def _stop_in_comfyui(self) -> None:
        # Delete first if still pending (it then never starts), then interrupt if running.
        for action in (self._client.delete_pending, self._client.interrupt):
            try:
                await action(self.prompt_id)
            except (ComfyUnreachable, ComfyError) as exc:
                log.warning("could not stop prompt %s in ComfyUI: %s", self.prompt_id, exc)

    def _stopped_error(self) -> JobError:
        if self._stop_reason == "timeout":
            return JobError(
                "timeout",
                f"the job ran longer than its timeout of {self.job.timeout_s:g} s",
                None,
                False,
            )
        return JobError("cancelled", "the job was cancelled", None, False)

    # -- the end, from the history record ---------------------------------------------------

    async def _outcome_from_history(self, entry: dict[str, Any]) -> Outcome:
        job = self.job
        if self._stop_reason is not None:
            return Outcome(Failed(job.job_id, job.token, self._stopped_error()))
        status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
        assert isinstance(status, dict)
        messages = _messages(status.get("messages"))
        if "execution_error" in messages:
            error = classify_execution_error(messages["execution_error"])
            if error.type == "out_of_memory":
                await self._free_memory()
            log.info("job %s failed: %s", job.job_id, error.message)
            return Outcome(Failed(job.job_id, job.token, error))
        if "execution_interrupted" in messages:
            return self._fail("interrupted", "the run was interrupted inside ComfyUI", True)
        status_str = status.get("status_str")
        if status_str not in (None, "success"):
            return self._fail("execution_error", f"ComfyUI reported status {status_str!r}", False)
        # The last update is never throttled away: 100 % goes out before the result.
        total = self._tracker.total if self._tracker is not None else 1.0
        await self._on_progress(None, total, total)
        sources, results = collect(entry.get("outputs"), self._ws_images)
        log.info("job %s succeeded with %d output(s)", job.job_id, len(sources))
        return Outcome(
            Completed(job.job_id, job.token, (), results=results),
            tuple(sources),
            self._spool_dir,
        )

    async def _spool_image(self, data: dict[str, Any]) -> None:
        """Keep a SaveImageWebsocket image (its only copy) on local disk until it is relayed;
        previews of other nodes (samplers) are not outputs."""
        node_id = data.get("node_id")
        node = self.job.workflow.get(str(node_id)) if node_id is not None else None
        if not isinstance(node, dict) or node.get("class_type") != WEBSOCKET_SAVER:
            return
        if self._spool_dir is None:
            self._spool_dir = await asyncio.to_thread(
                tempfile.mkdtemp, prefix=f"wgpu-{self.job.job_id[:40]}-"
            )
        path = os.path.join(self._spool_dir, f"{len(self._ws_images):05}")
        await asyncio.to_thread(_write, path, data["data"])
        self._ws_images.append((str(node_id), str(data.get("image_type")), path))

    async def _free_memory(self) -> None:
        # After an OOM, later runs keep failing until models are unloaded.
        with contextlib.suppress(ComfyUnreachable, ComfyError):
            await self._client.free_memory()


# ----------------------------------------------------------------------------- pure helpers


def _messages(raw: Any) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], dict):
                found[str(item[0])] = item[1]
    return found


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)


def output_files(outputs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every file in a history record's `outputs`: (node id, {filename, subfolder, type})."""
    files: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(outputs, dict):
        return files
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        for items in node_output.values():  # "images", "gifs", "audio", ...
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict) and isinstance(item.get("filename"), str):
                        files.append((str(node_id), item))
    return files


def is_out_of_memory(exception_type: str, message: str) -> bool:
    text = f"{exception_type} {message}".lower()
    return any(marker in text for marker in _OOM_MARKERS)


def classify_execution_error(data: dict[str, Any]) -> JobError:
    node_id = data.get("node_id")
    node_type = data.get("node_type") or "?"
    exc_type = str(data.get("exception_type") or "Exception")
    exc_message = str(data.get("exception_message") or "").strip()
    where = f"node {node_id} ({node_type})"
    if is_out_of_memory(exc_type, exc_message):
        message = f"{where} ran out of GPU memory: {exc_type}: {exc_message}"
        return JobError("out_of_memory", message[:10_000], _opt_str(node_id), True)
    message = f"{where} raised {exc_type}: {exc_message}"
    return JobError("execution_error", message[:10_000], _opt_str(node_id), False)


def describe_rejection(body: dict[str, Any]) -> tuple[str, str | None]:
    """(one-line message naming node and input, first node id) for a 400 from /prompt."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(error, dict)
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    assert isinstance(node_errors, dict)
    parts: list[str] = []
    first_node: str | None = None
    for node_id, node_error in node_errors.items():
        if not isinstance(node_error, dict):
            continue
        first_node = first_node or str(node_id)
        class_type = node_error.get("class_type", "?")
        for item in node_error.get("errors") or []:
            if not isinstance(item, dict):
                continue
            extra = item.get("extra_info") if isinstance(item.get("extra_info"), dict) else {}
            assert isinstance(extra, dict)
            input_name = extra.get("input_name")
            details = item.get("details")
            text = f"node {node_id} ({class_type})"
            if input_name:
                text += f" input {input_name!r}"
            text += f": {item.get('message', 'invalid')}"
            if details and details != input_name:
                text += f" ({details})"
            parts.append(text)
    if not parts:
        text = str(error.get("message") or "ComfyUI rejected the workflow")
        details = error.get("details")
        if details:
            text += f" ({details})"
            match = re.search(r"#([^']+)'", str(details))
            if match:
                first_node = match.group(1)
        parts.append(text)
    kind = str(error.get("type") or "invalid_prompt")
    return f"{kind}: " + "; ".join(parts), first_node


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# Node classes whose run is a known number of progress steps: {class: input holding the count}.
# Such a node weighs its steps in the overall figure (a 25-step sampler moves it smoothly).
STEP_INPUTS = {
    "KSampler": "steps",
    "KSamplerAdvanced": "steps",
    "WgpuSimSleep": "steps",
}


def node_weights(workflow: dict[str, Any]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for node_id, node in workflow.items():
        weight = 1.0
        if isinstance(node, dict):
            step_input = STEP_INPUTS.get(str(node.get("class_type")))
            inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
            steps = inputs.get(step_input) if step_input and isinstance(inputs, dict) else None
            if isinstance(steps, int | float) and not isinstance(steps, bool) and steps > 1:
                weight = float(min(steps, 10_000))
        weights[str(node_id)] = weight
    return weights


class ProgressTracker:
    """Turns ComfyUI's per-node events into one overall figure: value = the weights of finished
    nodes plus the running node's fraction of its weight, max = all weights (a node weighs 1, a
    sampler its steps). Monotone, whatever the event mix."""

    def __init__(self, workflow: dict[str, Any] | int) -> None:
        if isinstance(workflow, int):
            workflow = {str(i): {} for i in range(workflow)}
        self.weights = node_weights(workflow)
        self.total = max(sum(self.weights.values()), 1.0)
        self.done: set[str] = set()
        self.current: str | None = None
        self.fraction = 0.0
        self._high = 0.0
        self._last: tuple[str | None, float, float] | None = None

    def update(self, kind: str, data: dict[str, Any]) -> bool:
        if kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list):
                self.done.update(str(n) for n in nodes)
        elif kind == "executing":
            self._start(data.get("node"))
        elif kind == "progress":
            self._start(data.get("node") or self.current)
            value, maximum = _number(data.get("value")), _number(data.get("max"))
            if value is not None and maximum is not None and maximum > 0:
                self.fraction = min(max(value / maximum, 0.0), 1.0)
        elif kind == "executed":
            node = data.get("node")
            if node is not None:
                self.done.add(str(node))
        elif kind == "progress_state":
            nodes = data.get("nodes")
            if isinstance(nodes, dict):
                for node_id, state in nodes.items():
                    if isinstance(state, dict) and state.get("state") == "finished":
                        self.done.add(str(node_id))
        snapshot = self.snapshot()
        changed = snapshot != self._last
        self._last = snapshot
        return changed

    def _start(self, node: Any) -> None:
        if node is None:
            return
        node = str(node)
        if node != self.current:
            if self.current is not None:
                self.done.add(self.current)  # ComfyUI runs one node at a time
            self.current = node
            self.fraction = 0.0

    def snapshot(self) -> tuple[str | None, float, float]:
        running = 0.0
        if self.current and self.current not in self.done:
            running = self.fraction * self.weights.get(self.current, 1.0)
        finished = sum(self.weights.get(node, 1.0) for node in self.done)
        self._high = max(self._high, min(finished + running, self.total))
        return self.current, round(self._high, 4), float(self.total)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class _Throttle:
    """Keeps at most one message per interval; the latest offered one wins and is not lost."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._last_sent = -1e9
        self._pending: tuple[str | None, float, float] | None = None

    @property
    def flush_at(self) -> float | None:
        return None if self._pending is None else self._last_sent + self._interval

    def offer(self, item: tuple[str | None, float, float]) -> None:
        self._pending = item

    def clear(self) -> None:
        """Drop the held message (a later one supersedes it)."""
        self._pending = None

    def take_due(self, now: float) -> tuple[str | None, float, float] | None:
        if self._pending is None or now < self._last_sent + self._interval:
            return None
        item, self._pending = self._pending, None
        self._last_sent = now
        return item
