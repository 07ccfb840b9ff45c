"""`wgpu submit`, `wgpu jobs`, `wgpu cancel` against a real stack (local Redis, hub, 2 slots)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from orchestrator.errors import RedisUnavailable
from orchestrator.hub_client.client import HubClient
from orchestrator.stack.lifecycle import ProcessStack, ProcessStackConfig, free_port_block
from orchestrator.stack.local_redis import find_server_binary
from tests.fixtures.services import service_missing
from tests.paths import REPO

QUICK = REPO / "examples" / "quick.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def wgpu(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def hub_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        find_server_binary()
    except RedisUnavailable as exc:
        service_missing("Redis", str(exc))
    base = free_port_block(3)
    config = ProcessStackConfig(
        state_dir=tmp_path_factory.mktemp("stack"),
        slots=2,
        hub_port=base,
        port_base=base + 1,
        machine_id="clienttest",
        sim_node_time_s=0.05,
        hub_env={"LEASE_S": "3", "HEARTBEAT_S": "0.5"},
    )
    stack = ProcessStack(config)
    stack.start()
    try:
        stack.wait_workers()
        yield config.hub_url
    finally:
        stack.stop()


def fault_workflow(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"{mode}.json"
    path.write_text(json.dumps({"1": {"class_type": "WgpuSimFault", "inputs": {"mode": mode}}}))
    return path


def test_submit_wait_downloads_every_output(hub_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = wgpu("submit", str(QUICK), "--count", "2", "--out", str(out), "--hub-url", hub_url)
    assert result.exit_code == 0, result.output + result.stderr
    job_dirs = sorted(out.iterdir())
    assert len(job_dirs) == 2
    for directory in job_dirs:
        images = list(directory.iterdir())
        assert images and all(p.read_bytes().startswith(PNG_MAGIC) for p in images)
        assert f"{directory.name} quick.json: succeeded" in result.stdout
    assert "100%" in result.stderr  # the progress bars, fed by the event stream


def test_submit_without_wait_prints_ids_that_jobs_lists(hub_url: str) -> None:
    result = wgpu("submit", str(QUICK), "--priority", "3", "--hub-url", hub_url)
    assert result.exit_code == 0, result.output
    job_id = result.stdout.strip()
    assert len(job_id.splitlines()) == 1
    hub = HubClient(hub_url)
    deadline = time.monotonic() + 30
    while hub.get_job(job_id)["status"] != "succeeded":
        assert time.monotonic() < deadline, hub.get_job(job_id)
        time.sleep(0.1)
    listed = json.loads(wgpu("jobs", "--json", "--hub-url", hub_url).stdout)["jobs"]
    mine = [job for job in listed if job["id"] == job_id]
    assert mine and mine[0]["priority"] == 3 and mine[0]["worker_id"].startswith("clienttest-")
    table = wgpu("jobs", "--status", "succeeded", "--hub-url", hub_url)
    assert table.exit_code == 0 and "succeeded" in table.stdout
    assert job_id[:12] in table.stdout and job_id[:13] not in table.stdout  # docker-style ids


def test_a_failing_job_fails_the_command(hub_url: str, tmp_path: Path) -> None:
    broken = fault_workflow(tmp_path, "execution_error")
    result = wgpu("submit", str(broken), "--wait", "--json", "--hub-url", hub_url)
    assert result.exit_code == 1, result.output
    (job,) = json.loads(result.stdout)["jobs"]
    # The simulator raises in the node like real ComfyUI: not retryable, so failed at once.
    assert job["status"] == "failed"
    assert job["error"].startswith("execution_error: ")  # "type: message", one line


def test_cancel_interrupts_a_running_job(hub_url: str, tmp_path: Path) -> None:
    hang = fault_workflow(tmp_path, "hang")
    job_id = wgpu("submit", str(hang), "--hub-url", hub_url).stdout.strip()
    hub = HubClient(hub_url)
    deadline = time.monotonic() + 30
    while hub.get_job(job_id)["status"] != "running":
        assert time.monotonic() < deadline, hub.get_job(job_id)
        time.sleep(0.05)
    result = wgpu("cancel", job_id[:8], "--hub-url", hub_url)  # a unique prefix is enough
    assert result.exit_code == 0, result.output
    assert f"{job_id}: cancelled" in result.stdout
    assert hub.get_job(job_id)["status"] == "cancelled"


def test_cancel_of_an_unknown_job_is_not_found(hub_url: str) -> None:
    result = wgpu("cancel", "no-such-job", "--hub-url", hub_url)
    assert result.exit_code == 4
    assert "not found" in result.stderr


def test_unreachable_hub_is_one_clear_line(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port_block(1)}"
    for args in (["submit", str(QUICK)], ["jobs"], ["cancel", "x"]):
        result = wgpu(*args, "--hub-url", dead)
        assert result.exit_code == 3, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not answer" in lines[0] and "wgpu up" in lines[0]


def test_bad_workflow_files_are_usage_errors(tmp_path: Path, hub_url: str) -> None:
    not_json = tmp_path / "a.json"
    not_json.write_text("{nope")
    not_api = tmp_path / "b.json"
    not_api.write_text(json.dumps({"nodes": [], "links": []}))  # the UI format, not the API one
    for path, words in ((not_json, "is not JSON"), (not_api, "Save (API Format)")):
        result = wgpu("submit", str(path), "--hub-url", hub_url)
        assert result.exit_code == 2 and words in result.stderr, result.stderr
    missing = wgpu("submit", str(tmp_path / "missing.json"), "--hub-url", hub_url)
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_the_hub_refusing_a_workflow_says_why(hub_url: str, tmp_path: Path) -> None:
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"1": {"class_type": "X", "inputs": {}}}))
    result = CliRunner().invoke(
        app, ["submit", str(odd), "--priority", "99999999999999999999", "--hub-url", hub_url]
    )
    assert result.exit_code == 2, result.output
    assert "refused" in result.stderr


def test_submit_with_input_files_uploads_them_once(hub_url: str, tmp_path: Path) -> None:
    """`wgpu submit wf.json --input photo=in.png`: uploaded, named, inverted pixel by pixel."""
    from comfyui_sim.media_nodes import INVERT_TABLE
    from comfyui_sim.png import decode_png
    from tests.fixtures.sim_traffic import RECORDED

    png = tmp_path / "in.png"
    png.write_bytes((RECORDED / "upload_image_in.png").read_bytes())
    workflow = tmp_path / "invert.json"
    nodes = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "i"}},
    }
    workflow.write_text(json.dumps(nodes))
    out = tmp_path / "out"
    result = wgpu(
        "submit", str(workflow), "--input", f"photo={png}", "-n", "2", "--out", str(out),
        "--hub-url", hub_url, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(out.rglob("*.png"))
    assert len(files) == 2
    _, _, original, _ = decode_png(png.read_bytes())
    for path in files:
        assert decode_png(path.read_bytes())[2] == original.translate(INVERT_TABLE)
    missing = wgpu("submit", str(workflow), "--input", "nope.png", "--hub-url", hub_url)
    assert missing.exit_code != 0 and "no file nope.png" in missing.output
    unnamed = wgpu("submit", str(workflow), "--input", str(png), "--hub-url", hub_url)
    assert unnamed.exit_code != 0 and "not named by any node" in unnamed.output


def test_submit_with_a_mask_gives_loadimage_that_mask(hub_url: str, tmp_path: Path) -> None:
    """`wgpu submit wf.json --input photo=in.png --mask photo=mask.png`: LoadImage's MASK is
    1 - the mask file's alpha, pixel by pixel."""
    from comfyui_sim.png import decode_png, encode_png
    from tests.fixtures.sim_traffic import RECORDED

    png = tmp_path / "in.png"
    png.write_bytes((RECORDED / "upload_image_in.png").read_bytes())
    width, height, _, _ = decode_png(png.read_bytes())
    alpha = bytes((5 * i) % 256 for i in range(width * height))
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode_png(width, height, bytes(3 * width * height), alpha=alpha))
    workflow = tmp_path / "mask.json"
    nodes = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo"}},
        "2": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "m"}},
    }
    workflow.write_text(json.dumps(nodes))
    out = tmp_path / "out"
    result = wgpu(
        "submit", str(workflow), "--input", f"photo={png}", "--mask", f"photo={mask}",
        "--out", str(out), "--hub-url", hub_url, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (saved,) = sorted(out.rglob("*.png"))
    assert decode_png(saved.read_bytes())[2] == bytes(v for a in alpha for v in (255 - a,) * 3)
    bad = wgpu("submit", str(workflow), "--mask", f"{mask}", "--hub-url", hub_url)
    assert bad.exit_code == 2 and "IMAGE=FILE" in bad.output
