"""A small REST client of the hub (see docs/architecture.md, "REST"): sync and async.

`HubClient` (urllib, no extra dependency) is what CLI commands use; `AsyncHubClient` (aiohttp)
is for async code. Both raise `HubUnreachable` when the hub does not answer and `HubError` for an
error response (with its HTTP status and the hub's `error` text).
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # imported where used: the CLI's sync calls do not pay aiohttp's import
    import aiohttp

from orchestrator.errors import HubError, HubUnreachable
from wgpu_protocol.rest import (
    DrainAnswerJson,
    DrainRequestJson,
    HealthJson,
    JobJson,
    ResumeAnswerJson,
    UploadJson,
    WorkerJson,
)

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class HubEvent:
    """One server-sent event of `GET /jobs/{id}/events`: kind status|progress|output|done."""

    kind: str
    data: Any
    id: str | None = None


def submit_body(
    workflow: JsonObject,
    *,
    priority: int | None = None,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    constraints: JsonObject | None = None,
    webhook_url: str | None = None,
    inputs: JsonObject | None = None,
) -> JsonObject:
    """The `POST /jobs` body; unset options are left out so the hub's defaults apply."""
    body: JsonObject = {"workflow": workflow}
    optional = {
        "priority": priority,
        "timeout_s": timeout_s,
        "max_attempts": max_attempts,
        "idempotency_key": idempotency_key,
        "constraints": constraints,
        "webhook_url": webhook_url,
        "inputs": inputs or None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _jobs_query(status: str | None, limit: int) -> str:
    query = {"limit": str(limit)}
    if status:
        query["status"] = status
    return "/jobs?" + urllib.parse.urlencode(query)


def _error_text(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body).get("error") or f"HTTP {status}")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:200] or f"HTTP {status}"


def parse_sse(lines: Iterable[str]) -> Iterator[HubEvent]:
    """Server-sent events from text lines (without their newlines)."""
    kind = "message"
    data: list[str] = []
    event_id: str | None = None
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text)
                except ValueError:
                    payload = text
                yield HubEvent(kind, payload, event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a keep-alive comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


class HubClient:
    """Blocking client. `timeout_s` bounds each request (keep it short on status paths)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def _request(
        self,
        method: str,
        path: str,
        body: JsonObject | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        data: BinaryIO | None = None,
    ) -> Any:
        """`data` streams a raw body (an upload) instead of the JSON `body`."""
        request = urllib.request.Request(
            self.base_url + path,
            method=method,
            data=data if body is None else json.dumps(body).encode(),
            headers=self._headers(headers, json_body=body is not None),
        )
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s)
        except urllib.error.HTTPError as exc:
            raise HubError(_error_text(exc.read(), exc.code), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HubUnreachable(f"hub at {self.base_url} does not answer ({reason})") from None
        return response

    def _headers(self, extra: dict[str, str] | None, json_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if json_body:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    def _json(self, method: str, path: str, body: JsonObject | None = None) -> Any:
        with self._request(method, path, body) as response:
            return json.loads(response.read())

    def health(self) -> HealthJson:
        result: HealthJson = self._json("GET", "/health")
        return result

    def get_workers(self) -> list[WorkerJson]:
        workers: list[WorkerJson] = self._json("GET", "/workers")["workers"]
        return workers

    def get_job(self, job_id: str) -> JobJson:
        job: JobJson = self._json("GET", f"/jobs/{urllib.parse.quote(job_id)}")
        return job

    def drain(self, worker_id: str, timeout_s: float | None = None) -> DrainAnswerJson:
        """`POST /workers/{id}/drain`: no new jobs; past `timeout_s` its job is released."""
        body: DrainRequestJson = {} if timeout_s is None else {"timeout_s": timeout_s}
        path = f"/workers/{urllib.parse.quote(worker_id, safe='')}/drain"
        answer: DrainAnswerJson = self._json("POST", path, dict(body))
        return answer

    def resume(self, worker_id: str) -> ResumeAnswerJson:
        """`POST /workers/{id}/resume`: back in service."""
        path = f"/workers/{urllib.parse.quote(worker_id, safe='')}/resume"
        answer: ResumeAnswerJson = self._json("POST", path, {})
        return answer

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[JobJson]:
        jobs: list[JobJson] = self._json("GET", _jobs_query(status, limit))["jobs"]
        return jobs

    def submit(self, workflow: JsonObject, **options: Any) -> JobJson:
        """`POST /jobs`; options as `submit_body` (priority, timeout_s, max_attempts, ...)."""
        job: JobJson = self._json("POST", "/jobs", submit_body(workflow, **options))
        return job

    def cancel(self, job_id: str) -> JobJson:
        job: JobJson = self._json("DELETE", f"/jobs/{urllib.parse.quote(job_id)}")
        return job

    def upload(self, path: Path, name: str | None = None) -> UploadJson:
        """`POST /uploads` of a file (streamed from disk): `{"ref", "name", "size",
        "content_type"}`; jobs then name it as `{"ref": ...}`."""
        query = urllib.parse.urlencode({"name": name or path.name})
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Content-Type": content_type, "Content-Length": str(path.stat().st_size)}
        with (
            open(path, "rb") as handle,
            self._request("POST", f"/uploads?{query}", headers=headers, data=handle) as response,
        ):
            answer: UploadJson = json.loads(response.read())
            return answer

    def get_output(self, job_id: str, name: str) -> bytes:
        path = f"/jobs/{urllib.parse.quote(job_id)}/outputs/{urllib.parse.quote(name)}"
        with self._request("GET", path) as response:
            data: bytes = response.read()
            return data

    def events(
        self, job_id: str, last_event_id: str | None = None, timeout_s: float = 300.0
    ) -> Iterator[HubEvent]:
        """The job's events until the stream ends (after `done`). `timeout_s`: max quiet time."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        path = f"/jobs/{urllib.parse.quote(job_id)}/events"
        with self._request("GET", path, headers=headers, timeout_s=timeout_s) as response:
            lines = (raw.decode().rstrip("\r\n") for raw in response)
            for event in parse_sse(lines):
                yield event
                if event.kind == "done":
                    return


class AsyncHubClient:
    """The same calls for async code: `async with AsyncHubClient(url) as hub: ...`."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncHubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def _json(self, method: str, path: str, body: JsonObject | None = None) -> Any:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with self._client().request(
                method, self.base_url + path, json=body, timeout=timeout
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise HubError(_error_text(raw, response.status), response.status)
                return json.loads(raw)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise HubUnreachable(f"hub at {self.base_url} does not answer ({exc})") from None

    async def health(self) -> HealthJson:
        result: HealthJson = await self._json("GET", "/health")
        return result

    async def get_workers(self) -> list[WorkerJson]:
        workers: list[WorkerJson] = (await self._json("GET", "/workers"))["workers"]
        return workers

    async def get_job(self, job_id: str) -> JobJson:
        job: JobJson = await self._json("GET", f"/jobs/{urllib.parse.quote(job_id)}")
        return job

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> list[JobJson]:
        jobs: list[JobJson] = (await self._json("GET", _jobs_query(status, limit)))["jobs"]
        return jobs

    async def submit(self, workflow: JsonObject, **options: Any) -> JobJson:
        job: JobJson = await self._json("POST", "/jobs", submit_body(workflow, **options))
        return job

    async def cancel(self, job_id: str) -> JobJson:
        job: JobJson = await self._json("DELETE", f"/jobs/{urllib.parse.quote(job_id)}")
        return job

    async def events(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[HubEvent]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        import aiohttp

        url = f"{self.base_url}/jobs/{urllib.parse.quote(job_id)}/events"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
        try:
            async with self._client().get(url, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    raw = await response.read()
                    raise HubError(_error_text(raw, response.status), response.status)
                buffered: list[str] = []
                async for raw_line in response.content:
                    buffered.append(raw_line.decode().rstrip("\r\n"))
                    if buffered[-1]:
                        continue
                    for event in parse_sse(buffered):
                        yield event
                        if event.kind == "done":
                            return
                    buffered = []
        except aiohttp.ClientConnectionError as exc:
            raise HubUnreachable(f"hub at {self.base_url} does not answer ({exc})") from None
