"""The dashboard in a real browser (Debian's chromium + chromium-driver, driven by selenium)
against a real hub on real Redis with two workers relaying to two ComfyUI simulators.

Selenium is blocking: its calls run in a thread while the hub, the workers and the simulators run
on the test's event loop. Each test saves a screenshot under $WGPU_ARTIFACTS (default
`artifacts/`, gitignored), which CI keeps as an artifact.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import shutil
import struct
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from redis_api.server import RunningHub
from tests.fixtures.hub import HubFactory
from tests.fixtures.services import service_missing
from tests.fixtures.sim import SimFactory
from tests.fixtures.sim_traffic import WORKFLOWS
from tests.hub.helpers import call, submit
from tests.hub.worker_client import ProtocolWorker
from tests.paths import REPO
from tests.polling import eventually
from tests.worker.harness import PNG as INPUT_PNG
from tests.worker.harness import REAL_INVERTED, invert_workflow, running_worker, worker_config
from wgpu_protocol.messages import ExecutionStarted, Ready, RunningJob

pytestmark = [pytest.mark.redis, pytest.mark.browser]

T = TypeVar("T")
DEADLINE_S = 30.0
ARTIFACTS = Path(os.environ.get("WGPU_ARTIFACTS") or REPO / "artifacts")


# Page probes (JavaScript run in the page).
TILES_JS = (
    "return [...document.querySelectorAll('.tile')]"
    ".map(t => [t.closest('.machine').dataset.machine, t.dataset.status])"
)
IMAGE_WIDTH_JS = (
    "const img = document.querySelector('#detail-outputs img');"
    "return img && img.complete ? img.naturalWidth : 0"
)
TILE_PROGRESS_JS = (  # [the job's status in the list, its tile's progress bar value]
    "const a = document.querySelector(`.tile a[data-job-id='${arguments[0]}']`);"
    "const bar = a && a.parentElement.querySelector('progress');"
    "const row = document.querySelector(`#jobs tr[data-job-id='${arguments[0]}']`);"
    "return [row ? row.dataset.status : '', bar ? bar.value : null];"
)


def find_browser() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        service_missing(
            "Chromium",
            "needs Debian's chromium and chromium-driver (scripts/install-system-deps.sh)",
        )
    return browser, driver


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(flag)
    try:
        chrome = webdriver.Chrome(service=Service(chromedriver), options=options)
    except Exception as exc:  # the browser is installed but does not start
        service_missing("Chromium", f"did not start: {exc}")
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def page(driver: Any) -> Iterator[Any]:
    yield driver
    with contextlib.suppress(Exception):
        driver.execute_script("sessionStorage.clear()")
    driver.get("about:blank")  # stop the page's feed before the hub closes


async def until(probe: Callable[[], T], ok: Callable[[T], bool], what: str) -> T:
    """Poll `probe` (blocking: run in a thread) until `ok`; fail naming `what`."""
    return await eventually(lambda: asyncio.to_thread(probe), ok, DEADLINE_S, 0.05, what)


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    return path


def sleepy_workflow(seconds: float, steps: int) -> dict[str, Any]:
    """An image through a node that takes `seconds` and reports `steps` progress steps."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 3381759},
        },
        "2": {
            "class_type": "WgpuSimSleep",
            "inputs": {"seconds": seconds, "steps": steps, "image": ["1", 0]},
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "dash/test"},
        },
    }


@contextlib.asynccontextmanager
async def two_workers(
    hub: RunningHub, sim_factory: SimFactory, tmp_path: Path
) -> AsyncIterator[None]:
    """Two workers on two machines, each relaying to its own simulator."""
    async with contextlib.AsyncExitStack() as stack:
        for machine in ("rack-a", "rack-b"):
            sim = await sim_factory()
            config = worker_config(
                hub.url, sim.url, tmp_path, machine_id=machine, health_file=tmp_path / machine
            )
            await stack.enter_async_context(running_worker(config))

        async def idle() -> bool:
            _, body = await call(hub.url, "GET", "/workers")
            return sum(w["status"] == "idle" for w in body["workers"]) == 2

        await eventually(idle, within=DEADLINE_S, every=0.05, what="both workers connected")
        yield


async def test_submit_watch_progress_and_see_the_image(
    hub_factory: HubFactory, sim_factory: SimFactory, page: Any, tmp_path: Path
) -> None:
    hub = await hub_factory(live_interval_s=0.1)
    async with two_workers(hub, sim_factory, tmp_path):
        await asyncio.to_thread(page.get, hub.url + "/")
        tiles = await until(lambda: js(page, TILES_JS), lambda t: len(t) == 2, "two worker tiles")
        assert sorted(tiles) == [["rack-a", "idle"], ["rack-b", "idle"]]  # grouped by machine
        assert (
            await asyncio.to_thread(
                js, page, "return document.querySelector('#feed-state').textContent"
            )
            == "live"
        )

        workflow = tmp_path / "sleepy.json"
        workflow.write_text(json.dumps(sleepy_workflow(seconds=2.5, steps=25)))
        await asyncio.to_thread(
            lambda: page.find_element("css selector", "#file-input").send_keys(str(workflow))
        )
        await until(
            lambda: js(page, "return !document.querySelector('#submit-form').hidden"),
            bool,
            "the dropped workflow shown",
        )
        await asyncio.to_thread(lambda: page.find_element("css selector", "#submit-button").click())
        job_id = await until(
            lambda: js(page, "return document.querySelector('#submit-result').dataset.jobId || ''"),
            bool,
            "the submitted job's id",
        )
        assert len(job_id) == 32

        # The tile of the worker running it: its progress bar moves while the job runs.
        seen: list[float] = []

        def progress() -> tuple[str, float | None]:
            status, value = js(page, TILE_PROGRESS_JS, job_id)
            if value is not None and (not seen or seen[-1] != value):
                seen.append(value)
            return status, value

        await until(progress, lambda p: p[0] == "succeeded", "the job succeeded in the list")
        moving = [v for v in seen if 0 < v < 100]
        assert len(moving) >= 2 and moving == sorted(moving), seen  # it moved, forwards

        # Open the finished job from the list: its image is rendered.
        await asyncio.to_thread(
            lambda: page.find_element("css selector", f"#jobs tr[data-job-id='{job_id}']").click()
        )
        width = await until(
            lambda: js(page, IMAGE_WIDTH_JS), lambda w: w > 0, "the output image rendered"
        )
        assert width == 96
        detail = await asyncio.to_thread(
            js,
            page,
            "return [document.querySelector('#job-detail').dataset.status,"
            " document.querySelector('#detail-workflow').textContent,"
            " document.querySelector('#detail-outputs a[download]').getAttribute('download'),"
            " document.querySelectorAll('#detail-history tbody tr').length]",
        )
        assert detail[0] == "succeeded" and "WgpuSimSleep" in detail[1]
        assert detail[2].endswith(".png") and detail[3] == 1
        # For the screenshot: another job running, its tile's bar part way.
        status, busy = await call(
            hub.url, "POST", "/jobs", {"workflow": sleepy_workflow(seconds=30, steps=100)}
        )
        assert status == 201
        await until(
            lambda: js(page, TILE_PROGRESS_JS, busy["id"])[1] or 0,
            lambda v: v > 0,
            "the second job's progress on its tile",
        )
        await asyncio.to_thread(js, page, "window.scrollTo(0, 0)")
        path = await asyncio.to_thread(screenshot, page, "dashboard.png")
        assert path.read_bytes().startswith(b"\x89PNG")
        await call(hub.url, "DELETE", f"/jobs/{busy['id']}")

        # Everything the page loaded came from the hub (no CDN): it works offline.
        sources = await asyncio.to_thread(
            js, page, "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert sources and all(s.startswith((hub.url, "blob:")) for s in sources), sources


async def test_cancel_and_retry_buttons(
    hub_factory: HubFactory, sim_factory: SimFactory, page: Any, tmp_path: Path
) -> None:
    hub = await hub_factory(live_interval_s=0.1)
    async with two_workers(hub, sim_factory, tmp_path):
        status, job = await call(
            hub.url, "POST", "/jobs", {"workflow": sleepy_workflow(seconds=60, steps=60)}
        )
        assert status == 201
        await asyncio.to_thread(page.get, f"{hub.url}/#job={job['id'][:12]}")

        def detail() -> list[Any]:
            return list(
                js(
                    page,
                    "const d = document.querySelector('#job-detail');"
                    "return [d.hidden, d.dataset.jobId || '', d.dataset.status || '',"
                    " document.querySelector('#detail-cancel').disabled]",
                )
            )

        await until(detail, lambda d: d[1] == job["id"] and d[2] == "running", "detail running")
        await asyncio.to_thread(lambda: page.find_element("css selector", "#detail-cancel").click())
        await until(detail, lambda d: d[2] == "cancelled", "the job cancelled")
        _, after = await call(hub.url, "GET", f"/jobs/{job['id']}")
        assert after["status"] == "cancelled"

        await asyncio.to_thread(lambda: page.find_element("css selector", "#detail-retry").click())
        retried = await until(
            detail, lambda d: d[1] not in ("", job["id"]), "the retry opened a new job"
        )
        _, again = await call(hub.url, "GET", f"/jobs/{retried[1]}")
        assert again["workflow"] == sleepy_workflow(seconds=60, steps=60)
        assert again["status"] in ("queued", "running")
        await call(hub.url, "DELETE", f"/jobs/{retried[1]}")
        await asyncio.to_thread(screenshot, page, "dashboard-cancelled.png")


async def test_with_api_keys_the_page_asks_once_and_keeps_the_key_for_the_tab(
    hub_factory: HubFactory, page: Any
) -> None:
    hub = await hub_factory(api_keys=("s3cret-key",), worker_token="w-token", live_interval_s=0.1)
    await asyncio.to_thread(page.get, hub.url + "/")
    await until(
        lambda: js(page, "return document.querySelector('#key-dialog').open"), bool, "key asked"
    )

    def enter(key: str) -> None:
        field = page.find_element("css selector", "#key-input")
        field.send_keys(key)
        page.find_element("css selector", "#key-form button").click()

    await asyncio.to_thread(enter, "wrong")
    await until(
        lambda: js(page, "return document.querySelector('#key-error').textContent"),
        lambda text: "refused" in text,
        "a wrong key refused",
    )
    await asyncio.to_thread(enter, "s3cret-key")
    feed = "return document.querySelector('#feed-state').textContent"
    await until(lambda: js(page, feed), lambda s: s == "live", "the feed live with the key")
    stored = await asyncio.to_thread(
        js,
        page,
        "return [sessionStorage.getItem('wgpu.apiKey'), localStorage.length, document.cookie]",
    )
    assert stored == ["s3cret-key", 0, ""]  # this tab only: not in localStorage, no cookie
    await asyncio.to_thread(page.refresh)  # the same tab keeps it: no second question
    await until(lambda: js(page, feed), lambda s: s == "live", "live again after a reload")
    assert not await asyncio.to_thread(
        js, page, "return document.querySelector('#key-dialog').open"
    )


# [width, height, [r, g, b] at each of arguments[0]'s [x, y]] of the detail's first image, read
# back through a canvas (the blob: URL is the hub's origin: the canvas is not tainted).
IMAGE_PIXELS_JS = (
    "const img = document.querySelector('#detail-outputs img');"
    "if (!img || !img.complete || !img.naturalWidth) return null;"
    "const canvas = document.createElement('canvas');"
    "canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;"
    "const context = canvas.getContext('2d');"
    "context.drawImage(img, 0, 0);"
    "return [img.naturalWidth, img.naturalHeight, arguments[0].map(([x, y]) =>"
    " [...context.getImageData(x, y, 1, 1).data.slice(0, 3)])];"
)
DROP_FILE_JS = (  # drop a file (name, type, base64 bytes) on the drop zone, as a user would
    "const [name, type, b64] = arguments;"
    "const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));"
    "const transfer = new DataTransfer();"
    "transfer.items.add(new File([bytes], name, { type }));"
    "const zone = document.querySelector('#drop-zone');"
    "for (const kind of ['dragover', 'drop']) {"
    "  zone.dispatchEvent(new DragEvent(kind, { dataTransfer: transfer, bubbles: true,"
    "    cancelable: true }));"
    "}"
)


async def test_submit_a_workflow_with_its_input_image_and_see_it_inverted(
    hub_factory: HubFactory, sim_factory: SimFactory, page: Any, tmp_path: Path
) -> None:
    """Submit: pick a workflow JSON (API format), drop its input PNG, see it run, open it and
    find the inverted image rendered, pixel for pixel as real ComfyUI made it (recorded)."""
    hub = await hub_factory()
    async with two_workers(hub, sim_factory, tmp_path):
        await asyncio.to_thread(page.get, hub.url + "/")
        await until(lambda: js(page, TILES_JS), lambda t: len(t) == 2, "two worker tiles")
        workflow = tmp_path / "invert.json"
        workflow.write_text(json.dumps(invert_workflow("in.png")))
        await asyncio.to_thread(
            lambda: page.find_element("css selector", "#file-input").send_keys(str(workflow))
        )
        png = base64.b64encode(INPUT_PNG).decode()
        await asyncio.to_thread(js, page, DROP_FILE_JS, "in.png", "image/png", png)
        await until(
            lambda: js(page, "return document.querySelector('#submit-inputs').textContent"),
            lambda text: "in.png" in text,
            "the dropped input listed",
        )
        await asyncio.to_thread(lambda: page.find_element("css selector", "#submit-button").click())
        job_id = await until(
            lambda: js(page, "return document.querySelector('#submit-result').dataset.jobId || ''"),
            bool,
            "the submitted job's id",
        )
        statuses: list[str] = []

        def row_status() -> str:
            status = str(js(page, TILE_PROGRESS_JS, job_id)[0])
            if status and (not statuses or statuses[-1] != status):
                statuses.append(status)
            return status

        await until(row_status, lambda s: s == "succeeded", "the job succeeded in the list")
        assert statuses[-1] == "succeeded" and set(statuses) <= {
            "queued",
            "assigned",
            "running",
            "succeeded",
        }
        await asyncio.to_thread(
            lambda: page.find_element("css selector", f"#jobs tr[data-job-id='{job_id}']").click()
        )
        width, height, rgb, _ = REAL_INVERTED
        points = [[0, 0], [width // 2, height // 2], [width - 1, height - 1], [3, height - 2]]
        shown = await until(
            lambda: js(page, IMAGE_PIXELS_JS, points), bool, "the inverted image rendered"
        )
        assert shown[:2] == [width, height]
        expected = [list(rgb[3 * (y * width + x) : 3 * (y * width + x) + 3]) for x, y in points]
        assert shown[2] == expected
        _, job = await call(hub.url, "GET", f"/jobs/{job_id}")
        assert job["status"] == "succeeded" and job["workflow"]["1"]["class_type"] == "LoadImage"
        # The input went up on its own (POST /uploads, streamed), not inlined in the job's JSON.
        requests = await asyncio.to_thread(
            js, page, "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert f"{hub.url}/uploads?name=in.png" in requests, requests
        await asyncio.to_thread(screenshot, page, "dashboard-inverted.png")


MEDIA_JS = (  # [tag, blob: src?, caption] of each output the job detail shows
    "return [...document.querySelectorAll('#detail-outputs .output')].map(box => {"
    "  const media = box.querySelector('img, video, audio');"
    "  return [media ? media.tagName.toLowerCase() : '',"
    "    media ? media.src.startsWith('blob:') : false,"
    "    media && media.tagName === 'IMG' && media.complete ? media.naturalWidth : 0,"
    "    (box.querySelector('.caption') || {}).textContent || ''];"
    "})"
)


async def test_animated_images_and_video_preview_inline(
    hub_factory: HubFactory, sim_factory: SimFactory, page: Any, tmp_path: Path
) -> None:
    """An animated PNG renders as an image, an mp4 as a <video> (the simulator's mp4 is not a
    playable encoding: the element and its blob are what is checked), each downloadable."""
    hub = await hub_factory()
    async with two_workers(hub, sim_factory, tmp_path):
        for name, tag, kind in (
            ("animated_png.json", "img", "image/png"),
            ("video_mp4.json", "video", "video/mp4"),
        ):
            workflow = json.loads((WORKFLOWS / name).read_text())
            status, job = await call(hub.url, "POST", "/jobs?wait=30", {"workflow": workflow})
            assert status == 200 and job["status"] == "succeeded", job
            await asyncio.to_thread(page.get, f"{hub.url}/#job={job['id']}")

            def ready(boxes: list[Any], tag: str = tag) -> bool:
                if not boxes or boxes[0][0] != tag or not boxes[0][3]:
                    return False
                return tag != "img" or boxes[0][2] > 0

            shown = await until(lambda: js(page, MEDIA_JS), ready, f"{name}'s output inline")
            ((_, from_blob, _, caption),) = shown
            assert from_blob and kind in caption, shown
            await asyncio.to_thread(js, page, "window.scrollTo(0, 0)")
        await asyncio.to_thread(screenshot, page, "dashboard-video.png")


TILE_JOB_JS = (  # [the tile's job status, its text] of worker arguments[0]
    "const job = document.querySelector(`.tile[data-worker='${arguments[0]}'] .job`);"
    "return job ? [job.dataset.jobStatus || '', job.textContent] : ['', ''];"
)


async def test_a_tile_shows_a_job_assigned_then_running_as_the_feed_pushes_it(
    hub_factory: HubFactory, page: Any
) -> None:
    """No timer can refresh the page (live_interval_s is an hour): the tile changes because the
    claim and ComfyUI's execution_start each pushed a change through the feed."""
    hub = await hub_factory(live_interval_s=3600, lease_s=30)
    worker = ProtocolWorker(hub.url, execution_started=True)
    await worker.connect()
    await asyncio.to_thread(page.get, hub.url + "/")
    await until(lambda: js(page, TILES_JS), lambda t: len(t) == 1, "the worker's tile")
    job = await submit(hub.url)
    taken = await worker.take_job()
    _, text = await until(
        lambda: js(page, TILE_JOB_JS, worker.worker_id), lambda t: t[0] == "assigned", "assigned"
    )
    assert job["id"][:12] in text and "in ComfyUI's queue" in text
    await worker.send(ExecutionStarted(taken.job_id, taken.token, "prompt-1"))
    _, text = await until(
        lambda: js(page, TILE_JOB_JS, worker.worker_id), lambda t: t[0] == "running", "running"
    )
    assert "ComfyUI's queue" not in text
    assert (await worker.complete(taken)).ok
    await until(
        lambda: js(page, TILE_PROGRESS_JS, job["id"])[0], lambda s: s == "succeeded", "the end"
    )
    await worker.close()


TILE_RELAY_JS = (  # the text of worker arguments[0]'s relay line ('' when it has none)
    "const r = document.querySelector(`.tile[data-worker='${arguments[0]}'] .relay`);"
    "return r ? r.textContent : '';"
)


async def test_a_tile_shows_the_job_whose_outputs_its_worker_still_relays(
    hub_factory: HubFactory, page: Any
) -> None:
    hub = await hub_factory(live_interval_s=3600, lease_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    await asyncio.to_thread(page.get, hub.url + "/")
    await until(lambda: js(page, TILES_JS), lambda t: len(t) == 1, "the worker's tile")
    job = await submit(hub.url)
    taken = await worker.take_job()
    await worker.send(Ready(relaying=RunningJob(taken.job_id, taken.token)))
    text = await until(lambda: js(page, TILE_RELAY_JS, worker.worker_id), bool, "the relay line")
    assert job["id"][:12] in text, text
    assert (await worker.complete(taken)).ok
    await until(lambda: js(page, TILE_RELAY_JS, worker.worker_id), lambda t: t == "", "no relay")
    await worker.close()


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """A playable mono 16-bit PCM WAV of a 440 Hz tone."""
    samples = int(seconds * rate)
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        tone = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(samples))
        wav.writeframes(b"".join(struct.pack("<h", v) for v in tone))
    return out.getvalue()


AUDIO_JS = (  # [blob: src?, duration once its metadata loaded (0 before)] of the detail's audio
    "const a = document.querySelector('#detail-outputs audio');"
    "return a ? [a.src.startsWith('blob:'), a.readyState >= 1 ? a.duration : 0] : [false, 0];"
)
DETAIL_ERROR_JS = (
    "const e = document.querySelector('#detail-error');"
    "return [document.querySelector('#job-detail').dataset.jobId || '', e.hidden, e.textContent];"
)


async def test_audio_plays_inline_and_a_failed_jobs_error_is_shown(
    hub_factory: HubFactory, page: Any
) -> None:
    """Audio output (a real WAV from a worker) loads in an <audio> element with its duration;
    a failed job's detail shows its error type, message and node."""
    hub = await hub_factory(lease_s=30)
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    sound = await submit(hub.url)
    taken = await worker.take_job()
    ack = await worker.complete(taken, {"tone.wav": ("audio/wav", wav_bytes(0.5))})
    assert ack.ok
    await asyncio.to_thread(page.get, f"{hub.url}/#job={sound['id']}")
    played = await until(lambda: js(page, AUDIO_JS), lambda a: a[1] > 0, "the audio's metadata")
    assert played[0] and played[1] == pytest.approx(0.5, abs=0.01)

    failed = await submit(hub.url, max_attempts=1)
    ack = await worker.fail(await worker.take_job(), retryable=False, message="bad node input")
    assert ack.ok
    await asyncio.to_thread(page.get, f"{hub.url}/#job={failed['id']}")
    shown = await until(
        lambda: js(page, DETAIL_ERROR_JS), lambda d: d[0] == failed["id"] and not d[1], "error"
    )
    assert shown[2] == "execution_error: bad node input (node 3)"
    await worker.close()
