"""The worker: ties the hub link, ComfyUI, the job runner, supervision and health together.

Promises kept here:
- one job at a time in ComfyUI, taken only while ComfyUI answers and the worker is not stopping;
- pipelining (`config.pipeline`, to a hub whose welcome offers it): once ComfyUI is done with a
  job that has outputs and their relay takes more than PIPELINE_AFTER_S (or an output is at
  least PIPELINE_AFTER_BYTES, known from its size before it is relayed), the worker says `ready`
  naming it as `relaying` and relays its outputs while ComfyUI runs the next job (a quicker
  relay goes out with its result, which asks for the next job: `ready_next`). At most two jobs
  are held: one relaying and one running (or waiting to relay: one relay at a time, so memory
  stays bounded); a `cancel` of a relaying job stops its relay;
- a job's result is held until the hub acks it; after a reconnect the hello names the held jobs,
  and a result is sent again only if the hub kept that job's lease (`welcome.resumed`,
  `welcome.relaying_resumed`); otherwise the job was given away: it is stopped in ComfyUI and
  dropped, so it never runs twice;
- SIGTERM: no new work, the held jobs get `grace_s` to finish, else they are handed back
  (`released`); then `bye` and a clean exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from wgpu_protocol.messages import (
    Ack,
    Bye,
    Cancel,
    Completed,
    ErrorReply,
    ExecutionStarted,
    Failed,
    Heartbeat,
    Hello,
    HubMessage,
    JobAssigned,
    JobError,
    Models,
    Progress,
    Ready,
    Released,
    RunningJob,
    Started,
    Unavailable,
)

from .comfy_client import ComfyClient, ComfyError, ComfyEvents, ComfyUnreachable
from .config import WorkerConfig
from .gpu_stats import GpuProbe
from .health import HealthState, write_health
from .hub_link import HubLink, HubSession
from .inventory import ModelInventory
from .job_runner import JobRunner, Outcome
from .outputs import OutputTooLarge, OutputUnavailable, stream_output
from .supervisor import ComfySupervisor
from .version import running_version

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 2.0
RELEASE_ACK_WAIT_S = 3.0
# The hub answered a result with `error: unavailable` (its Redis is down): resend after this
# backoff, doubling up to the cap, instead of waiting the whole ack timeout.
RESEND_FIRST_S = 0.2
RESEND_MAX_S = 2.0
# Pipelining asks for the next job once a relay has taken this long (at most this much GPU time
# lost per job to a relay that ends later; a lone job's quick relay saves a claim).
PIPELINE_AFTER_S = 0.01
# ... or at once for an output of this size: its relay takes longer than that anyway (~5 ms per
# MB here), and waiting for the timer would idle the GPU for it.
PIPELINE_AFTER_BYTES = 1 << 20


@dataclass(eq=False)
class HeldJob:
    """A job from its assignment until the hub acks its result (or takes it back)."""

    assignment: JobAssigned
    runner: JobRunner
    task: asyncio.Task[None] | None = None
    outcome: Outcome | None = None
    given_away: bool = False  # the hub did not resume it after a reconnect
    # The socket whose hub was asked for the next job with this result (completed.ready_next).
    asked_next_on: HubSession | None = None
    # The socket whose hub heard `ready` naming this job as relaying (pipelining).
    announced_relaying_on: HubSession | None = None
    # The hub ended the job (its `cancel` reason) after ComfyUI was done with it: its outputs
    # are not relayed (any more), so that the next job's relay does not wait for them.
    stop_relay: str | None = None
    relay_task: asyncio.Task[bool] | None = None
    hub_unavailable: asyncio.Event = field(default_factory=asyncio.Event)  # hub could not record
    ack: asyncio.Future[Ack] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def ref(self) -> RunningJob:
        return RunningJob(self.assignment.job_id, self.assignment.token)


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.client_id = f"wgpu-{config.worker_id}-{uuid.uuid4().hex[:8]}"
        self._version = running_version()  # once: the code this process loaded
        self._boot_id = uuid.uuid4().hex  # tells the hub a restart from a reconnect
        self._inventory: ModelInventory | None = None
        self._rescan = asyncio.Event()
        self._gpu = GpuProbe(config.gpu_id)
        self._link = HubLink(
            config, self._hello, self._on_session, self._on_message, self._on_link_closed
        )
        self._stop_requested = asyncio.Event()
        self._force_stop = asyncio.Event()
        self._stopping = False
        self._comfy_ok = False
        self._comfy_changed = asyncio.Event()
        self._health_due = asyncio.Event()  # the health file is to be rewritten
        self._health_write: asyncio.Future[None] | None = None
        # The job taken last, until it relays (ComfyUI runs it, or it waits for the relay slot).
        self._running: HeldJob | None = None
        # The job whose outcome (outputs, then the final report) is being delivered.
        self._relaying: HeldJob | None = None
        self._relay_slot = asyncio.Lock()  # one relay at a time
        self._releasing: HeldJob | None = None  # a job being handed back at shutdown
        self._announce_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._supervisor: ComfySupervisor | None = None
        self._client: ComfyClient | None = None
        self._events: ComfyEvents | None = None
        self.results_recorded = 0  # results (success or failure) the hub recorded
        self.results_resent = 0  # resends because the hub said it was unavailable

    # -- public ----------------------------------------------------------------------------

    @property
    def hub_link(self) -> HubLink:
        return self._link

    @property
    def hub_connected(self) -> bool:
        return self._link.session is not None

    @property
    def comfyui_ok(self) -> bool:
        return self._comfy_ok

    def request_stop(self) -> None:
        """Begin a graceful stop (SIGTERM). A second request skips the grace period."""
        if self._stop_requested.is_set():
            self._force_stop.set()
        self._stop_requested.set()

    async def run(self) -> None:
        cfg = self.config
        log.info(
            "worker %s starting: hub %s, ComfyUI %s", cfg.worker_id, cfg.hub_url, cfg.comfyui_url
        )
        # No total timeout: the event socket lives for hours. Each request sets its own.
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=5)
        ) as http:
            self._client = ComfyClient(http, cfg.comfyui_url)
            self._events = ComfyEvents(http, cfg.comfyui_url, self.client_id)
            self._inventory = ModelInventory(self._client, cfg.loaders, cfg.warm_models)
            if cfg.comfyui_cmd:
                env = dict(os.environ, EXECUTION_SERVICE_PORT=str(cfg.comfyui_port))
                self._supervisor = ComfySupervisor(cfg.comfyui_cmd, env, self._on_comfy_exit)
                self._spawn(_forever("supervisor", self._supervisor.run))
            self._spawn(_forever("comfyui events", self._events.run))
            self._spawn(_forever("comfyui probe", self._watch_comfyui))
            self._spawn(_forever("hub link", self._link.run))
            self._spawn(_forever("heartbeats", self._heartbeats))
            self._spawn(_forever("model scans", self._model_scans))
            self._spawn(_forever("health file", self._health_loop))
            try:
                await self._stop_requested.wait()
                await self._shutdown()
            finally:
                for task in self._tasks:
                    task.cancel()
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=5.0)
                if self._supervisor is not None:
                    await self._supervisor.stop()
                await self._write_last_health()
        log.info("worker %s stopped", cfg.worker_id)

    # -- hub link callbacks ----------------------------------------------------------------

    def _hello(self) -> Hello:
        return Hello(
            worker_id=self.config.worker_id,
            machine_id=self.config.machine_id,
            gpu=self._gpu.info(),
            version=self._version,
            running=_ref(self._running),
            boot_id=self._boot_id,
            relaying=_ref(self._relaying),
            execution_started=True,
        )

    def _on_session(self, session: HubSession) -> None:
        hello, welcome = session.hello, session.welcome
        for held, named, resumed in (
            (self._running, hello.running, welcome.resumed),
            (self._relaying, hello.relaying, welcome.relaying_resumed),
        ):
            if held is not None and named == held.ref and not resumed:
                # The hub gave the job away while we were cut off: it must not finish here too.
                log.warning("hub did not resume job %s: dropping it", held.assignment.job_id)
                held.given_away = True
                if held.outcome is None and held.task is not None:
                    held.task.cancel()  # the runner stops the prompt in ComfyUI
            elif (
                held is not None
                and held is self._running
                and named == held.ref
                and held.runner.executing
            ):
                # The hub kept the job; it may not have heard that ComfyUI began executing it.
                job = held.assignment
                self._spawn(
                    self._send_now(ExecutionStarted(job.job_id, job.token, held.runner.prompt_id))
                )
        self._spawn(self._announce())
        self._write_health()

    def _held(self) -> list[HeldJob]:
        return [h for h in (self._running, self._relaying, self._releasing) if h is not None]

    def _find(self, job_id: str, token: int) -> HeldJob | None:
        ref = RunningJob(job_id, token)
        return next((held for held in self._held() if held.ref == ref), None)

    def _pipelining(self, session: HubSession) -> bool:
        return self.config.pipeline and session.welcome.pipelining

    def _on_link_closed(self) -> None:
        self._write_health()

    async def _on_message(self, session: HubSession, message: HubMessage) -> None:
        if isinstance(message, JobAssigned):
            await self._take_job(session, message)
        elif isinstance(message, Cancel):
            held = self._find(message.job_id, message.token)
            if held is not None:
                log.info("hub cancelled job %s (%s)", message.job_id, message.reason)
                held.runner.cancel()
                if held.outcome is not None:
                    held.stop_relay = message.reason
                    if held.relay_task is not None:
                        held.relay_task.cancel()
        elif isinstance(message, Ack):
            held = self._find(message.job_id, message.token)
            if (
                held is not None
                and message.of in ("completed", "failed", "released")
                and not held.ack.done()
            ):
                if message.ok and message.of == "completed" and held.asked_next_on is session:
                    # The hub claims our next job with this result and may send it right after
                    # this ack: be free for it now, and do not say `ready` again.
                    if self._relaying is held:
                        self._relaying = None
                    session.announced = "ready"
                held.ack.set_result(message)
        elif isinstance(message, ErrorReply) and message.code == "models_stale":
            session.models_sent = None  # the hub lost what we told it: tell it again
            self._spawn(self._send_models())
        elif isinstance(message, ErrorReply):
            log.warning("hub error: %s: %s", message.code, message.message)
            if message.code == "unavailable":
                for held in self._held():
                    if held.outcome is not None:
                        held.hub_unavailable.set()  # a result (or a frame of it) not recorded

    async def _take_job(self, session: HubSession, job: JobAssigned) -> None:
        refusal = None
        if self._stopping:
            refusal = "worker shutting down"
        elif self._running is not None:
            refusal = f"worker is busy with job {self._running.assignment.job_id}"
        elif self._relaying is not None and not self._pipelining(session):
            refusal = f"worker is relaying the outputs of job {self._relaying.assignment.job_id}"
        elif not self._comfy_ok:
            refusal = "ComfyUI is not answering"
        if refusal is not None:
            log.warning("handing back job %s: %s", job.job_id, refusal)
            await session.send(Released(job.job_id, job.token, refusal))
            session.announced = None
            self._spawn(self._announce())
            return
        assert self._client is not None and self._events is not None
        session.announced = "busy"
        runner = JobRunner(
            job,
            self._client,
            self._events,
            self.config,
            on_started=lambda prompt_id: self._on_started(job, prompt_id),
            on_progress=lambda node, value, maximum: self._send_now(
                Progress(job.job_id, job.token, node, value, maximum, _class_of(job, node))
            ),
            on_running=lambda prompt_id: self._send_now(
                ExecutionStarted(job.job_id, job.token, prompt_id)
            ),
        )
        held = HeldJob(job, runner)
        self._running = held
        held.task = asyncio.create_task(self._job_main(held), name=f"job-{job.job_id}")
        self._write_health()

    # -- one job ---------------------------------------------------------------------------

    async def _job_main(self, held: HeldJob) -> None:
        job = held.assignment
        try:
            try:
                held.outcome = await held.runner.run()
            except Exception as exc:  # a bug here must still end the job, not strand it
                log.exception("job %s: the worker failed while running it", job.job_id)
                error = JobError("worker_error", f"{type(exc).__name__}: {exc}", None, True)
                held.outcome = Outcome(Failed(job.job_id, job.token, error))
            async with self._relay_slot:  # the previous job's relay ends first
                self._relaying = held
                if self._running is held:
                    self._running = None
                self._write_health()
                await self._deliver(held)
        finally:
            spool = held.outcome.spool_dir if held.outcome is not None else None
            if spool is not None:
                await asyncio.to_thread(shutil.rmtree, spool, True)
            if self._running is held:
                self._running = None
            if self._relaying is held:
                self._relaying = None
            self._write_health()
            if not self._stopping:
                self._spawn(self._announce())

    async def _deliver(self, held: HeldJob) -> None:
        """Send the outcome until the hub acks it, across reconnects, unless it is given away."""
        outcome = held.outcome
        assert outcome is not None
        resend_delay = RESEND_FIRST_S
        while not held.given_away:
            session = await self._link.wait_session()
            if held.given_away:
                break
            held.hub_unavailable.clear()
            if not await self._send_outcome(session, held):
                # The socket is going: wait for the link to notice, then for the next one.
                if not await _wait_event(session.closed, 5.0):
                    await session.close()
                continue
            ack_wait: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(held.ack))
            closed_wait: asyncio.Future[Any] = asyncio.ensure_future(session.closed.wait())
            unavailable_wait = asyncio.ensure_future(held.hub_unavailable.wait())
            try:
                await asyncio.wait(
                    {ack_wait, closed_wait, unavailable_wait},
                    timeout=self.config.ack_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not held.ack.done() and held.hub_unavailable.is_set() and session.is_open:
                    # Its Redis is down: back off briefly (an ack or a close ends the wait).
                    await asyncio.wait(
                        {ack_wait, closed_wait},
                        timeout=resend_delay,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not held.ack.done() and session.is_open:
                        log.info(
                            "hub could not record job %s (Redis unavailable): resending",
                            held.assignment.job_id,
                        )
                        resend_delay = min(resend_delay * 2, RESEND_MAX_S)
                        self.results_resent += 1
                        continue
            finally:
                ack_wait.cancel()
                closed_wait.cancel()
                unavailable_wait.cancel()
            if held.ack.done():
                ack = held.ack.result()
                if ack.ok:
                    self.results_recorded += 1
                    log.info("hub recorded job %s as %s", ack.job_id, ack.of)
                elif ack.reason == "already_finished":  # e.g. cancelled by a client meanwhile
                    log.info("job %s had already ended on the hub", ack.job_id)
                else:
                    log.warning("hub refused the result of job %s: %s", ack.job_id, ack.reason)
                return
            if session.is_open:
                log.warning(
                    "no ack for job %s within %.0fs: reconnecting to resend",
                    held.assignment.job_id,
                    self.config.ack_timeout_s,
                )
                await session.close()
                await session.closed.wait()
        log.info("dropped the result of job %s: the hub gave it away", held.assignment.job_id)

    async def _relay_outputs(self, session: HubSession, held: HeldJob) -> bool:
        """Stream the outcome's outputs to the hub; afterwards its final message has their refs
        (or is a failure saying which output could not be relayed, or that the hub ended the
        job meanwhile). False: the socket closed meanwhile."""
        if held.stop_relay is None:
            large = asyncio.Event()  # an output of PIPELINE_AFTER_BYTES or more is relayed
            relay = asyncio.ensure_future(self._stream_outputs(session, held, large))
            large_seen = asyncio.ensure_future(large.wait())
            held.relay_task = relay
            try:
                # Pipelining: a relay that takes a while has the next job asked for now, so
                # that ComfyUI starts it meanwhile; a quick one goes out with its result, which
                # asks for it itself (ready_next): one claim per job, not two.
                await asyncio.wait(
                    {relay, large_seen},
                    timeout=PIPELINE_AFTER_S,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not relay.done():
                    await self._announce()
                    await asyncio.wait({relay})
            except asyncio.CancelledError:
                relay.cancel()  # this job's task was cancelled (shutdown, given away)
                raise
            finally:
                large_seen.cancel()
                held.relay_task = None
            if not relay.cancelled():
                return relay.result()
        outcome = held.outcome
        job = held.assignment
        if outcome is not None and outcome.sources and isinstance(outcome.final, Completed):
            log.info("job %s: the hub ended it (%s): relay stopped", job.job_id, held.stop_relay)
            message = f"the hub ended the job ({held.stop_relay}) while its outputs were relayed"
            error = JobError("cancelled", message, None, False)
            held.outcome = Outcome(Failed(job.job_id, job.token, error), (), outcome.spool_dir)
        return True

    async def _stream_outputs(
        self, session: HubSession, held: HeldJob, large: asyncio.Event
    ) -> bool:
        outcome = held.outcome
        assert outcome is not None and self._client is not None
        final = outcome.final
        if not outcome.sources or not isinstance(final, Completed):
            return True
        job = held.assignment
        refs = []
        failure: JobError | None = None

        def note_length(length: int | None) -> None:
            if length is not None and length >= PIPELINE_AFTER_BYTES:
                large.set()

        for source in outcome.sources:
            try:
                ref = await stream_output(
                    source,
                    self._client,
                    job.job_id,
                    job.token,
                    self.config.max_output_bytes,
                    session.send_bytes,
                    note_length,
                )
            except OutputTooLarge as exc:
                failure = JobError("output_too_large", str(exc), source.node_id, False)
            except ComfyUnreachable as exc:
                failure = JobError("comfyui_crashed", f"relaying {source.name}: {exc}", None, True)
            except (ComfyError, OutputUnavailable) as exc:
                failure = JobError("output_missing", str(exc), source.node_id, True)
            else:
                if ref is None:
                    return False
                refs.append(ref)
                continue
            break
        if failure is not None:
            log.info("job %s failed: %s: %s", job.job_id, failure.type, failure.message)
            held.outcome = Outcome(Failed(job.job_id, job.token, failure), (), outcome.spool_dir)
        else:
            # Sources stay: a resend (the hub could not record them) streams them again.
            done = replace(final, outputs=tuple(refs))
            held.outcome = Outcome(done, outcome.sources, outcome.spool_dir)
        return True

    async def _send_outcome(self, session: HubSession, held: HeldJob) -> bool:
        if not await self._relay_outputs(session, held):
            return False
        outcome = held.outcome
        assert outcome is not None
        final = outcome.final
        held.asked_next_on = None
        if (
            isinstance(final, Completed)
            and session.welcome.ready_next
            and self._comfy_ok
            and not self._stopping
            and self._running is None  # holds nothing else
            and held.announced_relaying_on is not session  # it asked already
        ):
            final = replace(final, ready_next=True)  # saves the ack -> ready round trip
            held.asked_next_on = session
        return await session.send(self._with_warm(session, final))

    async def _on_started(self, job: JobAssigned, prompt_id: str) -> None:
        # ComfyUI accepted the prompt (validation passed): it loads the job's models now.
        if self._inventory is not None:
            self._inventory.note_job(job.workflow)
        await self._send_now(Started(job.job_id, job.token, prompt_id))

    def _with_warm(self, session: HubSession, final: Completed | Failed) -> Completed | Failed:
        """The result carries the warm set when this hub connection does not have it yet."""
        if self._inventory is None:
            return final
        warm = self._inventory.warm_report()
        if session.warm_sent == warm:
            return final
        session.warm_sent = warm
        return replace(final, warm=warm)

    async def _send_now(self, message: Started | Progress | ExecutionStarted) -> None:
        # Best effort: progress lost while cut off is not worth keeping (execution_started is
        # sent again after a resume, see _on_session).
        session = self._link.session
        if session is None:
            return
        if isinstance(message, ExecutionStarted) and not session.welcome.execution_started:
            return  # an older hub: it takes `started` for the execution start
        await session.send(message)

    # -- availability, heartbeats, ComfyUI state, health -----------------------------------

    async def _announce(self) -> None:
        """Tell the hub whether to send work, once per change."""
        async with self._announce_lock:
            session = self._link.session
            if session is None or self._running is not None:
                return
            relaying = self._relaying
            if relaying is not None and not self._may_pipeline(session, relaying):
                return  # its final report comes now (with ready_next), or it is not ours
            message: Ready | Unavailable
            if self._stopping:
                message = Unavailable("worker shutting down")
            elif not self._comfy_ok:
                message = Unavailable(f"ComfyUI at {self.config.comfyui_url} is not answering")
            else:
                message = Ready(relaying=relaying.ref if relaying is not None else None)
                # The hub places jobs by our models: it hears them before the first `ready`.
                await self._send_models_on(session)
            if session.announced != message.type:
                session.announced = message.type
                if relaying is not None:
                    relaying.announced_relaying_on = session
                await session.send(message)

    def _may_pipeline(self, session: HubSession, held: HeldJob) -> bool:
        """Whether to take the next job while this one's outputs are relayed."""
        outcome = held.outcome
        return (
            self._pipelining(session)
            and not self._stopping
            and self._comfy_ok
            and not held.given_away
            and outcome is not None
            and isinstance(outcome.final, Completed)
            and bool(outcome.sources)
        )

    async def _send_models(self) -> None:
        session = self._link.session
        if session is not None:
            async with self._announce_lock:
                await self._send_models_on(session)

    async def _send_models_on(self, session: HubSession) -> None:
        """Send our models to this hub connection unless it has them already."""
        inventory = self._inventory
        if inventory is None:
            return
        await inventory.read_once()
        warm = inventory.warm_report()
        if inventory.files is None or (
            session.models_sent == inventory.digest and session.warm_sent == warm
        ):
            return
        message = Models(inventory.digest, inventory.files, warm)
        if await session.send(message):
            session.models_sent, session.warm_sent = inventory.digest, warm

    async def _model_scans(self) -> None:
        """Re-read ComfyUI's models every model_scan_s (and after a restart, see
        _set_comfy_ok); the hub hears them only when they changed."""
        assert self._inventory is not None
        while True:
            await _wait_event(self._rescan, self.config.model_scan_s)
            self._rescan.clear()
            if self._comfy_ok:
                await self._inventory.scan()
                await self._send_models()  # when the files or the warm set changed

    async def _heartbeats(self) -> None:
        while True:
            session = await self._link.wait_session()
            interval = session.welcome.heartbeat_s or self.config.heartbeat_s
            while session.is_open:
                if await _wait_event(session.closed, interval):
                    break
                digest = session.models_sent or ""
                heartbeat = Heartbeat(
                    self._comfy_ok,
                    self._gpu.stats(),
                    _ref(self._running),
                    models_digest=digest,
                    relaying=_ref(self._relaying),
                )
                await session.send(heartbeat)

    async def _watch_comfyui(self) -> None:
        assert self._client is not None
        while True:
            ok = await self._client.is_up()
            if ok != self._comfy_ok:
                self._set_comfy_ok(ok)
            self._comfy_changed.clear()
            await _wait_event(self._comfy_changed, self.config.comfyui_check_s)

    def _set_comfy_ok(self, ok: bool) -> None:
        if ok == self._comfy_ok:
            return
        self._comfy_ok = ok
        log.info("ComfyUI at %s is %s", self.config.comfyui_url, "up" if ok else "DOWN")
        if self._inventory is not None and ok:
            # A (re)started ComfyUI has nothing loaded and may have other files.
            self._inventory.forget_loaded()
            self._rescan.set()
        held = self._running
        if not ok and held is not None:
            held.runner.poke()
        self._write_health()
        self._spawn(self._announce())

    def _on_comfy_exit(self, code: int) -> None:
        # Faster than waiting for the next probe: the running job fails now.
        self._set_comfy_ok(False)
        self._comfy_changed.set()

    async def _health_loop(self) -> None:
        while True:
            self._health_due.clear()
            state = self._health_state()
            # In a thread: a rename over the old file can wait for the disk (ext4 flushes the
            # new file's data first), milliseconds the relay of a job must not wait for.
            self._health_write = asyncio.ensure_future(
                asyncio.to_thread(write_health, self.config.health_file, state)
            )
            try:
                await asyncio.shield(self._health_write)
            except OSError as exc:
                log.debug("could not write the health file: %s", exc)
            await _wait_event(self._health_due, HEALTH_INTERVAL_S)

    def _write_health(self) -> None:
        """Have the health file rewritten soon (changes meanwhile share one write)."""
        self._health_due.set()

    def _health_state(self) -> HealthState:
        held = self._running or self._relaying
        return HealthState(
            worker_id=self.config.worker_id,
            hub_connected=self.hub_connected,
            comfyui_ok=self._comfy_ok,
            job_id=held.assignment.job_id if held is not None else None,
            updated_at=time.time(),
            pid=os.getpid(),
        )

    async def _write_last_health(self) -> None:
        """The final state, once the health loop has stopped and its last write is done."""
        if self._health_write is not None:
            with contextlib.suppress(OSError):
                await self._health_write
        try:
            write_health(self.config.health_file, self._health_state())
        except OSError as exc:
            log.debug("could not write the health file: %s", exc)

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        log.info("stopping: taking no new work")
        self._stopping = True
        await self._announce()
        held_jobs = [h for h in (self._relaying, self._running) if h is not None]
        tasks = {h.task for h in held_jobs if h.task is not None}
        if tasks:
            names = ", ".join(h.assignment.job_id for h in held_jobs)
            log.info("waiting up to %.0fs for job(s) %s", self.config.grace_s, names)
            force = asyncio.ensure_future(self._force_stop.wait())
            deadline = asyncio.get_running_loop().time() + self.config.grace_s
            try:
                while not force.done() and not all(t.done() for t in tasks):
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    await asyncio.wait(
                        {force, *(t for t in tasks if not t.done())},
                        timeout=left,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                force.cancel()
            for held in held_jobs:
                if held.task is not None and not held.task.done():
                    await self._release(held)
            await self._announce()  # now idle: say "unavailable" rather than nothing
        session = self._link.session
        if session is not None:
            await session.send(Bye())
            await session.close()

    async def _release(self, held: HeldJob) -> None:
        """Hand an unfinished job back to the hub (requeued without counting as a failure)."""
        assert held.task is not None
        held.task.cancel()  # stops the prompt in ComfyUI
        with contextlib.suppress(asyncio.CancelledError):
            await held.task
        session = self._link.session
        if session is None or held.given_away:
            return
        log.info("handing job %s back to the hub", held.assignment.job_id)
        held.ack = asyncio.get_running_loop().create_future()
        self._releasing = held  # so that the ack is matched
        try:
            released = Released(
                held.assignment.job_id, held.assignment.token, "worker shutting down"
            )
            if await session.send(released):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RELEASE_ACK_WAIT_S):
                        await asyncio.shield(held.ack)
        finally:
            self._releasing = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ref(held: HeldJob | None) -> RunningJob | None:
    """How a hello or heartbeat names a held job (not one the hub gave away)."""
    return held.ref if held is not None and not held.given_away else None


def _class_of(job: JobAssigned, node: str | None) -> str | None:
    entry = job.workflow.get(node) if node is not None else None
    return str(entry.get("class_type")) if isinstance(entry, dict) else None


async def _wait_event(event: asyncio.Event, within_s: float) -> bool:
    """True if `event` is set within `within_s`. asyncio.timeout, not wait_for: under 3.11
    wait_for can swallow a cancellation that races with the event, and the task never ends."""
    try:
        async with asyncio.timeout(within_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def _forever(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a loop that should never end; if a bug ends it, log that and start it again."""
    while True:
        try:
            await loop()
        except Exception:
            log.exception("%s loop failed; restarting it", name)
        await asyncio.sleep(1.0)
