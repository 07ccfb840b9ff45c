"""The abuse run: a normal load of legitimate jobs through fake workers while an attacker (its
own API key, from 127.0.0.2) and an unlucky operator do their worst, all on loopback, bounded
in time and stopping by itself.

Phases, by legitimate submissions made: the first quarter runs clean (the latency baseline);
the middle half under the hostile mix (SSE floods held and churned, poisoned strings, deep
JSON, slow headers and bodies, oversize frames and poisoned messages from a worker socket,
worker impersonation); the last quarter under infrastructure faults, one after another: the
outputs directory full (a 2 MiB tmpfs, when run as root), Redis out of memory (maxmemory below
use), Redis stopped (SIGSTOP/SIGCONT) and the hub SIGKILLed and restarted.

Report: legitimate jobs lost (must be 0), legitimate requests failed (must be 0 apart from the
documented 503s while Redis is actually unable, or connection errors while the hub is down:
the legitimate client retries those, as a real one would), hub RSS peak, and p99 submit
latency of legitimate requests without and with the hostile mix (ratio within the same run).

`python -m bench.abuse [--jobs 2000] [--workers 4] [--quick]` (or `nox -s abuse`); exit status
1 when a job is lost or a legitimate request failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from bench import procs
from bench.fault_run import fault_run_main
from bench.hub_system import HubProcess, wait_workers
from bench.report import Table
from bench.stats import percentile, ratio
from orchestrator.stack.local_redis import LocalRedis
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.messages import GpuInfo, Hello, encode

LEGIT_KEY, ATTACKER_KEY = "legit-Kq9v2", "mallory-Zx81"
WORKER_TOKEN = "abuse-fleet-token-7Yh"
ATTACKER_ADDR = "127.0.0.2"  # loopback too: the per-IP cap tells the attacker apart
HELD_ADDRS = ("127.0.0.3", "127.0.0.4", "127.0.0.5")  # held streams: 3 peers under the cap
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "dead"}


@dataclass
class AbuseConfig:
    jobs: int = 2000
    workers: int = 4
    rate: float = 80.0  # legitimate submissions per second
    output_bytes: int = 2048
    max_attempts: int = 20  # a full disk fails attempts quickly: retries must outlast it
    sse_held: int = 1000
    sse_churn_per_s: float = 150.0
    slow_connections: int = 200
    poisoned: int = 400
    deep: int = 60
    oversize_frames: int = 12
    oversize_frame_bytes: int = 4 * 1024 * 1024
    fault_s: float = 2.0  # how long each infrastructure fault lasts
    tmpfs_bytes: int = 16 * 1024 * 1024  # room for every legitimate output; a filler fills it
    redis_maxmemory: int = 512 * 1024 * 1024
    settle_timeout_s: float = 120.0
    seed: int = 11


@dataclass
class Window:
    kind: str
    start: float
    end: float = float("inf")


@dataclass
class AbuseReport:
    submitted: int = 0
    accepted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    documented_503: int = 0
    documented_conn_errors: int = 0
    # Submit latency of legitimate requests (first tries that succeeded), per phase.
    latency_ms: dict[str, list[float]] = field(
        default_factory=lambda: {"clean": [], "held": [], "hostile": []}
    )
    rss_peak_mb: float = 0.0
    rss_baseline_mb: float = 0.0
    attacks: dict[str, Counter[str]] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    storage_errors: int = 0
    seconds_total: float = 0.0

    def tally(self, attack: str, outcome: str) -> None:
        self.attacks.setdefault(attack, Counter())[outcome] += 1

    @property
    def ok(self) -> bool:
        return not self.lost and not self.failed_requests and self.accepted == self.submitted


class HubWatch:
    """The hub process' RSS, sampled; follows restarts (same HubProcess)."""

    def __init__(self, hub: HubProcess, report: AbuseReport) -> None:
        self.hub = hub
        self.report = report

    def sample(self) -> None:
        proc = self.hub.proc
        if proc is None:
            return
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                mb = int(line.split()[1]) / 1024
                self.report.rss_peak_mb = max(self.report.rss_peak_mb, mb)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            await asyncio.sleep(0.2)


# ----------------------------------------------------------------------------- the legitimate side


class LegitClient:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, cfg: AbuseConfig, report: AbuseReport
    ) -> None:
        self.session = session
        self.url = url
        self.cfg = cfg
        self.report = report
        self.windows: list[Window] = []  # infrastructure faults, as they happen
        self.headers = {"Authorization": f"Bearer {LEGIT_KEY}"}

    def _documented(self, t0: float, t1: float, kinds: set[str]) -> bool:
        # Margin: a request sent just before a fault may still be in flight in it, and the
        # hub's Redis connections take a moment to come back after one.
        return any(
            w.kind in kinds and w.start - 3.0 <= t1 and t0 <= w.end + 3.0 for w in self.windows
        )

    async def submit(self, index: int, phase: str) -> str | None:
        body = {
            "workflow": {"1": {"class_type": "AbuseNoop", "inputs": {"i": index}}},
            "idempotency_key": f"abuse-{self.cfg.seed}-{index}",
            "max_attempts": self.cfg.max_attempts,
        }
        first = True
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            outcome = ""
            try:
                async with self.session.post(
                    self.url + "/jobs", json=body, headers=self.headers
                ) as response:
                    text = await response.text()
                    if response.status in (200, 201):
                        if first and phase in self.report.latency_ms:
                            self.report.latency_ms[phase].append((time.monotonic() - t0) * 1000)
                        return str(json.loads(text)["id"])
                    outcome = f"HTTP {response.status}: {text[:120]}"
                    redis_fault = self._documented(t0, time.monotonic(), {"oom", "sigstop"})
                    if response.status == 503 and redis_fault:
                        self.report.documented_503 += 1
                    else:
                        self.report.failed_requests.append(f"submit {index}: {outcome}")
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                outcome = type(exc).__name__
                if self._documented(t0, time.monotonic(), {"hub_kill", "sigstop"}):
                    self.report.documented_conn_errors += 1
                else:
                    self.report.failed_requests.append(f"submit {index}: {outcome}")
            first = False
            await asyncio.sleep(0.2)
        self.report.failed_requests.append(f"submit {index}: not accepted within 90 s")
        return None

    async def final_states(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        pending, final = set(ids), {}
        deadline = time.monotonic() + self.cfg.settle_timeout_s
        while pending and time.monotonic() < deadline:
            batch = list(pending)[:200]
            views = await asyncio.gather(*(self._get(job_id) for job_id in batch))
            for job_id, view in zip(batch, views, strict=True):
                if view is not None and view.get("status") in TERMINAL | {"missing"}:
                    final[job_id] = view
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.2)
        for job_id in pending:
            final[job_id] = {"id": job_id, "status": "not finished"}
        return final

    async def _get(self, job_id: str) -> dict[str, Any] | None:
        try:
            async with self.session.get(
                f"{self.url}/jobs/{job_id}", headers=self.headers
            ) as response:
                if response.status == 404:
                    return {"id": job_id, "status": "missing"}
                if response.status != 200:
                    return None
                return dict(await response.json())
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            return None


# ----------------------------------------------------------------------------- the attacker


class Attacker:
    def __init__(
        self, url: str, port: int, cfg: AbuseConfig, report: AbuseReport, stop: asyncio.Event
    ) -> None:
        self.url = url
        self.port = port
        self.cfg = cfg
        self.report = report
        self.stop = stop
        self.headers = {"Authorization": f"Bearer {ATTACKER_KEY}"}
        self.rng = random.Random(cfg.seed)

    def session(self, addr: str = ATTACKER_ADDR) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, local_addr=(addr, 0))
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15))

    async def hold_streams(self, legit_job: str) -> None:
        """Only held event streams, from HELD_ADDRS (each under the per-IP cap)."""
        async with self.session() as http:
            own = await self._own_job(http)
        per_addr = -(-self.cfg.sse_held // len(HELD_ADDRS))

        async def from_addr(addr: str) -> None:
            async with self.session(addr) as http:
                await self.sse_held(http, own, legit_job, per_addr)

        await asyncio.gather(*(from_addr(addr) for addr in HELD_ADDRS))

    async def run(self, legit_job: str) -> None:
        async with self.session() as http:
            own = await self._own_job(http)
            attacks: list[Callable[[], Awaitable[None]]] = [
                lambda: self.sse_churn(own),
                lambda: self.poisoned(http),
                lambda: self.deep_json(http),
                self.slow_clients,
                self.worker_socket_abuse,
                lambda: self.impersonation(legit_worker="abuse-gpu0"),
            ]
            await asyncio.gather(*(attack() for attack in attacks))

    async def _own_job(self, http: aiohttp.ClientSession) -> str:
        body = {
            "workflow": {"1": {"class_type": "Mine", "inputs": {}}},
            "constraints": {"machine_id": "nowhere"},  # never runs: its streams stay open
        }
        async with http.post(self.url + "/jobs", json=body, headers=self.headers) as response:
            return str((await response.json())["id"])

    async def sse_held(self, http: aiohttp.ClientSession, own: str, legit: str, count: int) -> None:
        """Hold many event streams open (on its own job; on someone else's it gets 404)."""
        held: list[aiohttp.ClientResponse] = []
        try:
            for i in range(count):
                target = legit if i % 50 == 0 else own
                try:
                    response = await http.get(
                        f"{self.url}/jobs/{target}/events", headers=self.headers
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.report.tally("SSE held", type(exc).__name__)
                    continue
                self.report.tally("SSE held", f"HTTP {response.status}")
                if response.status == 200:
                    held.append(response)
                else:
                    response.release()
            await self.stop.wait()
        finally:
            for response in held:
                response.close()

    async def sse_churn(self, own: str) -> None:
        """Open streams and drop them at once, sse_churn_per_s a second."""
        async with self.session() as http:
            while not self.stop.is_set():
                t0 = time.monotonic()
                for _ in range(int(self.cfg.sse_churn_per_s / 10)):
                    try:
                        response = await http.get(
                            f"{self.url}/jobs/{own}/events", headers=self.headers
                        )
                        self.report.tally("SSE churn", f"HTTP {response.status}")
                        response.close()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self.report.tally("SSE churn", type(exc).__name__)
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))

    async def poisoned(self, http: aiohttp.ClientSession) -> None:
        wf = {"1": {"class_type": "X", "inputs": {}}}
        bodies = [
            {"workflow": wf, "idempotency_key": "k\ud800"},
            {"workflow": wf, "webhook_url": "http://x/\udfff"},
            {"workflow": wf, "constraints": {"machine_id": "\ud800"}},
            {"workflow": {"1": {"class_type": "A\udc00", "inputs": {}}}},
            {"workflow": {"1": {"class_type": "X", "inputs": {"cfg": float("nan")}}}},
            {"workflow": {"1": {"class_type": "X\x00", "inputs": {}}}, "priority": 10**30},
        ]
        for i in range(self.cfg.poisoned):
            if self.stop.is_set():
                return
            raw = json.dumps(bodies[i % len(bodies)]).encode()
            await self._post_raw(http, "poisoned strings", raw)
            if i % 20 == 0:
                await asyncio.sleep(0.05)

    async def deep_json(self, http: aiohttp.ClientSession) -> None:
        deep = b'{"workflow": {"1": {"class_type": "X", "inputs": {"a": '
        deep += b"[" * 10_000 + b"]" * 10_000 + b"}}}}"
        for _ in range(self.cfg.deep):
            if self.stop.is_set():
                return
            await self._post_raw(http, "deep JSON (10,000 levels)", deep)
            await asyncio.sleep(0.05)
        bad_gzip = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        for _ in range(20):
            try:
                async with http.post(
                    self.url + "/jobs", data=b"not gzip", headers={**self.headers, **bad_gzip}
                ) as response:
                    self.report.tally("broken gzip body", f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.report.tally("broken gzip body", type(exc).__name__)

    async def _post_raw(self, http: aiohttp.ClientSession, attack: str, raw: bytes) -> None:
        try:
            async with http.post(
                self.url + "/jobs",
                data=raw,
                headers={**self.headers, "Content-Type": "application/json"},
            ) as response:
                self.report.tally(attack, f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.report.tally(attack, type(exc).__name__)

    async def slow_clients(self) -> None:
        """Half-sent request heads and bodies (slowloris): the hub must cut them off."""

        async def one(i: int) -> None:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(ATTACKER_ADDR, 0)
                )
            except OSError as exc:
                self.report.tally("slow headers/bodies", f"connect {type(exc).__name__}")
                return
            t0 = time.monotonic()
            head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
            if i % 2:
                head = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{"
            try:
                writer.write(head)
                while not self.stop.is_set():
                    writer.write(b"a")  # a byte now and then
                    await writer.drain()
                    data = await asyncio.wait_for(reader.read(4096), 1.0)
                    if not data:
                        break
            except TimeoutError:
                pass
            except OSError:
                pass
            finally:
                held = time.monotonic() - t0
                self.report.tally("slow headers/bodies", f"cut off after <= {_ceil5(held)} s")
                writer.close()

        await asyncio.gather(*(one(i) for i in range(self.cfg.slow_connections)))

    async def worker_socket_abuse(self) -> None:
        """A compromised worker credential: oversize text frames and poisoned messages."""

        async def one(i: int) -> None:
            worker_id = f"intruder-{i}"
            headers = {"Authorization": f"Bearer {worker_credential(WORKER_TOKEN, worker_id)}"}
            url = f"ws://127.0.0.1:{self.port}/ws/worker/{worker_id}"
            try:
                async with connect(
                    url, additional_headers=headers, max_size=None, proxy=None, open_timeout=10
                ) as ws:
                    # Before hello: a 4 MiB text frame (the protocol limit is 1 MiB).
                    await ws.send("x" * self.cfg.oversize_frame_bytes)
                    reply = await asyncio.wait_for(ws.recv(), 10)
                    self.report.tally("oversize text frame", _code(reply))
            except (OSError, TimeoutError, WebSocketException) as exc:
                code = getattr(getattr(exc, "rcvd", None), "code", None)
                self.report.tally("oversize text frame", f"closed {code or type(exc).__name__}")
            try:
                async with connect(
                    url, additional_headers=headers, max_size=None, proxy=None, open_timeout=10
                ) as ws:
                    await ws.send(
                        encode(Hello(worker_id, "intruder", GpuInfo(0, "u", "n", 1), "v"))
                    )
                    await asyncio.wait_for(ws.recv(), 10)
                    for frame in (
                        '{"type":"started","job_id":"\\ud800","token":1,"prompt_id":"p"}',
                        '{"type":"ready","deep":' + "[" * 10_000 + "]" * 10_000 + "}",
                        '{"type":"progress","job_id":"j","token":1,"node":null,"value":NaN,"max":1}',
                    ):
                        await ws.send(frame)
                        reply = await asyncio.wait_for(ws.recv(), 10)
                        self.report.tally("poisoned worker messages", _code(reply))
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.report.tally("poisoned worker messages", type(exc).__name__)

        await asyncio.gather(*(one(i) for i in range(self.cfg.oversize_frames)))

    async def impersonation(self, legit_worker: str) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws/worker/{legit_worker}"
        attempts = {
            "the fleet WORKER_TOKEN itself": WORKER_TOKEN,
            "another worker's credential": worker_credential(WORKER_TOKEN, "intruder-0"),
            "a guessed credential": "wc1-" + "0" * 64,
            "its own credential (stolen; refused while its socket is live)": (
                worker_credential(WORKER_TOKEN, legit_worker)
            ),
        }
        for what, credential in attempts.items():
            try:
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {credential}"},
                    proxy=None,
                    open_timeout=10,
                ):
                    self.report.tally("worker impersonation", f"{what}: ACCEPTED")
            except InvalidStatus as exc:
                self.report.tally(
                    "worker impersonation", f"{what}: HTTP {exc.response.status_code}"
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.report.tally("worker impersonation", f"{what}: {type(exc).__name__}")


def _code(reply: str | bytes) -> str:
    try:
        message = json.loads(reply)
    except ValueError:
        return "non-JSON reply"
    return f"{message.get('type')} {message.get('code', '')}".strip()


def _ceil5(seconds: float) -> int:
    return int(-(-seconds // 5) * 5) or 5


# ----------------------------------------------------------------------------- the unlucky operator


class Operator:
    def __init__(
        self,
        cfg: AbuseConfig,
        report: AbuseReport,
        server: LocalRedis,
        hub: HubProcess,
        legit: LegitClient,
        outputs: Path,
        tmpfs: bool,
    ) -> None:
        self.cfg = cfg
        self.report = report
        self.server = server
        self.hub = hub
        self.legit = legit
        self.outputs = outputs
        self.tmpfs = tmpfs

    async def window(self, kind: str, action: Callable[[], Awaitable[str]]) -> None:
        w = Window(kind, time.monotonic())
        self.legit.windows.append(w)
        what = await action()
        w.end = time.monotonic()
        self.report.faults.append(f"{what} ({w.end - w.start:.1f} s)")

    async def run(self) -> None:
        if self.tmpfs:
            await self.window("disk_full", self.disk_full)
        else:
            self.report.faults.append("disk full: skipped (needs root to mount a tmpfs)")
        await self.window("oom", self.redis_oom)
        await asyncio.sleep(1.0)
        await self.window("sigstop", self.redis_stop)
        await asyncio.sleep(1.0)
        await self.window("hub_kill", self.hub_kill)

    async def disk_full(self) -> str:
        filler = self.outputs.parent / "filler"
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(chunk)
                out.flush()
        await asyncio.sleep(self.cfg.fault_s)
        filler.unlink(missing_ok=True)
        return f"outputs tmpfs ({self.cfg.tmpfs_bytes // 1024} KiB) full"

    async def redis_oom(self) -> str:
        client = redis.Redis.from_url(self.server.url)
        try:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", max(1024 * 1024, used - 1024 * 1024))
            await asyncio.sleep(self.cfg.fault_s)
            client.config_set("maxmemory", self.cfg.redis_maxmemory)
        finally:
            client.close()
        return "Redis over maxmemory (noeviction)"

    async def redis_stop(self) -> str:
        pid = self.server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.cfg.fault_s)
        finally:
            os.kill(pid, signal.SIGCONT)
        return "Redis SIGSTOP, then SIGCONT"

    async def hub_kill(self) -> str:
        await asyncio.to_thread(self.hub.restart, True)
        return "hub SIGKILL, restart"


# ----------------------------------------------------------------------------- the run


def mount_tmpfs(where: Path, size: int) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


async def run_abuse(cfg: AbuseConfig, server: LocalRedis, work_dir: Path) -> AbuseReport:
    report = AbuseReport()
    t_start = time.monotonic()
    disk = work_dir / "disk"
    tmpfs = mount_tmpfs(disk, cfg.tmpfs_bytes)
    disk.mkdir(parents=True, exist_ok=True)
    outputs = disk / "outputs"
    redis.Redis.from_url(server.url).config_set("maxmemory", cfg.redis_maxmemory)
    hub = HubProcess(
        server.url,
        work_dir,
        api_keys=f"legit:{LEGIT_KEY},mallory:{ATTACKER_KEY}",
        worker_token=WORKER_TOKEN,
        outputs_dir=str(outputs),
        result_ttl_s=3600,
        lease_s=3.0,
        heartbeat_s=0.5,
        disconnect_grace_s=0.5,
        redis_timeout_s=1.0,
        read_timeout_s=5.0,
    ).start()
    worker_args = ["--worker-token", WORKER_TOKEN, "--output-bytes", str(cfg.output_bytes)]
    workers = [
        procs.spawn(
            procs.module_cmd(
                "bench.fake_worker",
                "--hub",
                hub.url,
                "--machine",
                "abuse",
                "--first-index",
                str(i),
                *worker_args,
            ),
            work_dir / f"worker{i}.log",
        )
        for i in range(cfg.workers)
    ]
    watch = HubWatch(hub, report)
    stop_watch = asyncio.Event()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=10),
            headers={"Authorization": f"Bearer {LEGIT_KEY}"},
        ) as session:
            await wait_workers(session, hub.url, cfg.workers, 30)
            watch.sample()
            report.rss_baseline_mb = report.rss_peak_mb
            watcher = asyncio.create_task(watch.run(stop_watch))
            legit = LegitClient(session, hub.url, cfg, report)
            operator = Operator(cfg, report, server, hub, legit, outputs, tmpfs)
            ids: list[str] = []
            tasks: list[asyncio.Task[str | None]] = []
            operator_task: asyncio.Task[None] | None = None
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            attackers: list[subprocess.Popen[bytes]] = []
            first_job = ""

            def attack(mode: str) -> None:
                # Its own process: its CPU is not the legitimate client's.
                attackers.append(
                    subprocess.Popen(
                        procs.module_cmd(
                            "bench.abuse",
                            "--attacker",
                            mode,
                            hub.url,
                            str(hub.port),
                            first_job or "0" * 32,
                            json.dumps(dataclasses.asdict(cfg)),
                        ),
                        stdout=subprocess.PIPE,
                        env=procs.child_env(),
                    )
                )

            # Phases by legitimate submissions: clean, 1,000 held streams, the whole hostile
            # mix (streams still held), then the faults (that last fifth spread over them, so
            # that they meet legitimate traffic).
            held_at, mix_at, faults_at = cfg.jobs // 5, 2 * cfg.jobs // 5, 4 * cfg.jobs // 5
            fault_rate = (cfg.jobs - faults_at) / (4 * cfg.fault_s + 6.0)
            t_faults = 0.0
            for i in range(cfg.jobs):
                if i == held_at:
                    first_job = (await tasks[0] if tasks else None) or ""
                    attack("held")
                    await _streams_open(session, hub.url, int(cfg.sse_held * 0.95), 60)
                    t0 = loop.time() - i / cfg.rate
                if i == mix_at:
                    attack("mix")
                if i == faults_at:
                    for proc in attackers:
                        proc.send_signal(signal.SIGTERM)
                    for proc in attackers:
                        out, _ = await asyncio.to_thread(proc.communicate, None, 60)
                        for name, outcomes in json.loads(out or b"{}").items():
                            report.attacks.setdefault(name, Counter()).update(outcomes)
                    attackers.clear()
                    operator_task = asyncio.create_task(operator.run())
                    t_faults = loop.time()
                phase = (
                    "warm-up"  # connections opening, scripts loading: not measured
                    if i < cfg.jobs // 20
                    else "clean"
                    if i < held_at
                    else "held"
                    if i < mix_at
                    else "hostile"
                    if i < faults_at
                    else "faults"
                )
                if phase == "faults":
                    delay = t_faults + (i - faults_at) / fault_rate - loop.time()
                else:
                    delay = t0 + i / cfg.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(legit.submit(i, phase)))
                report.submitted += 1
            if operator_task is not None:
                await operator_task
            ids = [job_id for job_id in await asyncio.gather(*tasks) if job_id]
            report.accepted = len(ids)
            final = await legit.final_states(ids)
            report.statuses = dict(Counter(view["status"] for view in final.values()))
            report.lost = sorted(
                j for j, view in final.items() if view["status"] in ("missing", "not finished")
            )
            report.storage_errors = sum(
                1
                for view in final.values()
                for entry in view.get("history") or []
                if (entry.get("error") or {}).get("type") == "storage_error"
            )
            stop_watch.set()
            await watcher
    finally:
        stop_watch.set()
        procs.stop_all(workers)
        hub.stop()
        if tmpfs:
            unmount(disk)
        report.seconds_total = time.monotonic() - t_start
    return report


async def _streams_open(
    session: aiohttp.ClientSession, url: str, count: int, within_s: float
) -> None:
    """Wait until the hub serves `count` event streams (its /health says how many)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(url + "/health") as response:
                if int((await response.json()).get("event_streams", 0)) >= count:
                    return
        await asyncio.sleep(0.2)


def abuse_table(cfg: AbuseConfig, report: AbuseReport) -> Table:
    table = Table(
        f"Abuse: {cfg.jobs} legitimate jobs, {cfg.workers} workers, hostile mix and faults",
        ["figure", "value"],
    )
    clean = percentile(report.latency_ms["clean"], 99)
    held = percentile(report.latency_ms["held"], 99)
    hostile = percentile(report.latency_ms["hostile"], 99)
    table.add("legitimate jobs submitted / accepted", f"{report.submitted} / {report.accepted}")
    table.add("final states", ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items())))
    table.add("legitimate jobs lost", len(report.lost))
    table.add("legitimate requests failed", len(report.failed_requests))
    table.add(
        "documented: 503 while Redis was unable / conn. errors while the hub was down",
        f"{report.documented_503} / {report.documented_conn_errors}",
    )
    table.add("attempts ended by storage_error (disk full), retried", report.storage_errors)
    table.add(
        "hub RSS baseline / peak (MB)", f"{report.rss_baseline_mb:.0f} / {report.rss_peak_mb:.0f}"
    )
    table.add("p99 submit latency, clean (ms)", clean)
    table.add(f"p99 submit latency, {cfg.sse_held} SSE streams held (ms)", held)
    table.add("p99 submit latency, whole hostile mix (ms)", hostile)
    table.add("ratio held streams / clean", ratio(held, clean))
    table.add("ratio hostile mix / clean", ratio(hostile, clean))
    for attack, outcomes in report.attacks.items():
        table.add(attack, ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items())))
    table.add("faults", "; ".join(report.faults))
    table.add("seconds total", report.seconds_total)
    verdict = "PASS" if report.ok else "FAIL"
    if report.failed_requests:
        verdict += f" (e.g. {report.failed_requests[:3]})"
    if report.lost:
        verdict += f" (lost e.g. {report.lost[:3]})"
    table.add("verdict", verdict)
    return table


async def attack_until_stopped(
    mode: str, url: str, port: int, legit_job: str, cfg: AbuseConfig
) -> None:
    """The attacker process (`held`: streams only; `mix`: everything else): attack until
    SIGTERM, then print what happened as JSON."""
    report = AbuseReport()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    attacker = Attacker(url, port, cfg, report, stop)
    work = attacker.hold_streams(legit_job) if mode == "held" else attacker.run(legit_job)
    try:
        await asyncio.wait_for(work, 600)
    finally:
        print(json.dumps({k: dict(v) for k, v in report.attacks.items()}), flush=True)


def abuse_config(quick: bool, workers: int) -> AbuseConfig:
    if not quick:
        return AbuseConfig(workers=workers)
    return AbuseConfig(jobs=400, workers=workers, sse_held=200, slow_connections=50, poisoned=100)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--attacker":
        mode, url, port, legit_job, raw = sys.argv[2:7]
        cfg = AbuseConfig(**json.loads(raw))
        asyncio.run(attack_until_stopped(mode, url, int(port), legit_job, cfg))
        return
    fault_run_main(
        "abuse", __doc__ or "", "400 jobs, a smaller mix", abuse_config, run_abuse, abuse_table, 900
    )


if __name__ == "__main__":
    main()
