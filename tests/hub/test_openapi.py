"""`/openapi.json` against the real hub: every route of the app is described, every status the
document declares is produced here by a real request, and every answer (each JSON field, each
server-sent event's data) validates against the document (objects allow no undeclared field;
`openapi-schema-validator`, OAS 3.1)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS31Validator

from redis_api.server import RunningHub
from tests.fixtures.http import sse_events
from tests.fixtures.hub import HubFactory
from tests.fixtures.sim import free_port
from tests.hub.helpers import WORKFLOW
from tests.hub.worker_client import ProtocolWorker
from tests.polling import eventually
from wgpu_protocol.credentials import worker_credential
from wgpu_protocol.messages import Progress

pytestmark = pytest.mark.redis

KEY = "spec-key"
TOKEN = "spec-worker-token"


class Checker:
    """Sends requests, checks each answer against the document, records what was covered."""

    def __init__(self, spec: dict[str, Any], http: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.http = http
        self.covered: set[tuple[str, str, str]] = set()

    def validate(self, data: Any, schema: dict[str, Any], where: str) -> None:
        root = {**schema, "components": self.spec["components"]}
        errors = list(OAS31Validator(root).iter_errors(data))
        assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"

    def response_spec(self, template: str, method: str, status: int) -> dict[str, Any]:
        operation = self.spec["paths"][template][method.lower()]
        responses = operation["responses"]
        assert str(status) in responses, f"{method} {template}: status {status} not described"
        self.covered.add((template, method.lower(), str(status)))
        return dict(responses[str(status)])

    async def call(
        self,
        hub: RunningHub,
        method: str,
        template: str,
        path: str,
        expect: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        events: int = 0,
    ) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"X-API-Key": KEY, **(headers or {})}
        hdrs = {k: v for k, v in hdrs.items() if v}  # "" drops the default key
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with self.http.request(method, hub.url + path, data=data, headers=hdrs) as answer:
            assert answer.status == expect, (method, path, answer.status, await answer.text())
            described = self.response_spec(template, method, answer.status)
            media = answer.content_type
            content = described.get("content", {})
            assert media in content or "*/*" in content, f"{method} {template}: {media}"
            if media == "text/event-stream":
                return await self._events(answer, described, template, events)
            if media != "application/json":
                return await answer.read()
            payload = await answer.json()
            self.validate(payload, content[media]["schema"], f"{method} {template} {expect}")
            return payload

    async def _events(
        self, answer: aiohttp.ClientResponse, described: dict[str, Any], where: str, count: int
    ) -> list[tuple[str, Any]]:
        kinds = described["x-events"]
        seen: list[tuple[str, Any]] = []
        async for kind, data in sse_events(answer):
            assert kind in kinds, f"{where}: event {kind!r} not described"
            self.validate(data, kinds[kind], f"{where} event {kind}")
            seen.append((kind, data))
            if len(seen) >= count:
                break
        return seen


async def _feeds(hub: RunningHub) -> int:
    """Feeds subscribed on this hub (each viewer subscribes before its snapshot)."""
    return hub.hub.events.open_streams


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_the_document_describes_every_route_status_and_field(
    hub_factory: HubFactory, http: aiohttp.ClientSession
) -> None:
    hub = await hub_factory(
        api_keys=(KEY,),
        worker_token=TOKEN,
        live_interval_s=0.05,
        max_live_feeds=1,
        max_body_bytes=64 * 1024,
        webhook_allowed_hosts=("127.0.0.1",),
    )
    async with http.get(hub.url + "/openapi.json") as answer:  # open, like /health
        assert answer.status == 200
        spec = await answer.json()
    OAS31Validator.check_schema({"$defs": spec["components"]["schemas"]})
    assert spec["openapi"].startswith("3.1") and spec["info"]["version"]
    check = Checker(spec, http)

    # Every route of the app is in the document, and nothing else is.
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in hub.runner.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    described = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes == described

    await check.call(hub, "GET", "/openapi.json", "/openapi.json", 200, headers={"X-API-Key": ""})
    await check.call(hub, "GET", "/", "/", 200)
    await check.call(hub, "GET", "/dashboard/{name}", "/dashboard/app.js", 200)
    await check.call(hub, "GET", "/dashboard/{name}", "/dashboard/nope.js", 404)
    await check.call(hub, "GET", "/health", "/health", 200)
    await check.call(hub, "GET", "/metrics", "/metrics", 200)

    # Jobs: a finished one with an output and a webhook, a running one, queued ones.
    worker = ProtocolWorker(hub.url, token=TOKEN)
    await worker.connect()
    submit = {
        "workflow": WORKFLOW,
        "priority": 2,
        "idempotency_key": "spec-1",
        "webhook_url": f"http://127.0.0.1:{free_port()}/hook",
        "webhook_events": ["job.succeeded"],
        "constraints": {"min_vram_mb": 1},
    }
    done = await check.call(hub, "POST", "/jobs", "/jobs", 201, submit)
    await check.call(hub, "POST", "/jobs", "/jobs", 200, submit)  # same idempotency key
    assert (await worker.complete(await worker.take_job(), {"a.png": ("image/png", b"PNG")})).ok
    running = await check.call(hub, "POST", "/jobs", "/jobs", 201, {"workflow": WORKFLOW})
    taken = await worker.take_job()
    await worker.send(Progress(taken.job_id, taken.token, "3", 1, 4))
    queued = await check.call(hub, "POST", "/jobs", "/jobs", 201, {"workflow": WORKFLOW})
    for bad in ({"workflow": {}}, {"workflow": WORKFLOW, "nope": 1}, [1]):
        await check.call(hub, "POST", "/jobs", "/jobs", 400, bad)
    await check.call(hub, "POST", "/jobs", "/jobs", 413, raw=b"{" + b" " * 70_000 + b"}")

    # Inputs: an upload referenced by a multipart submit; ?wait on a job that waits.
    upload = await check.call(
        hub, "POST", "/uploads", "/uploads?name=in.png", 201, raw=b"\x89PNG-input",
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    await check.call(hub, "POST", "/uploads", "/uploads", 400, raw=b"x",
                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    form = aiohttp.FormData()
    loads = {"1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}, **WORKFLOW}
    form.add_field("job", json.dumps({"workflow": loads}), content_type="application/json")
    form.add_field("in.png", b"\x89PNG-input", filename="in.png", content_type="image/png")
    async with http.post(hub.url + "/jobs", data=form, headers={"X-API-Key": KEY}) as answer:
        assert answer.status == 201, await answer.text()
        check.validate(await answer.json(), _job_schema(spec, "post", "201"), "multipart")
    await check.call(hub, "POST", "/jobs", "/jobs?wait=0.2", 202, {"workflow": WORKFLOW})
    worker_input = "/worker/inputs/{sha256}"
    digest = upload["ref"].removeprefix("sha256:")
    own = {"Authorization": f"Bearer {worker_credential(TOKEN, 'm1-gpu0')}", "X-API-Key": ""}
    held = f"/worker/inputs/{digest}?worker_id=m1-gpu0&job_id={taken.job_id}"
    await check.call(hub, "GET", worker_input, held, 403, None, own)  # not that job's input
    await check.call(hub, "GET", worker_input, held.split("&")[0], 400, None, own)
    fleet = {"Authorization": f"Bearer {TOKEN}", "X-API-Key": ""}
    await check.call(hub, "GET", worker_input, held, 401, None, fleet)
    await check.call(hub, "GET", worker_input, f"/worker/inputs/{digest}", 401)
    for status in (200, 404):  # tests/worker/test_inputs.py: a worker fetches its job's input
        check.response_spec(worker_input, "GET", status)

    listed = await check.call(hub, "GET", "/jobs", "/jobs?limit=10", 200)
    assert {done["id"], running["id"], queued["id"]} <= {j["id"] for j in listed["jobs"]}
    await check.call(hub, "GET", "/jobs", "/jobs?status=queued", 200)
    await check.call(hub, "GET", "/jobs", "/jobs?status=nope", 400)
    item = "/jobs/{job_id}"
    job = await check.call(hub, "GET", item, f"/jobs/{done['id'][:12]}", 200)
    assert job["outputs"] and job["webhook"] and job["workflow"] == WORKFLOW
    await check.call(hub, "GET", item, f"/jobs/{running['id']}", 200)
    await check.call(hub, "GET", item, "/jobs/" + "0" * 32, 404)
    shared = _shared_prefix([done["id"], running["id"], queued["id"]])
    if shared:  # three random ids share a first character 1 time in 5
        await check.call(hub, "GET", item, f"/jobs/{shared}", 400)
    else:
        check.response_spec(item, "GET", 400)  # covered by tests/hub/test_job_ids.py
    outputs = "/jobs/{job_id}/outputs/{name}"
    assert await check.call(hub, "GET", outputs, f"/jobs/{done['id']}/outputs/a.png", 200) == (
        b"PNG"
    )
    await check.call(hub, "GET", outputs, f"/jobs/{done['id']}/outputs/b.png", 404)
    events = "/jobs/{job_id}/events"
    streamed = await check.call(hub, "GET", events, f"/jobs/{done['id']}/events", 200, events=99)
    assert [kind for kind, _ in streamed][-1] == "done"
    await check.call(hub, "GET", events, f"/jobs/{done['id']}/events", 400, None,
                     {"Last-Event-ID": "not-an-id"})  # fmt: skip
    await check.call(hub, "GET", events, "/jobs/" + "0" * 32 + "/events", 404)
    await check.call(hub, "DELETE", item, f"/jobs/{done['id']}", 409)
    await check.call(hub, "DELETE", item, "/jobs/" + "0" * 32, 404)

    # Workers, drain and resume, the live feed.
    workers = await check.call(hub, "GET", "/workers", "/workers", 200)
    assert workers["workers"][0]["current_job"] == running["id"]
    drain, resume = "/workers/{worker_id}/drain", "/workers/{worker_id}/resume"
    await check.call(hub, "POST", drain, "/workers/m1-gpu0/drain", 200, {"timeout_s": 60})
    await check.call(hub, "POST", drain, "/workers/m1-gpu0/drain", 400, {"timeout_s": -1})
    await check.call(hub, "POST", resume, "/workers/m1-gpu0/resume", 200)
    await check.call(hub, "POST", resume, "/workers/bad%20id/resume", 400)
    feed = await check.call(hub, "GET", "/events", "/events", 200, events=3)
    assert {kind for kind, _ in feed} == {"workers", "queue", "jobs"}
    await check.call(hub, "GET", "/events", "/events?topics=nope", 400)
    async with http.get(hub.url + "/events", headers={"X-API-Key": KEY}) as first:
        await first.content.readline()  # the one feed this hub allows is open
        await check.call(hub, "GET", "/events", "/events", 429)
    # A change after the snapshot comes as a `job` event (the feed follows the hub's changes).
    await eventually(lambda: _feeds(hub), lambda n: n == 0)  # the feed above has closed
    watching = asyncio.create_task(
        check.call(hub, "GET", "/events", "/events?topics=jobs", 200, events=2)
    )
    await eventually(lambda: _feeds(hub), lambda n: n == 1)
    await check.call(hub, "DELETE", item, f"/jobs/{queued['id']}", 200)
    changed = await asyncio.wait_for(watching, 20)
    assert [kind for kind, _ in changed] == ["jobs", "job"]
    assert changed[1][1]["job"]["id"] == queued["id"]

    # The worker socket: 101 with the token, 401 without.
    ws_path = "/ws/worker/{worker_id}"
    credential = worker_credential(TOKEN, "m9-gpu0")
    async with http.ws_connect(
        hub.url + "/ws/worker/m9-gpu0", headers={"Authorization": f"Bearer {credential}"}
    ) as ws:
        check.response_spec(ws_path, "GET", 101)
        await ws.close()
    await check.call(hub, "GET", ws_path, "/ws/worker/m9-gpu0", 401, None, _upgrade())

    # Every route that needs the key says 401 without one.
    for template, method in sorted(described):
        responses = spec["paths"][template][method]["responses"]
        if "401" in responses and template != ws_path:
            path = _concrete(template, done["id"], digest)
            await check.call(hub, method.upper(), template, path, 401, None, {"X-API-Key": "x"})
    await worker.close()

    # Redis gone: the routes that read it say 503 (as the document says).
    dead = await hub_factory(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", api_keys=(KEY,), worker_token=TOKEN
    )
    for template, method in sorted(described):
        responses = spec["paths"][template][method]["responses"]
        if "503" in responses:
            path = _concrete(template, done["id"], digest)
            body = {"workflow": WORKFLOW} if method == "post" and template == "/jobs" else None
            raw = b"x" if template == "/uploads" else None
            await check.call(dead, method.upper(), template, path, 503, body, None, raw)

    declared = {
        (path, method, status)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
        for status in operation["responses"]
    }
    assert declared - check.covered == set(), "statuses described but never produced"


def _concrete(template: str, job_id: str, digest: str) -> str:
    path = template.replace("{job_id}", job_id).replace("{worker_id}", "m1-gpu0")
    path = path.replace("{name}", "a.png").replace("{sha256}", digest)
    return path + ("?name=a.png" if template == "/uploads" else "")


def _job_schema(spec: dict[str, Any], method: str, status: str) -> dict[str, Any]:
    answer = spec["paths"]["/jobs"][method]["responses"][status]
    return dict(answer["content"]["application/json"]["schema"])


def _upgrade() -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


def _shared_prefix(ids: list[str]) -> str:
    firsts = [job_id[0] for job_id in ids]
    return next((c for c in firsts if firsts.count(c) > 1), "")
