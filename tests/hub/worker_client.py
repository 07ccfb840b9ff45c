"""A protocol worker for hub tests: a real WebSocket client (the `websockets` library) that
speaks wgpu_protocol and does only what the test tells it to."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.messages import (
    MAX_BINARY_FRAME_BYTES,
    Ack,
    Bye,
    Completed,
    Failed,
    GpuInfo,
    Hello,
    HubMessage,
    JobAssigned,
    JobError,
    Message,
    OutputFrame,
    Ready,
    RunningJob,
    Welcome,
    decode_hub_message,
    encode,
    encode_output_frame,
)

M = TypeVar("M")


class ProtocolWorker:
    def __init__(
        self,
        hub_url: str,
        worker_id: str = "m1-gpu0",
        machine_id: str = "m1",
        gpu: GpuInfo | None = None,
        token: str | None = None,
        credential: str | None = None,
        execution_started: bool = False,
    ) -> None:
        """`token`: the fleet WORKER_TOKEN (the credential for `worker_id` is derived from it);
        `credential`: exactly what to show instead (a wrong one, in tests of refusals);
        `execution_started`: say so in hello (this worker reports ComfyUI's execution_start,
        as comfy_worker does; without it the hub takes `started` for it, as from older ones)."""
        self.execution_started = execution_started
        self.ws_url = "ws" + hub_url.removeprefix("http") + f"/ws/worker/{worker_id}"
        self.worker_id = worker_id
        self.machine_id = machine_id
        self.gpu = gpu or GpuInfo(0, f"GPU-{worker_id}", "Test GPU 24GB", 24_000)
        self.token = token
        self.credential = credential or (worker_credential(token, worker_id) if token else None)
        self.ws: ClientConnection | None = None
        self.welcome: Welcome | None = None
        self._inbox: asyncio.Queue[HubMessage | None] = asyncio.Queue()
        self._stash: list[HubMessage] = []
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.credential}"} if self.credential else {}
        self.ws = await connect(
            self.ws_url,
            additional_headers=headers,
            compression=None,
            max_size=MAX_BINARY_FRAME_BYTES,
            proxy=None,
        )
        self._inbox = asyncio.Queue()
        self._stash = []
        self._reader = asyncio.create_task(self._read(self.ws))
        return self.ws

    async def connect(
        self, running: RunningJob | None = None, relaying: RunningJob | None = None
    ) -> Welcome:
        """Open the socket, say hello, return the welcome."""
        await self.open()
        hello = Hello(
            self.worker_id,
            self.machine_id,
            self.gpu,
            "test",
            running,
            relaying=relaying,
            execution_started=self.execution_started,
        )
        await self.send(hello)
        self.welcome = await self.expect(Welcome)
        return self.welcome

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                if isinstance(raw, str):
                    await self._inbox.put(decode_hub_message(raw))
        except ConnectionClosed:
            pass
        finally:
            await self._inbox.put(None)

    async def send(self, message: Message) -> None:
        assert self.ws is not None
        await self.ws.send(encode(message))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    async def recv(self, within: float = 5.0) -> HubMessage:
        if self._stash:
            return self._stash.pop(0)
        message = await asyncio.wait_for(self._inbox.get(), within)
        if message is None:
            raise ConnectionError("the hub closed the socket")
        return message

    async def expect(self, kind: type[M], within: float = 5.0, **match: Any) -> M:
        """The next message of type `kind` (with the given field values); others are kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for i, message in enumerate(self._stash):
            if _matches(message, kind, match):
                return self._stash.pop(i)  # type: ignore[return-value]
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"no {kind.__name__} {match} within {within}s; got {self._stash}"
                )
            received: HubMessage | None = await asyncio.wait_for(self._inbox.get(), remaining)
            if received is None:
                raise ConnectionError(f"the hub closed the socket; unread: {self._stash}")
            if _matches(received, kind, match):
                return received  # type: ignore[return-value]
            self._stash.append(received)

    async def nothing_of(self, kind: type[Any], within: float) -> None:
        """Assert no message of `kind` arrives within `within` seconds."""
        with contextlib.suppress(TimeoutError):
            got = await self.expect(kind, within=within)
            raise AssertionError(f"unexpected {got}")

    async def ready(self) -> None:
        await self.send(Ready())

    async def take_job(self, within: float = 5.0) -> JobAssigned:
        await self.ready()
        return await self.expect(JobAssigned, within)

    async def complete(
        self,
        job: JobAssigned,
        outputs: dict[str, tuple[str, bytes]] | None = None,
        token: int | None = None,
    ) -> Ack:
        token = job.token if token is None else token
        refs = []
        for name, (content_type, data) in (outputs or {}).items():
            frame = OutputFrame(job.job_id, token, name, content_type, data)
            await self.send_raw(encode_output_frame(frame))
            refs.append(frame.ref)
        await self.send(Completed(job.job_id, token, tuple(refs)))
        return await self.expect(Ack, job_id=job.job_id, of="completed")

    async def complete_each(self, count: int) -> list[str]:
        """Take and complete `count` jobs, one at a time: their ids in the order they came."""
        order = []
        for _ in range(count):
            assigned = await self.take_job()
            order.append(assigned.job_id)
            assert (await self.complete(assigned)).ok
        return order

    async def fail(
        self,
        job: JobAssigned,
        type_: str = "execution_error",
        retryable: bool = True,
        message: str = "boom",
    ) -> Ack:
        await self.send(Failed(job.job_id, job.token, JobError(type_, message, "3", retryable)))
        return await self.expect(Ack, job_id=job.job_id, of="failed")

    async def close(self, bye: bool = True) -> None:
        if self.ws is None:
            return
        with contextlib.suppress(Exception):
            if bye:
                await self.send(Bye())
            await self.ws.close()
        await self._stop_reader()

    async def cut(self) -> None:
        """Drop the TCP connection without a close handshake, as a crash or cable cut would."""
        if self.ws is None:
            return
        self.ws.transport.abort()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2.0)
            self._reader = None
        self.ws = None


def _matches(message: HubMessage, kind: type[Any], match: dict[str, Any]) -> bool:
    return isinstance(message, kind) and all(
        getattr(message, key) == value for key, value in match.items()
    )
