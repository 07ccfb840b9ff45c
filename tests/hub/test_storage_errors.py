"""Storage failures are storage failures: never "Redis unavailable", never a `succeeded` job
with an output missing; the sweeper deletes only what the hub made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from redis_api.config import HubConfig
from redis_api.errors import ConfigError, HubError, StorageError, StoreUnavailable
from redis_api.server import RunningHub, start_hub
from redis_api.storage import MARKER, LocalDirStorage
from tests.fixtures.hub import TEST_DEFAULTS, HubFactory
from tests.hub.helpers import get_job, job_status, submit
from tests.hub.worker_client import ProtocolWorker
from wgpu_protocol.messages import (
    Ack,
    Cancel,
    Completed,
    ErrorReply,
    JobAssigned,
    OutputFrame,
    OutputRef,
    encode_output_frame,
)

pytestmark = pytest.mark.redis


def test_hierarchy_has_one_root() -> None:
    assert issubclass(StoreUnavailable, HubError) and issubclass(StorageError, HubError)
    assert not issubclass(StorageError, StoreUnavailable)
    assert not issubclass(StorageError, OSError)


async def _output_write_fails(
    hub_factory: HubFactory, tmp_path: Path, max_attempts: int
) -> tuple[RunningHub, ProtocolWorker, dict[str, Any], JobAssigned, OutputFrame]:
    """A job whose first output the hub cannot write: a file stands where the job's directory
    (under tmp_path/out) should go, so the write fails with a real OSError."""
    outputs = tmp_path / "out"
    hub = await hub_factory(outputs_dir=str(outputs))
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=max_attempts)
    assigned = await worker.take_job()
    (outputs / job["id"]).write_bytes(b"in the way")
    frame = OutputFrame(job["id"], assigned.token, "a.png", "image/png", b"png")
    await worker.send_raw(encode_output_frame(frame))
    return hub, worker, job, assigned, frame


async def test_failed_output_write_is_a_storage_error(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    hub, worker, job, assigned, frame = await _output_write_fails(hub_factory, tmp_path, 2)
    cancel = await worker.expect(Cancel, job_id=job["id"])
    assert cancel.reason == "storage_error"
    await worker.send(Completed(job["id"], assigned.token, (frame.ref,)))
    ack = await worker.expect(Ack, job_id=job["id"], of="completed")
    assert not ack.ok
    view = await get_job(hub.url, job["id"])
    assert view["status"] == "queued", view  # retried, not succeeded with outputs: []
    assert view["history"][-1]["error"]["type"] == "storage_error"
    assert "Redis" not in view["history"][-1]["error"]["message"]
    await worker.close()


async def test_completed_is_refused_while_an_announced_output_is_missing(
    hub_factory: HubFactory,
) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url, max_attempts=1)
    assigned = await worker.take_job()
    ref = OutputRef("never-sent.png", "image/png", 10)
    await worker.send(Completed(job["id"], assigned.token, (ref,)))
    ack = await worker.expect(Ack, job_id=job["id"], of="completed")
    assert not ack.ok and ack.reason == "storage_error"
    final = await job_status(hub.url, job["id"], "dead")
    assert final["outputs"] == [] and final["error"]["type"] == "storage_error"
    await worker.close()


async def test_output_refused_by_name_rule_keeps_socket(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    job = await submit(hub.url)
    assigned = await worker.take_job()
    for name in ("x" * 256, "a\0b.png"):
        blob = encode_output_frame(OutputFrame(job["id"], assigned.token, name, "image/png", b"1"))
        await worker.send_raw(blob)
        error = await worker.expect(ErrorReply)
        assert "output.name" in error.message, error
    assert (await worker.complete(assigned, {"ok.png": ("image/png", b"fine")})).ok
    await worker.close()


def _config(tmp_path: Path, outputs: Path, **overrides: object) -> HubConfig:
    settings = dict(TEST_DEFAULTS, outputs_dir=str(outputs), **overrides)
    return HubConfig(**settings)  # type: ignore[arg-type]


async def test_hub_refuses_a_non_empty_outputs_dir_without_marker(
    redis_url: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    (shared / "photos").mkdir(parents=True)
    (shared / "photos" / "cat.jpg").write_bytes(b"jpg")
    with pytest.raises(ConfigError, match="not empty"):
        await start_hub(_config(tmp_path, shared, redis_url=redis_url))
    assert (shared / "photos" / "cat.jpg").read_bytes() == b"jpg"


async def test_hub_refuses_a_dir_marked_for_another_store(redis_url: str, tmp_path: Path) -> None:
    outputs = tmp_path / "out"
    first = await start_hub(_config(tmp_path, outputs, redis_url=redis_url))
    await first.close()
    assert (outputs / MARKER).is_file()
    with pytest.raises(ConfigError, match="another hub store"):
        await start_hub(_config(tmp_path, outputs, redis_url=redis_url, key_prefix="other:"))


async def test_sweeper_touches_only_job_shaped_dirs(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    outputs = tmp_path / "out"
    hub = await hub_factory(outputs_dir=str(outputs), result_ttl_s=1.0)
    (outputs / "keep-me").mkdir()
    (outputs / "keep-me" / "notes.txt").write_text("mine")
    stale = "0123456789abcdef0123456789abcdef"  # a job id no Redis knows: the sweeper's to remove
    (outputs / stale).mkdir()
    removed = await hub.hub.maintenance.sweep_outputs()
    assert removed == 1 and not (outputs / stale).exists()
    assert (outputs / "keep-me" / "notes.txt").read_text() == "mine"


async def test_sweeper_ignores_an_unmarked_root(tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    (root / "0123456789abcdef0123456789abcdef").mkdir(parents=True)
    storage = LocalDirStorage(root)
    assert await storage.job_ids() == []
    await storage.delete_job("../elsewhere")  # not job shaped: nothing happens
    assert root.exists()


async def test_storage_errors_are_not_store_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    storage = LocalDirStorage(blocker)
    with pytest.raises(StorageError):
        await storage.put("0123456789abcdef0123456789abcdef", "a.png", b"1")


async def test_a_storage_failure_pauses_claims_on_that_hub(
    hub_factory: HubFactory, tmp_path: Path
) -> None:
    """A full disk must not burn every queued job's attempts in a second: after a storage
    failure the hub claims nothing for its workers for a while, then carries on."""
    hub, worker, job, _, _ = await _output_write_fails(hub_factory, tmp_path, 3)
    outputs = tmp_path / "out"
    await worker.expect(Cancel, job_id=job["id"])
    assert hub.hub.dispatcher.paused
    await worker.ready()
    await worker.nothing_of(JobAssigned, within=0.3)  # paused: the job waits in the queue
    (outputs / job["id"]).unlink()
    again = await worker.expect(JobAssigned, within=5.0)
    assert again.job_id == job["id"] and again.attempt == 2
    assert (await worker.complete(again, {"a.png": ("image/png", b"png")})).ok
    assert (await get_job(hub.url, job["id"]))["status"] == "succeeded"
    await worker.close()
