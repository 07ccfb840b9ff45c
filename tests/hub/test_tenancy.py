"""Named API keys: each job records its key (`owner`); a key sees, lists, streams, cancels and
downloads only its own jobs unless it is an admin key. Outputs are served safely."""

from __future__ import annotations

import aiohttp
import pytest

from redis_api.auth import bare_key_name
from redis_api.config import HubConfig
from redis_api.errors import ConfigError
from redis_api.server import start_hub
from tests.fixtures.hub import TEST_DEFAULTS, HubFactory
from tests.hub.helpers import WORKFLOW, call
from tests.hub.worker_client import ProtocolWorker

pytestmark = pytest.mark.redis

TOKEN = "wt-tenancy-Qm2"
ALICE, BOB, ROOT = "alice-secret-1", "bob-secret-2", "root-secret-3"
BARE = "bare-secret-without-name"


def _as(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_keys_see_only_their_own_jobs(hub_factory: HubFactory) -> None:
    hub = await hub_factory(
        api_keys=(f"alice:{ALICE}", f"bob:{BOB}", BARE),
        admin_api_keys=(f"root:{ROOT}",),
        worker_token=TOKEN,
    )
    status, alice_job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, _as(ALICE))
    assert status == 201 and alice_job["owner"] == "alice"
    status, bob_job = await call(
        hub.url, "POST", "/jobs", {"workflow": WORKFLOW, "idempotency_key": "k"}, _as(BOB)
    )
    assert status == 201 and bob_job["owner"] == "bob" and bob_job["idempotency_key"] == "k"
    status, bare_job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, _as(BARE))
    assert bare_job["owner"] == bare_key_name(BARE) and BARE not in str(bare_job)

    a, b = alice_job["id"], bob_job["id"]
    assert (await call(hub.url, "GET", f"/jobs/{a}", headers=_as(ALICE)))[0] == 200
    assert (await call(hub.url, "GET", f"/jobs/{a}", headers=_as(BOB)))[0] == 404
    assert (await call(hub.url, "GET", f"/jobs/{a}/events", headers=_as(BOB)))[0] == 404
    assert (await call(hub.url, "DELETE", f"/jobs/{a}", headers=_as(BOB)))[0] == 404
    assert (await call(hub.url, "GET", f"/jobs/{a}/outputs/x.png", headers=_as(BOB)))[0] == 404
    _, listed = await call(hub.url, "GET", "/jobs", headers=_as(BOB))
    assert [j["id"] for j in listed["jobs"]] == [b]
    _, listed = await call(hub.url, "GET", "/jobs", headers=_as(ROOT))
    assert {j["id"] for j in listed["jobs"]} == {a, b, bare_job["id"]}
    # The same idempotency key from another key is another job.
    status, alice_k = await call(
        hub.url, "POST", "/jobs", {"workflow": WORKFLOW, "idempotency_key": "k"}, _as(ALICE)
    )
    assert status == 201 and alice_k["id"] != b
    status, again = await call(
        hub.url, "POST", "/jobs", {"workflow": WORKFLOW, "idempotency_key": "k"}, _as(BOB)
    )
    assert status == 200 and again["id"] == b
    # Bob cancels his own; the admin cancels Alice's.
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{b}", headers=_as(BOB))
    assert status == 200 and cancelled["status"] == "cancelled"
    status, cancelled = await call(hub.url, "DELETE", f"/jobs/{a}", headers=_as(ROOT))
    assert status == 200 and cancelled["owner"] == "alice"


async def test_owner_is_null_without_auth(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    status, job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
    assert status == 201 and job["owner"] is None
    status, view = await call(hub.url, "GET", f"/jobs/{job['id']}")
    assert view["owner"] is None


async def test_api_keys_without_worker_token_refuse_to_start(redis_url: str) -> None:
    config = HubConfig(**dict(TEST_DEFAULTS, redis_url=redis_url, api_keys=(f"a:{ALICE}",)))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="WORKER_TOKEN"):
        await start_hub(config)


async def test_outputs_are_served_safely(hub_factory: HubFactory) -> None:
    hub = await hub_factory()
    worker = ProtocolWorker(hub.url)
    await worker.connect()
    _, job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW})
    assigned = await worker.take_job()
    outputs = {
        "a.png": ("image/png", b"png"),
        "page.html": ("text/html", b"<script>alert(1)</script>"),
        "clip.mp4": ("video/mp4", b"mp4"),
        "x.svg": ("image/svg+xml", b"<svg onload=alert(1)>"),
    }
    assert (await worker.complete(assigned, outputs)).ok
    expected = {
        "a.png": "image/png",
        "page.html": "application/octet-stream",
        "clip.mp4": "video/mp4",
        "x.svg": "application/octet-stream",
    }
    async with aiohttp.ClientSession() as http:
        for name, content_type in expected.items():
            async with http.get(f"{hub.url}/jobs/{job['id']}/outputs/{name}") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == content_type
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert "attachment" in response.headers["Content-Disposition"]
                assert name in response.headers["Content-Disposition"]
    await worker.close()


async def test_workers_name_only_the_callers_own_running_job(hub_factory: HubFactory) -> None:
    """GET /workers shows every GPU (busy or not) to every key, but names the job it runs only
    to the key that owns it (and to admin keys), as the dashboard's feed does."""
    hub = await hub_factory(
        api_keys=(f"alice:{ALICE}", f"bob:{BOB}"),
        admin_api_keys=(f"root:{ROOT}",),
        worker_token=TOKEN,
    )
    worker = ProtocolWorker(hub.url, token=TOKEN)
    await worker.connect()
    status, job = await call(hub.url, "POST", "/jobs", {"workflow": WORKFLOW}, _as(ALICE))
    assert status == 201
    await worker.take_job()
    seen = {}
    for name, secret in (("alice", ALICE), ("bob", BOB), ("root", ROOT)):
        status, body = await call(hub.url, "GET", "/workers", headers=_as(secret))
        assert status == 200
        (tile,) = body["workers"]
        assert tile["status"] == "busy"
        seen[name] = tile["current_job"]
    assert seen == {"alice": job["id"], "bob": None, "root": job["id"]}
    await worker.close()
