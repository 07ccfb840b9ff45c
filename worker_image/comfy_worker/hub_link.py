"""The worker's connection to the hub: connect, hello/welcome, read messages, reconnect forever.

Each successful connection is a `HubSession` (one socket, one welcome). Whoever wants to talk to
the hub waits for the current session with `wait_session()` and notices its end through
`session.closed`. The link never gives up: after any failure it retries with jittered exponential
backoff (fast first retry, capped at `config.reconnect_max_s`), so a hub restart costs about a
second and a hub outage costs nothing but time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from wgpu_protocol.messages import (
    MAX_TEXT_FRAME_BYTES,
    ErrorReply,
    Hello,
    HubMessage,
    Message,
    ProtocolError,
    Welcome,
    decode_hub_message,
    encode,
)

from .config import WorkerConfig

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
OPEN_TIMEOUT_S = 10.0


class HubSession:
    """One connected, welcomed socket. Sends never raise: False means the socket is gone."""

    def __init__(self, ws: ClientConnection, welcome: Welcome, hello: Hello) -> None:
        self.ws = ws
        self.welcome = welcome
        self.hello = hello
        self.closed = asyncio.Event()
        self.announced: str | None = None  # last availability told to the hub on this socket
        self.models_sent: str | None = None  # digest of the models this hub connection has
        self.warm_sent: dict[str, list[str]] | None = None  # the warm set it has (None: none)

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set()

    async def send(self, message: Message) -> bool:
        return await self._send(encode(message))

    async def send_bytes(self, data: bytes) -> bool:
        return await self._send(data)

    async def _send(self, data: str | bytes) -> bool:
        if self.closed.is_set():
            return False
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


def backoff_delays(cap_s: float, first_s: float = FIRST_RETRY_S) -> Callable[[int], float]:
    """delay(n) for the n-th consecutive failure: exponential, capped, jittered (50-100%)."""

    def delay(attempt: int) -> float:
        base = min(cap_s, first_s * (2 ** min(attempt, 30)))
        return float(base * random.uniform(0.5, 1.0))

    return delay


OnSession = Callable[[HubSession], None]
OnMessage = Callable[[HubSession, HubMessage], Awaitable[None]]


class HubLink:
    def __init__(
        self,
        config: WorkerConfig,
        make_hello: Callable[[], Hello],
        on_session: OnSession,
        on_message: OnMessage,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._make_hello = make_hello
        self._on_session = on_session
        self._on_message = on_message
        self._on_closed = on_closed
        self._delay = backoff_delays(config.reconnect_max_s)
        self._session_ready = asyncio.Event()
        self.session: HubSession | None = None
        self.connections = 0  # how many sessions so far (tests and logs)
        self.attempts = 0  # how many connection attempts so far

    async def wait_session(self) -> HubSession:
        while True:
            await self._session_ready.wait()
            session = self.session
            if session is not None and session.is_open:
                return session
            await asyncio.sleep(0)

    async def run(self) -> None:
        failures = 0
        while True:
            welcomed = await self._connect_once()
            failures = 0 if welcomed else failures + 1
            delay = self._delay(failures)
            log.debug("reconnecting to the hub in %.2fs", delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> bool:
        """One connection's life. True if it got as far as a welcome."""
        url = self._config.hub_ws_url
        self.attempts += 1
        headers = {}
        credential = self._config.credential
        if credential:
            headers["Authorization"] = f"Bearer {credential}"
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=OPEN_TIMEOUT_S,
                max_size=MAX_TEXT_FRAME_BYTES,
                compression=None,  # outputs are PNGs: deflate would only burn CPU
                ping_interval=10,
                ping_timeout=20,
                close_timeout=2,
                proxy=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                log.error(
                    "the hub refused this worker (HTTP %s): set WORKER_TOKEN to the hub's "
                    "worker token",
                    status,
                )
            else:
                log.warning("the hub at %s answered HTTP %s", url, status)
            return False
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("hub at %s not reachable: %s", url, exc or type(exc).__name__)
            return False
        session: HubSession | None = None
        try:
            hello = self._make_hello()
            await ws.send(encode(hello))
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                raw = await ws.recv()
            reply = decode_hub_message(raw)
            if isinstance(reply, ErrorReply):
                log.error("the hub refused hello: %s: %s", reply.code, reply.message)
                return False
            if not isinstance(reply, Welcome):
                log.error("the hub answered hello with %r, not welcome", reply.type)
                return False
            session = HubSession(ws, reply, hello)
            self.connections += 1
            log.info("connected to the hub at %s (resumed=%s)", url, reply.resumed)
            self._on_session(session)  # decides about the held job before anyone sends
            self.session = session
            self._session_ready.set()
            await self._read(session)
            return True
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            log.info("hub connection lost: %s", exc or type(exc).__name__)
            return session is not None
        except ProtocolError as exc:
            log.error("the hub sent an invalid message: %s", exc)
            return session is not None
        finally:
            self._session_ready.clear()
            self.session = None
            if session is not None:
                session.closed.set()
                if self._on_closed is not None:
                    self._on_closed()
            with contextlib.suppress(Exception):
                await ws.close()

    async def _read(self, session: HubSession) -> None:
        async for raw in session.ws:
            if isinstance(raw, bytes):
                continue  # the hub sends no binary frames to workers
            try:
                message = decode_hub_message(raw)
            except ProtocolError as exc:
                log.warning("ignoring an invalid message from the hub: %s", exc)
                continue
            try:
                await self._on_message(session, message)
            except Exception:  # one bad handling must not drop the connection
                log.exception("handling %s from the hub failed", message.type)
