"""The worker WebSocket: one `WorkerSession` per connected worker.

Every frame is validated by wgpu_protocol before anything happens; a bad frame gets an `error`
reply and changes nothing. Reports about a job carry its fencing token and are checked by the
store's scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from wgpu_protocol import models
from wgpu_protocol.frames import encode_ack as ack_frame
from wgpu_protocol.frames import encode_job
from wgpu_protocol.messages import (
    MAX_ID_LENGTH,
    MAX_TEXT_FRAME_BYTES,
    PROTOCOL_VERSION,
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
    Models,
    Progress,
    ProtocolError,
    Ready,
    Released,
    Started,
    Unavailable,
    Welcome,
    WorkerMessage,
    decode_output_frame,
    decode_worker_message,
    encode,
)
from wgpu_protocol.output_chunks import (
    MAX_CHUNK_FRAME_BYTES,
    OutputChunk,
    decode_chunk,
    is_chunk_frame,
)

from .auth import worker_ok
from .errors import (
    BadRequest,
    RedisOutOfMemory,
    StorageError,
    StoreUnavailable,
    TooManyStreams,
    WorkerConnected,
)
from .jobs import output_url, progress_json
from .progress import ProgressThrottle
from .runtime import HUB_KEY, Hub
from .storage import OutputWriter
from .store import CancelNotice, Claim, ClaimMiss
from .ws_frames import text_frames

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
# How long ComfyUI's execution start may wait for the job's next script before it is recorded
# alone (the job shows `running` at most this late; running_ms is when it was heard).
RUNNING_HOLD_S = 0.25
MAX_FRAME_BYTES = max(MAX_TEXT_FRAME_BYTES, MAX_CHUNK_FRAME_BYTES)
# Frames written together only while the socket has nothing buffered and they are this small:
# bigger or backed-up writes go through aiohttp, which applies its flow control.
COALESCE_MAX_BYTES = 64 * 1024
# Failures that say something about the worker (its ComfyUI, GPU, custom nodes), not about the
# workflow: K of them in a row quarantine the worker.
WORKER_FAULTS = frozenset(
    {
        "execution_error",
        "out_of_memory",
        "comfyui_error",
        "comfyui_crashed",
        "output_missing",
        "worker_error",
    }
)
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@")


@dataclass(frozen=True, slots=True)
class Received:
    """An output the hub stored for a job: its size and sha256 (hex)."""

    size: int
    sha256: str


@dataclass(eq=False)
class _Incoming:
    writer: OutputWriter
    written: int = 0
    hash: Any = field(default_factory=hashlib.sha256)


def job_frame(claim: Claim) -> str:
    """The `job` message for a claim, the workflow (and extras) spliced in as stored."""
    return encode_job(
        claim.job_id,
        claim.token,
        claim.workflow_json,
        claim.attempt,
        claim.timeout_s,
        claim.extras_json,
    )


_CONTENT_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[\w.+-]+")


def safe_content_type(value: str) -> str:
    """The worker's content type if it is a plain type/subtype, else a safe default."""
    return value if _CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


def _unavailable(exc: StoreUnavailable) -> str:
    return "redis out of memory" if isinstance(exc, RedisOutOfMemory) else "Redis is unavailable"


async def handle_worker_socket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    worker_id = request.match_info["worker_id"]
    if not worker_id or len(worker_id) > MAX_ID_LENGTH or not set(worker_id) <= _ID_CHARS:
        raise web.HTTPBadRequest(reason="worker id must be 1-200 of [A-Za-z0-9-_.:@]")
    if hub.config.worker_token and not worker_ok(request, hub.config.worker_token, worker_id):
        raise web.HTTPUnauthorized(
            reason="a valid credential for this worker id is required (WORKER_CREDENTIAL, or "
            "WORKER_TOKEN to derive it)"
        )
    live = hub.dispatcher.sessions.get(worker_id)
    if isinstance(live, WorkerSession) and live.is_open:
        # A live socket keeps its worker id: a second one is refused, not allowed to displace
        # it (and take over its job). One silent past its lease, or that does not answer a
        # ping now, is dead but not yet closed: it is dropped. (Sockets on other hubs: hello.)
        if live.heard_within(hub.config.lease_s) and await live.probe():
            raise web.HTTPConflict(reason=f"worker {worker_id} is connected already")
        live.drop("replaced by a newer connection")
    if hub.pending_sockets >= hub.config.max_pending_sockets:
        raise TooManyStreams(
            f"{hub.pending_sockets} worker sockets are waiting to say hello; retry later"
        )
    ws = web.WebSocketResponse(
        # Every frame, text or output chunk, is at most 1 MiB (a chunk frame's header included,
        # wgpu_protocol.output_chunks): a larger one is refused from its header, before any of
        # it is buffered (aiohttp refuses a payload of max_msg_size or more).
        max_msg_size=MAX_FRAME_BYTES + 1,
        compress=False,
        autoping=False,  # pings answered and pongs seen by the session (probe)
        heartbeat=None,
    )
    hub.pending_sockets += 1
    pending = True
    session = WorkerSession(hub, worker_id, ws, request.transport)
    done = asyncio.Event()
    try:
        await ws.prepare(request)
        hub.open_sockets[ws] = done

        def welcomed() -> None:
            nonlocal pending
            if pending:
                pending = False
                hub.pending_sockets -= 1

        session.on_welcome = welcomed
        await session.run()
    finally:
        if pending:
            hub.pending_sockets -= 1
        done.set()
        hub.open_sockets.pop(ws, None)
    return ws


async def on_hub_request(hub: Hub, data: str) -> None:
    """A request from hello.lua on another hub about a socket this hub holds: `probe` (a second
    socket wants its worker id: ping this one, drop it if silent) or `close` (it was replaced,
    silent past its lease)."""
    verb, _, rest = data.partition("\n")
    worker_id, _, session_id = rest.partition("\n")
    session = hub.dispatcher.sessions.get(worker_id)
    if not isinstance(session, WorkerSession) or session.session_id != session_id:
        return
    if verb == "probe":
        await session.probe()
    elif verb == "close":
        session.drop("replaced on another hub (silent past its lease)")


class WorkerSession:
    def __init__(
        self,
        hub: Hub,
        worker_id: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.hub = hub
        self.transport = transport
        self.store = hub.store
        self.config = hub.config
        self.worker_id = worker_id
        self.session_id = uuid.uuid4().hex
        self.ws = ws
        self.said_bye = False
        self.welcomed = False
        self.on_welcome: Any = None  # called once, at welcome
        self.last_heard = time.monotonic()
        # Output files received per (job_id, token): name -> size.
        self._received: dict[tuple[str, int], dict[str, Received]] = {}
        # Outputs arriving in chunks: (job_id, token, name) -> the transfer so far.
        self._incoming: dict[tuple[str, int, str], _Incoming] = {}
        # The jobs sent on this socket that it still holds (at most two: the last one sent,
        # and with pipelining the one before it, relaying), each with the prompt id of its
        # `started`, held back to go with that job's next script (progress/completed/failed):
        # one script per job fewer.
        self._held_prompts: dict[tuple[str, int], str] = {}
        # Pipelining: the finished job whose outputs the worker still relays (`ready.relaying`);
        # claims for this worker keep it as the worker's own.
        self.relaying: tuple[str, int] | None = None
        # The worker said (hello.execution_started) that it reports ComfyUI's execution_start;
        # an older one does not, and its `started` moves the job to running instead.
        self._reports_execution = False
        self._heard = asyncio.Event()  # set by every frame, a pong included
        self._probe: asyncio.Future[bool] | None = None
        # ComfyUI's execution start of a job this socket holds, held back like `started`'s
        # prompt id: (prompt id, when heard, the message it came as). Recorded by the job's next
        # fenced script or, if none comes within RUNNING_HOLD_S, on its own (issue #16: one
        # script and one Redis round trip per job fewer).
        self._held_running: dict[tuple[str, int], tuple[str, float, str]] = {}
        # The RUNNING_HOLD_S timer of each held execution start, cancelled when the job's next
        # script takes it or the socket closes (no write for a gone socket).
        self._running_timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        # Which progress steps of this socket's jobs are recorded in Redis (progress.py).
        self._progress = ProgressThrottle(hub.config.progress_persist_s, self._record_held)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_open(self) -> bool:
        return not self.ws.closed

    def heard_within(self, seconds: float) -> bool:
        return time.monotonic() - self.last_heard <= seconds

    async def probe(self) -> bool:
        """Ping the socket: True when it answers within WORKER_PING_TIMEOUT_S; else it is
        dropped as dead. Probes at the same time share one ping."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._ping(self.config.worker_ping_timeout_s))
        return await asyncio.shield(self._probe)

    async def _ping(self, timeout_s: float) -> bool:
        self._heard.clear()
        try:
            await self.ws.ping()
            async with asyncio.timeout(timeout_s):
                await self._heard.wait()
            return True
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        self.drop(f"no answer to a ping within {timeout_s:g} s")
        return False

    def drop(self, reason: str) -> None:
        """Close a socket that is dead or replaced without waiting for its closing handshake
        (a half-open connection never answers one); the session ends as after any close."""
        if self.is_open:
            log.warning("worker %s: dropping its socket: %s", self.worker_id, reason)
        if self.transport is not None:
            self.transport.abort()

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: HubMessage) -> bool:
        return await self.send_frame(encode(message))

    async def send_frame(self, text: str) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _send_texts(self, first: str, second: str) -> bool:
        """Two frames in one write where that is safe, else one after the other."""
        transport = self.transport
        data = text_frames(first, second)
        if (
            self.ws.closed
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > 0
            or len(data) > COALESCE_MAX_BYTES
        ):
            return await self.send_frame(first) and await self.send_frame(second)
        transport.write(data)
        return True

    async def deliver(self, claim: Claim, ack: str = "") -> bool:
        """The job frame, after `ack` (the report that claimed it) in one write when given."""
        # What is kept per job is bounded by the jobs the worker holds: the new one and the one
        # it still relays.
        for per_job in (self._received, self._held_prompts, self._held_running):
            for key in [k for k in per_job if k != self.relaying]:
                del per_job[key]
        self._held_prompts[(claim.job_id, claim.token)] = ""
        if ack:
            return await self._send_texts(ack, job_frame(claim))
        return await self.send_frame(job_frame(claim))

    def _report_ended(self, job_id: str, token: int) -> None:
        """A final report was handled: later `started` for that job go through Redis again."""
        self._held_prompts.pop((job_id, token), None)
        self._held_running.pop((job_id, token), None)
        self._cancel_running_timer((job_id, token))
        if self.relaying == (job_id, token):
            self.relaying = None

    def _take_prompt_id(self, job_id: str, token: int) -> str:
        """What was held back of this report's job, once: `started`'s prompt id, or with
        ComfyUI's execution start `run:<ms ago>:<prompt id>` (lua/common.lua record_held)."""
        key = (job_id, token)
        prompt_id = self._held_prompts.get(key, "")
        if prompt_id:
            self._held_prompts[key] = ""
        running = self._held_running.pop(key, None)
        if running is None:
            return prompt_id
        self._cancel_running_timer(key)
        ago_ms = max(0, int((time.monotonic() - running[1]) * 1000))
        return f"run:{ago_ms}:{prompt_id or running[0]}"

    def _cancel_running_timer(self, key: tuple[str, int]) -> None:
        timer = self._running_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _cancel_running_timers(self) -> None:
        for key in list(self._running_timers):
            self._cancel_running_timer(key)

    async def send_cancel(self, notice: CancelNotice) -> None:
        await self.send(Cancel(notice.job_id, notice.token, notice.reason))

    async def _error(self, code: str, message: str) -> None:
        self.hub.metrics.bad_messages += 1
        await self.send(ErrorReply(code, message))

    # -- life ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if not await self._greet():
                return
            async for frame in self.ws:
                self.last_heard = time.monotonic()
                self._heard.set()
                if frame.type == WSMsgType.TEXT:
                    await self._on_text(frame.data)
                elif frame.type == WSMsgType.BINARY:
                    await self._guarded(self._on_output(frame.data))
                elif frame.type == WSMsgType.PING:
                    await self.ws.pong(frame.data)
                elif frame.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            await self._closed()

    async def _greet(self) -> bool:
        """Wait for a valid hello (answering anything else with an error), then welcome."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HELLO_TIMEOUT_S
        while True:
            try:
                frame = await self.ws.receive(timeout=max(0.01, deadline - loop.time()))
            except TimeoutError:
                await self._error("hello_timeout", f"send hello within {HELLO_TIMEOUT_S:.0f} s")
                await self.ws.close()
                return False
            if frame.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                return False
            if frame.type == WSMsgType.PING:
                await self.ws.pong(frame.data)
                continue
            if frame.type == WSMsgType.PONG:
                continue
            if frame.type != WSMsgType.TEXT:
                await self._error("hello_first", "the first message must be hello")
                continue
            try:
                message = decode_worker_message(frame.data)
            except ProtocolError as exc:
                await self._error(exc.code, str(exc))
                continue
            if not isinstance(message, Hello):
                await self._error("hello_first", "the first message must be hello")
                continue
            if message.worker_id != self.worker_id:
                await self._error(
                    "bad_worker_id", f"hello.worker_id {message.worker_id!r} does not match the URL"
                )
                continue
            if message.protocol != PROTOCOL_VERSION:
                await self._error(
                    "unsupported_protocol", f"this hub speaks protocol {PROTOCOL_VERSION}"
                )
                await self.ws.close()
                return False
            try:
                return await self._welcome(message)
            except BadRequest as exc:
                await self._error("bad_message", f"hello: {exc}")
                continue
            except WorkerConnected as exc:
                log.info("worker %s: hello refused: %s", self.worker_id, exc)
                await self.send(ErrorReply("worker_connected", str(exc)))
                await self.ws.close()
                return False
            except StoreUnavailable as exc:
                self.hub.redis_failed(exc)
                await self.send(ErrorReply("unavailable", f"{_unavailable(exc)}; reconnect later"))
                await self.ws.close()
                return False

    async def _welcome(self, hello: Hello) -> bool:
        replaced = self.hub.dispatcher.register(self)
        if replaced is not None and isinstance(replaced, WorkerSession):
            # The same worker reconnected before its old socket closed: the new one wins.
            await replaced.ws.close(code=4000, message=b"replaced by a newer connection")
        running = (hello.running.job_id, hello.running.token) if hello.running else None
        relaying = (hello.relaying.job_id, hello.relaying.token) if hello.relaying else None
        resumed, relaying_resumed = await self.store.hello(
            self.worker_id,
            self.session_id,
            self.hub.hub_id,
            hello.machine_id,
            asdict(hello.gpu),
            hello.version,
            running,
            self.config.lease_ms,
            hello.boot_id,
            relaying,
        )
        self.welcomed = True
        self._reports_execution = hello.execution_started
        if self.on_welcome is not None:
            self.on_welcome()
        await self.send(
            Welcome(
                self.worker_id,
                self.config.heartbeat_s,
                self.config.lease_s,
                resumed,
                ready_next=True,
                pipelining=True,
                relaying_resumed=relaying_resumed,
                execution_started=True,
            )
        )
        log.info("worker %s connected (resumed=%s)", self.worker_id, resumed)
        return True

    async def _closed(self) -> None:
        self.hub.dispatcher.unregister(self)
        self._progress.close()
        # A held execution start dies with its socket: a worker that reconnects says it again
        # (comfy_worker resends it after a resume), one that does not loses the job anyway.
        self._cancel_running_timers()
        for incoming in self._incoming.values():
            await incoming.writer.abort()  # the worker resends from the start after a reconnect
        self._incoming.clear()
        if not self.welcomed:
            return
        grace = 0 if self.said_bye else self.config.grace_ms
        if self.hub.closing and not self.said_bye:
            grace = -1  # the hub goes away, not the worker: its lease stays as it is
        try:
            await self.store.disconnect(self.worker_id, self.session_id, grace)
        except StoreUnavailable as exc:
            # The job's own lease still expires: the reaper requeues it then.
            self.hub.redis_failed(exc)
        log.info("worker %s disconnected%s", self.worker_id, " (bye)" if self.said_bye else "")

    # -- receiving -------------------------------------------------------------------------

    async def _on_text(self, text: str) -> None:
        try:
            message = decode_worker_message(text)
        except ProtocolError as exc:
            await self._error(exc.code, str(exc))
            return
        await self._guarded(self._handle(message))

    async def _guarded(self, work: Any) -> None:
        """Run one message's work; Redis trouble or a bug answers `error` and keeps the socket."""
        try:
            await work
        except BadRequest as exc:
            log.info("worker %s: message refused: %s", self.worker_id, exc)  # no traceback
            await self._error("bad_message", str(exc))
        except StoreUnavailable as exc:
            self.hub.redis_failed(exc)
            await self.send(ErrorReply("unavailable", f"{_unavailable(exc)}; retry shortly"))
        except Exception:
            log.exception("handling a message from worker %s failed", self.worker_id)
            await self.send(ErrorReply("internal", "the hub could not handle this message"))

    async def _handle(self, message: WorkerMessage) -> None:
        match message:
            case Ready():
                relaying = message.relaying
                self.relaying = (relaying.job_id, relaying.token) if relaying else None
                await self.hub.dispatcher.want_work(self)
            case Heartbeat():
                await self._on_heartbeat(message)
            case Started():
                await self._on_started(message)
            case ExecutionStarted():
                await self._on_execution_started(message)
            case Progress():
                await self._on_progress(message)
            case Completed():
                self._progress.ended(message.job_id, message.token)
                await self._on_completed(message)
            case Failed():
                self._progress.ended(message.job_id, message.token)
                await self._on_failed(message)
            case Released():
                self._progress.ended(message.job_id, message.token)
                await self._on_released(message)
            case Models():
                await self._on_models(message)
            case Unavailable():
                self.hub.dispatcher.not_wanting(self)
                await self.store.set_worker_state(self.worker_id, self.session_id, "unavailable")
            case Bye():
                self.said_bye = True
                self.hub.dispatcher.not_wanting(self)
            case Hello():
                await self._error("already_welcomed", "hello was already answered on this socket")

    async def _on_heartbeat(self, message: Heartbeat) -> None:
        running = (message.running.job_id, message.running.token) if message.running else None
        relaying = (message.relaying.job_id, message.relaying.token) if message.relaying else None
        stats = json.dumps({k: v for k, v in asdict(message.gpu).items() if v is not None})
        refused, models_stale, relay_refused = await self.store.heartbeat(
            self.worker_id,
            self.session_id,
            running,
            self.config.lease_ms,
            stats,
            message.comfyui_ok,
            message.models_digest,
            relaying,
        )
        if models_stale:
            # The hub's record of this worker's models is not what it last sent (a lost
            # message, a Redis without that data): ask for the full list again.
            await self.send(ErrorReply("models_stale", "send your models again"))
        if refused and running:
            # The worker runs a job that is no longer its own: stop it.
            await self.send(Cancel(running[0], running[1], refused))
        if relay_refused and relaying:
            await self.send(Cancel(relaying[0], relaying[1], relay_refused))

    async def _on_started(self, message: Started) -> None:
        if not self._reports_execution:
            # An older worker never says execution_started: running from `started`, as before.
            await self._on_execution_started(
                ExecutionStarted(message.job_id, message.token, message.prompt_id), "started"
            )
            return
        key = (message.job_id, message.token)
        if key in self._held_prompts:
            # This socket's own job, claimed moments ago (so its lease is fresh): record the
            # prompt id with the job's next script, which checks the token then.
            self._held_prompts[key] = message.prompt_id
            return
        refused = await self.store.started(
            message.job_id, message.token, self.worker_id, message.prompt_id, self.config.lease_ms
        )
        await self._refuse_report(message.job_id, message.token, "started", refused)

    async def _on_execution_started(
        self, message: ExecutionStarted, of: str = "execution_started"
    ) -> None:
        key = (message.job_id, message.token)
        if key in self._held_prompts:
            # This socket's own job: assigned -> running goes with the job's next script (a
            # no-op job's completion, a sampler's first step), dated when it was heard.
            if key not in self._held_running:
                self._held_running[key] = (message.prompt_id, time.monotonic(), of)
                loop = asyncio.get_running_loop()
                self._running_timers[key] = loop.call_later(RUNNING_HOLD_S, self._running_due, key)
            return
        # Not a job handed on this socket (resumed after a reconnect): nothing held back.
        refused = await self.store.execution_started(
            message.job_id, message.token, self.worker_id, message.prompt_id, self.config.lease_ms
        )
        await self._refuse_report(message.job_id, message.token, of, refused)

    def _running_due(self, key: tuple[str, int]) -> None:
        """No script of the job came within RUNNING_HOLD_S: record its execution start now."""
        self._running_timers.pop(key, None)
        held = self._held_running.get(key)
        if held is None:
            return
        task = asyncio.create_task(self._guarded(self._record_running(key, held[2])))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_running(self, key: tuple[str, int], of: str) -> None:
        held = self._take_prompt_id(*key)
        if not held:
            return  # taken meanwhile by the job's next script
        refused = await self.store.record_held(
            key[0], key[1], self.worker_id, held, self.config.lease_ms
        )
        await self._refuse_report(key[0], key[1], of, refused)

    async def _on_progress(self, message: Progress) -> None:
        payload = progress_json(message.node, message.value, message.max, message.node_class)
        if (message.job_id, message.token) not in self._held_prompts:
            # Not a job this socket was handed (an earlier attempt's, one resumed after a
            # reconnect): each step goes through the fenced script, and live once accepted.
            if await self._record_progress(message.job_id, message.token, payload):
                self.hub.progress.publish(message.job_id, payload)
            return
        # This socket's own job under the token it was handed: live at once, recorded in
        # Redis at a throttle (the script checks the token then).
        self.hub.progress.publish(message.job_id, payload)
        final = message.max > 0 and message.value >= message.max
        if self._progress.step(message.job_id, message.token, payload, final):
            await self._record_progress(message.job_id, message.token, payload)

    async def _record_progress(self, job_id: str, token: int, payload: str) -> bool:
        refused = await self.store.progress(
            job_id,
            token,
            self.worker_id,
            payload,
            self.config.lease_ms,
            self._take_prompt_id(job_id, token),
            webhook=self.hub.webhooks.progress_due(job_id),
        )
        await self._refuse_report(job_id, token, "progress", refused)
        return not refused

    def _record_held(self, job_id: str, token: int, payload: str) -> None:
        """The throttle's interval ended with a step held back: record it now."""
        task = asyncio.create_task(self._guarded(self._record_progress(job_id, token, payload)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_failed(self, message: Failed) -> None:
        await self._drop_incoming(message.job_id, message.token)
        self._received.pop((message.job_id, message.token), None)
        error = {
            "type": message.error.type,
            "message": message.error.message,
            "node_id": message.error.node_id,
        }
        refused, status, quarantined = await self.store.fail(
            message.job_id,
            message.token,
            self.worker_id,
            error,
            message.error.retryable,
            self.config.ttl_ms,
            self._take_prompt_id(message.job_id, message.token),
            message.error.type in WORKER_FAULTS,
            self.config.quarantine_after,
            _warm_lines(message.warm),
        )
        if quarantined:
            log.warning(
                "worker %s quarantined after %d failures in a row",
                self.worker_id,
                self.config.quarantine_after,
            )
        self._report_ended(message.job_id, message.token)
        if not refused:
            self.hub.metrics.failed += 1
            log.info(
                "job %s failed on %s: %s (now %s)",
                message.job_id,
                self.worker_id,
                message.error.type,
                status,
            )
        await self._ack(message.job_id, message.token, "failed", refused)

    async def _on_released(self, message: Released) -> None:
        refused = await self.store.release(
            message.job_id, message.token, self.worker_id, message.reason
        )
        self._report_ended(message.job_id, message.token)
        await self._ack(message.job_id, message.token, "released", refused)

    async def _on_models(self, message: Models) -> None:
        files = models.flatten(message.inventory)
        await self.store.set_models(
            self.worker_id, self.session_id, message.digest, files, models.flatten(message.warm)
        )

    async def _refuse_report(self, job_id: str, token: int, of: str, refused: str) -> None:
        if not refused:
            return
        self.hub.metrics.refused_reports += 1
        await self.send(Ack(job_id, token, of, False, refused))
        if refused in ("stale_token", "already_finished"):
            await self.send(Cancel(job_id, token, refused))

    async def _ack(self, job_id: str, token: int, of: str, refused: str) -> None:
        if refused:
            self.hub.metrics.refused_reports += 1
        await self.send_frame(ack_frame(job_id, token, of, refused))

    async def _on_completed(self, message: Completed) -> None:
        received = self._received.get((message.job_id, message.token), {})
        outputs = []
        for ref in message.outputs:
            got = received.get(ref.name)
            size = got.size if got is not None else None
            if size is None:
                try:
                    size = await self.hub.storage.size(message.job_id, ref.name)
                except StorageError:
                    size = None
            if size is None:
                # Never `succeeded` without every output: the attempt fails and is retried.
                log.warning(
                    "job %s: output %r was announced but is not stored", message.job_id, ref.name
                )
                await self._fail_storage(
                    message.job_id,
                    message.token,
                    f"output {ref.name!r} was announced but is not stored",
                    "completed",
                )
                return
            sha256 = got.sha256 if got is not None else ref.sha256
            if ref.sha256 and sha256 != ref.sha256:
                await self._fail_storage(
                    message.job_id,
                    message.token,
                    f"output {ref.name!r} was stored with sha256 {sha256}, announced {ref.sha256}",
                    "completed",
                )
                return
            outputs.append(
                {
                    "name": ref.name,
                    "url": output_url(message.job_id, ref.name),
                    "size": size,
                    "content_type": safe_content_type(ref.content_type),
                    "sha256": sha256,
                    "node_id": ref.node_id,
                    "kind": ref.kind,
                    "subfolder": ref.subfolder,
                }
            )
        prompt_id = self._take_prompt_id(message.job_id, message.token)
        dispatcher = self.hub.dispatcher
        if message.ready_next and dispatcher.may_claim_with_report(self):
            # One script records the result and claims the next job; the dispatcher sends the
            # ack with that job in one write (deliver), or alone when none is claimed.
            async def report() -> tuple[str, Claim | ClaimMiss | None]:
                refused, claimed = await self.store.complete_and_claim(
                    message.job_id,
                    message.token,
                    self.worker_id,
                    outputs,
                    self.config.ttl_ms,
                    prompt_id,
                    (self.config.lease_ms, self.config.claim_options),
                    message.results,
                    _warm_lines(message.warm),
                )
                self._completed(message, refused)
                if refused:
                    self.hub.metrics.refused_reports += 1
                return refused, claimed

            def ack(refused: str) -> str:
                return ack_frame(message.job_id, message.token, "completed", refused)

            await dispatcher.report_and_claim(self, report, ack)
            return
        refused = await self.store.complete(
            message.job_id,
            message.token,
            self.worker_id,
            outputs,
            self.config.ttl_ms,
            prompt_id,
            message.results,
            _warm_lines(message.warm),
        )
        self._completed(message, refused)
        await self._ack(message.job_id, message.token, "completed", refused)

    def _completed(self, message: Completed, refused: str) -> None:
        self._report_ended(message.job_id, message.token)
        if not refused:
            self.hub.metrics.completed += 1
            self._received.pop((message.job_id, message.token), None)

    async def _on_output(self, blob: bytes) -> None:
        if is_chunk_frame(blob):
            await self._on_chunk(blob)
            return
        try:
            frame = decode_output_frame(blob)
        except ProtocolError as exc:
            await self._error(exc.code, str(exc))
            return
        if await self._output_refused(frame.job_id, frame.token, frame.name):
            return
        try:
            size = await self.hub.storage.put(frame.job_id, frame.name, frame.data)
        except StorageError as exc:
            log.warning("job %s: storing output %r failed: %s", frame.job_id, frame.name, exc)
            await self._fail_storage(
                frame.job_id, frame.token, f"storing output {frame.name!r} failed: {exc}", ""
            )
            return
        self.hub.dispatcher.storage_ok()
        digest = hashlib.sha256(frame.data).hexdigest()
        self._received.setdefault((frame.job_id, frame.token), {})[frame.name] = Received(
            size, digest
        )

    async def _output_refused(self, job_id: str, token: int, name: str) -> bool:
        """Whether the job's current attempt may not send outputs (answered with an error)."""
        refused = await self.store.output_allowed(job_id, token, self.worker_id)
        if refused:
            self.hub.metrics.refused_reports += 1
            await self.send(
                ErrorReply(refused, f"output {name!r} of job {job_id} refused: {refused}")
            )
        return bool(refused)

    async def _on_chunk(self, blob: bytes) -> None:
        """One chunk of an output: written through to storage as it comes (bounded memory),
        hashed on the way, kept under its name only when size and sha256 match."""
        try:
            chunk = decode_chunk(blob)
        except ProtocolError as exc:
            await self._error(exc.code, str(exc))
            return
        key = (chunk.job_id, chunk.token, chunk.name)
        incoming = self._incoming.get(key)
        if chunk.offset == 0:
            if incoming is not None:  # a resend from the start
                await incoming.writer.abort()
                del self._incoming[key]
            if await self._output_refused(chunk.job_id, chunk.token, chunk.name):
                return
            if chunk.last:  # the whole output in one frame (most images): one write
                await self._store_whole(chunk)
                return
            try:
                writer = await self.hub.storage.open_writer(chunk.job_id, chunk.name)
            except StorageError as exc:
                await self._fail_storage(
                    chunk.job_id, chunk.token, f"storing output {chunk.name!r} failed: {exc}", ""
                )
                return
            incoming = self._incoming[key] = _Incoming(writer)
        elif incoming is None or incoming.written != chunk.offset:
            await self._error(
                "bad_chunk", f"chunk of {chunk.name!r} at offset {chunk.offset} is out of order"
            )
            return
        if incoming.written + len(chunk.data) > self.config.max_output_bytes:
            del self._incoming[key]
            await incoming.writer.abort()
            await self._output_too_large(chunk)
            return
        try:
            await incoming.writer.write(chunk.data)
        except StorageError as exc:
            del self._incoming[key]
            await self._fail_storage(
                chunk.job_id, chunk.token, f"storing output {chunk.name!r} failed: {exc}", ""
            )
            return
        incoming.hash.update(chunk.data)
        incoming.written += len(chunk.data)
        if not chunk.last:
            return
        del self._incoming[key]
        digest = incoming.hash.hexdigest()
        if chunk.size != incoming.written or chunk.sha256 != digest:
            await incoming.writer.abort()
            await self._output_mismatch(chunk, incoming.written, digest)
            return
        try:
            await incoming.writer.commit()
        except StorageError as exc:
            await self._fail_storage(
                chunk.job_id, chunk.token, f"storing output {chunk.name!r} failed: {exc}", ""
            )
            return
        self._received.setdefault((chunk.job_id, chunk.token), {})[chunk.name] = Received(
            incoming.written, digest
        )

    async def _store_whole(self, chunk: OutputChunk) -> None:
        """An output that came as one (first and last) chunk: checked, then stored at once."""
        size = len(chunk.data)
        if size > self.config.max_output_bytes:
            await self._output_too_large(chunk)
            return
        digest = hashlib.sha256(chunk.data).hexdigest()
        if chunk.size != size or chunk.sha256 != digest:
            await self._output_mismatch(chunk, size, digest)
            return
        try:
            await self.hub.storage.put(chunk.job_id, chunk.name, chunk.data)
        except StorageError as exc:
            await self._fail_storage(
                chunk.job_id, chunk.token, f"storing output {chunk.name!r} failed: {exc}", ""
            )
            return
        self._received.setdefault((chunk.job_id, chunk.token), {})[chunk.name] = Received(
            size, digest
        )

    async def _output_too_large(self, chunk: OutputChunk) -> None:
        await self._fail_output(
            chunk.job_id,
            chunk.token,
            "output_too_large",
            f"output {chunk.name!r} is larger than MAX_OUTPUT_BYTES "
            f"({self.config.max_output_bytes})",
        )

    async def _output_mismatch(self, chunk: OutputChunk, size: int, digest: str) -> None:
        await self._fail_storage(
            chunk.job_id,
            chunk.token,
            f"output {chunk.name!r} arrived as {size} bytes with sha256 {digest}; the worker "
            f"sent {chunk.size} bytes with sha256 {chunk.sha256}",
            "",
        )

    async def _drop_incoming(self, job_id: str, token: int) -> None:
        """Abort the half-received outputs of a job that ended otherwise."""
        for key in [k for k in self._incoming if k[:2] == (job_id, token)]:
            await self._incoming.pop(key).writer.abort()

    async def _end_attempt(
        self, job_id: str, token: int, kind: str, message: str, *, retryable: bool
    ) -> tuple[str, str]:
        """Fail the attempt for a reason the hub found (not the worker's report): (refused,
        status after it)."""
        error = {"type": kind, "message": message, "node_id": None}
        refused, status, _ = await self.store.fail(
            job_id,
            token,
            self.worker_id,
            error,
            retryable,
            self.config.ttl_ms,
            self._take_prompt_id(job_id, token),
        )
        self._report_ended(job_id, token)
        self._received.pop((job_id, token), None)
        if not refused:
            self.hub.metrics.failed += 1
        return refused, status

    async def _fail_output(self, job_id: str, token: int, kind: str, message: str) -> None:
        """End the attempt for good (not retried: the same run makes the same output)."""
        await self._end_attempt(job_id, token, kind, message, retryable=False)
        await self.send(Cancel(job_id, token, kind))

    async def _fail_storage(self, job_id: str, token: int, message: str, of: str) -> None:
        """End the attempt with `storage_error` (retried while attempts remain) and tell the
        worker: an ack refusing its report `of` (if any), else a cancel of the job."""
        self.hub.dispatcher.storage_failed()
        refused, status = await self._end_attempt(
            job_id, token, StorageError.error_type, message, retryable=True
        )
        if not refused:
            log.info("job %s: attempt ended with storage_error (now %s)", job_id, status)
        if of:
            await self._ack(job_id, token, of, refused or StorageError.error_type)
        else:
            await self.send(Cancel(job_id, token, StorageError.error_type))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=1001, message=b"hub shutting down")


def _warm_lines(warm: dict[str, list[str]] | None) -> list[str] | None:
    """A result's warm set as `folder/file` lines (None: the worker's warm set is unchanged)."""
    return None if warm is None else models.flatten(warm)
