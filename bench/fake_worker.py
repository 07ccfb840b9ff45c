"""A fake worker that speaks wgpu_protocol over the hub's WebSocket and completes every job
at once: hello -> welcome -> ready -> job -> started -> completed -> ack -> ready ...
(with a hub that offers it, `completed.ready_next` replaces the `ready`: the next job follows
the ack).

`python -m bench.fake_worker --hub http://127.0.0.1:8001 [--count N] [--record-redis URL]
[--completions-file F] [--job-time S]`. It records, per job, when it had the job (RPUSH to
bench:starts, the same record the anchors write) and, in --completions-file, a line
`<job> <token> <worker> <what>` flushed as it happens (survives a Redis restart and a SIGKILL):
`sent` just before each `completed` goes out, `acked` per acknowledged completion, and
`not_resumed` when a reconnect finds the hub no longer gives it back the job it held (an ack
lost to a hub or Redis restart: the hub may have recorded the success). A dropped socket is retried;
the job it held is offered back in hello.running, as a real worker does. A result left without
an ack (--ack-timeout) or an `unavailable` error from the hub makes it reconnect and resend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import IO, Any

import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bench.record import STARTS_KEY, start_record
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.messages import (
    Ack,
    Bye,
    Cancel,
    Completed,
    ErrorReply,
    GpuInfo,
    Heartbeat,
    Hello,
    JobAssigned,
    OutputFrame,
    OutputRef,
    Ready,
    RunningJob,
    Started,
    Welcome,
    decode_hub_message,
    encode,
    encode_output_frame,
)


class Reconnect(Exception):
    """The hub could not take what we sent: reconnect and say it again."""


class FakeWorker:
    def __init__(
        self,
        args: argparse.Namespace,
        index: int,
        recorder: aioredis.Redis[bytes] | None,
        completions: IO[str] | None,
    ) -> None:
        self.worker_id = f"{args.machine}-gpu{index}"
        self.index = index
        self.args = args
        self.recorder = recorder
        self.completions = completions
        self.held: RunningJob | None = None
        self.stopping = False
        self.ws: ClientConnection | None = None
        self.ready_next = False  # this session's hub offers completed.ready_next
        self.sent_ready_next = False  # the last completed asked for the next job
        self._closing: asyncio.Future[None] | None = None

    @property
    def ws_url(self) -> str:
        base = self.args.hub.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
        return f"{base}/ws/worker/{self.worker_id}"

    async def run(self) -> None:
        delay = 0.05
        while not self.stopping:
            try:
                await self.session()
                delay = 0.05
            except (TimeoutError, OSError, WebSocketException, Reconnect) as exc:
                if self.args.verbose:
                    print(f"{self.worker_id}: {type(exc).__name__}: {exc}", flush=True)
            if not self.stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def session(self) -> None:
        headers = {}
        if self.args.worker_token:
            credential = worker_credential(self.args.worker_token, self.worker_id)
            headers["Authorization"] = f"Bearer {credential}"
        async with connect(
            self.ws_url,
            open_timeout=10,
            max_size=None,
            compression=None,
            additional_headers=headers,
            proxy=None,
        ) as ws:
            self.ws = ws
            hello = Hello(
                worker_id=self.worker_id,
                machine_id=self.args.machine,
                gpu=GpuInfo(
                    index=self.index,
                    uuid=f"GPU-bench-{self.index}",
                    name="fake",
                    vram_total_mb=24576,
                ),
                version="bench",
                running=self.held,
            )
            await ws.send(encode(hello))
            welcome = decode_hub_message(await asyncio.wait_for(ws.recv(), 10))
            if not isinstance(welcome, Welcome):
                raise OSError(f"expected welcome, got {welcome!r}")
            self.ready_next = welcome.ready_next and self.args.ready_next
            self.sent_ready_next = False
            beat = asyncio.create_task(self.heartbeats(ws, welcome.heartbeat_s))
            try:
                if self.held is not None and welcome.resumed:
                    await ws.send(encode(Completed(self.held.job_id, self.held.token)))
                else:
                    if self.held is not None:
                        self._record(self.held.job_id, self.held.token, "not_resumed")
                    self.held = None
                    await ws.send(encode(Ready()))
                async for frame in ws:
                    await self.on_message(ws, frame)
                    if self.stopping:
                        await ws.send(encode(Bye()))
                        return
            finally:
                beat.cancel()
                self.ws = None

    async def heartbeats(self, ws: ClientConnection, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await ws.send(encode(Heartbeat(comfyui_ok=True, running=self.held)))

    async def on_message(self, ws: ClientConnection, frame: str | bytes) -> None:
        message = decode_hub_message(frame)
        if isinstance(message, JobAssigned):
            await self.on_job(ws, message)
        elif isinstance(message, Ack):
            if (
                message.of == "completed"
                and self.held is not None
                and message.job_id == self.held.job_id
            ):
                if message.ok:
                    self._record(message.job_id, message.token, "acked")
                self.held = None
                if not self.args.eager_ready and not (self.sent_ready_next and message.ok):
                    await ws.send(encode(Ready()))
        elif isinstance(message, Cancel):
            if self.held is not None and message.job_id == self.held.job_id:
                self.held = None
                await ws.send(encode(Ready()))
        elif isinstance(message, ErrorReply):
            if self.args.verbose:
                print(f"{self.worker_id}: hub error {message.code}: {message.message}", flush=True)
            if message.code == "unavailable" and not self.args.ignore_unavailable:
                raise Reconnect(message.message)

    async def on_job(self, ws: ClientConnection, job: JobAssigned) -> None:
        record = _bench_record(job.workflow)
        self.held = RunningJob(job.job_id, job.token)
        if record is not None and self.recorder is not None:
            await self.recorder.rpush(STARTS_KEY, start_record(*record))
        if self.args.send_started:
            await ws.send(encode(Started(job.job_id, job.token, prompt_id=job.job_id)))
        if self.args.job_time > 0:
            await asyncio.sleep(self.args.job_time)
        refs: tuple[OutputRef, ...] = ()
        if self.args.output_bytes > 0:
            frame = OutputFrame(
                job.job_id,
                job.token,
                "out.png",
                "image/png",
                b"\x89PNG" * (self.args.output_bytes // 4),
            )
            await ws.send(encode_output_frame(frame))
            refs = (frame.ref,)
        self.sent_ready_next = self.ready_next and not self.args.eager_ready
        self._record(job.job_id, job.token, "sent")  # before the send: the ack may never come
        await ws.send(
            encode(Completed(job.job_id, job.token, refs, ready_next=self.sent_ready_next))
        )
        if self.args.eager_ready:
            await ws.send(encode(Ready()))
        asyncio.get_running_loop().call_later(
            self.args.ack_timeout, self._ack_overdue, ws, self.held
        )

    def _record(self, job_id: str, token: int, what: str) -> None:
        if self.completions is not None:
            self.completions.write(f"{job_id} {token} {self.worker_id} {what}\n")
            self.completions.flush()

    def _ack_overdue(self, ws: ClientConnection, sent: RunningJob | None) -> None:
        if self.held is not None and self.held == sent and self.ws is ws:
            self._closing = asyncio.ensure_future(ws.close(code=4001, reason="no ack"))


def _bench_record(workflow: dict[str, Any]) -> tuple[int, float] | None:
    """The (index, t_submit) a benchmark put in node "1"'s inputs, if any."""
    inputs = workflow.get("1", {}).get("inputs", {}) if isinstance(workflow.get("1"), dict) else {}
    if "bench_index" in inputs and "t_submit" in inputs:
        return int(inputs["bench_index"]), float(inputs["t_submit"])
    return None


def bench_workflow(index: int, t_submit: float, pad: int = 0) -> dict[str, Any]:
    """A one-node workflow carrying the benchmark's bookkeeping (the fake worker runs nothing)."""
    inputs: dict[str, Any] = {"bench_index": index, "t_submit": t_submit}
    if pad:
        inputs["pad"] = "x" * pad
    return {"1": {"class_type": "BenchNoop", "inputs": inputs}}


async def amain(args: argparse.Namespace) -> None:
    recorder = aioredis.Redis.from_url(args.record_redis) if args.record_redis else None
    # A line per acked completion, flushed at once: it must survive a SIGKILL of this process.
    completions = open(args.completions_file, "a") if args.completions_file else None  # noqa: SIM115, ASYNC230
    workers = [
        FakeWorker(args, args.first_index + i, recorder, completions) for i in range(args.count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for i, worker in enumerate(workers):
        tasks.append(asyncio.create_task(worker.run()))
        if args.count > 50 and i % 50 == 49:
            await asyncio.sleep(0.05)  # do not open a thousand sockets in one burst
    await stop.wait()
    for worker in workers:
        worker.stopping = True
        if worker.ws is not None:
            with contextlib.suppress(Exception):
                await worker.ws.send(encode(Bye()))
                await worker.ws.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if recorder is not None:
        await recorder.aclose()  # type: ignore[attr-defined]
    if completions is not None:
        completions.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hub", required=True, help="hub base URL, e.g. http://127.0.0.1:8001")
    parser.add_argument("--machine", default=f"bench{os.getpid()}")
    parser.add_argument(
        "--count", type=int, default=1, help="connections (workers) in this process"
    )
    parser.add_argument("--first-index", type=int, default=0)
    parser.add_argument(
        "--record-redis", default="", help="Redis URL for the per-job start records"
    )
    parser.add_argument("--completions-file", default="")
    parser.add_argument("--job-time", type=float, default=0.0, help="seconds each job takes")
    parser.add_argument("--worker-token", default="", help="the hub's WORKER_TOKEN")
    parser.add_argument(
        "--output-bytes", type=int, default=0, help="send one output file of this size per job"
    )
    parser.add_argument("--ack-timeout", type=float, default=2.0)
    parser.add_argument(
        "--ignore-unavailable",
        action="store_true",
        help="only log `unavailable` errors, as comfy_worker does (the ack timeout still applies)",
    )
    parser.add_argument(
        "--eager-ready",
        action="store_true",
        help="send ready right after completed, without waiting for the ack (one hop less)",
    )
    parser.add_argument("--no-started", dest="send_started", action="store_false")
    parser.add_argument(
        "--no-ready-next",
        dest="ready_next",
        action="store_false",
        help="wait for the ack and send ready, even where the hub offers completed.ready_next",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main() -> None:
    asyncio.run(amain(parse_args()))


if __name__ == "__main__":
    main()
