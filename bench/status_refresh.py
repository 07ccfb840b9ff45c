"""How long one `wgpu status` refresh takes with N workers (issue 5 target: < 100 ms for 8).

    python bench/status_refresh.py --docker-host unix:///run/x/docker.sock --image IMG [--gpus 8]

Starts N worker containers from IMG (any image whose default command keeps running; NVIDIA
device requests need the driver or the no-op hook), times `collect_snapshot` (one container list,
one NVML poll, one hub call to a closed port), prints the distribution, and removes them.
Use a daemon of its own: container names comfy-worker-gpu{N} are fixed.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

from orchestrator.backends.base import WorkerSettings, plan_slots
from orchestrator.backends.docker_backend import DockerBackend
from orchestrator.gpus import nvml
from orchestrator.gpus.slots import select_slots
from orchestrator.hub_client.client import HubClient
from orchestrator.status_view import collect_snapshot


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-host", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--refreshes", type=int, default=50)
    args = parser.parse_args()

    backend = DockerBackend.connect(args.docker_host)
    selection = select_slots(",".join(str(i) for i in range(args.gpus)), None, [])
    settings = WorkerSettings(machine_id="bench", image=args.image)
    hub = HubClient(f"http://127.0.0.1:{closed_port()}", timeout_s=0.5)
    try:
        results = backend.start(plan_slots(selection.slots, settings, args.gpus))
        assert all(r.ok for r in results), results
        with nvml.GpuMonitor() as monitor:
            collect_snapshot(backend, monitor, [], hub)  # warm the connection pool
            times = []
            for _ in range(args.refreshes):
                started = time.perf_counter()
                snapshot = collect_snapshot(backend, monitor, [], hub)
                times.append((time.perf_counter() - started) * 1000)
        running = sum(1 for s in snapshot.slots if s.worker and s.worker.state == "running")
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        print(
            f"{running} workers, {args.refreshes} refreshes: "
            f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
            f"max {times[-1]:.1f} ms (NVML: {monitor.error or 'ok'})"
        )
    finally:
        backend.remove(None)
        backend.close()


if __name__ == "__main__":
    main()
