"""Job inputs: files a workflow loads (LoadImage's `image`, video and audio loaders).

An input is a content-addressed blob in storage (`inputs/<sha256>`), described in Redis
(`input:<sha256>`, expiring like results): uploaded once with `POST /uploads`, referenced by any
number of jobs as `{"ref": "sha256:<hex>"}`, or given inline (`{"data": base64}`), as a URL the hub
fetches (`{"url"}`, http(s) only, private addresses refused unless allowed), or as a file part of
a multipart `POST /jobs`. The worker holding the job fetches each from
`GET /worker/inputs/<hex>?worker_id=&job_id=` (with its own credential), uploads it to its
ComfyUI and rewrites the workflow's file names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import mimetypes
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from wgpu_protocol.messages import MAX_ID_LENGTH, MAX_NAME_BYTES, ProtocolError, check_text

from .errors import BadRequest, QueueFull
from .runtime import CALLER, Hub

INPUTS_DIR = "inputs"  # the storage "job" holding input blobs
MAX_INPUTS = 32
MAX_REDIRECTS = 3
_REF = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[^/\\\0]{1,200}$")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})


def input_name_ok(name: str) -> bool:
    """A plain file name: valid UTF-8 text without separators, NUL or control characters, of
    at most MAX_NAME_BYTES (it becomes a file name in ComfyUI's input directory)."""
    try:
        check_text(name, "name", name=True)
    except ProtocolError:
        return False
    return (
        bool(_NAME.match(name)) and name not in (".", "..") and len(name.encode()) <= MAX_NAME_BYTES
    )


def _over_quota(limit: int, retry_after_s: float) -> QueueFull:
    return QueueFull(
        f"this key's stored inputs and queued workflows would exceed MAX_QUEUED_BYTES_PER_KEY "
        f"({limit} bytes); retry when its earlier uploads expire",
        retry_after_s=retry_after_s if retry_after_s > 0 else 5,
    )


async def check_room(hub: Hub, owner: str) -> bool:
    """Whether `owner`'s inputs are counted (a per-key byte limit is set); refuses at once,
    before any byte is read, when the key's stored and queued bytes already fill it. (Whether
    an upload fits is known only from its sha256: an input the key stored already counts once.)"""
    limit = hub.config.max_queued_bytes_per_key
    if not owner or limit <= 0:
        return False
    used, retry_after_s = await hub.store.owner_bytes(owner)
    if used >= limit:
        raise _over_quota(limit, retry_after_s)
    return True


async def store_input(
    hub: Hub, chunks: AsyncIterator[bytes], name: str, content_type: str, owner: str = ""
) -> dict[str, Any]:
    """Stream an input into storage under its sha256; returns its description. An owner's
    inputs count against its byte limit (MAX_QUEUED_BYTES_PER_KEY) until they expire: beyond
    it, 429 (QueueFull) and nothing is kept."""
    limit = hub.config.max_input_bytes
    counted = await check_room(hub, owner)
    writer = await hub.storage.open_writer(INPUTS_DIR, f".upload-{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise BadRequest(
                    f"input {name!r} is larger than MAX_INPUT_BYTES ({limit} bytes)", "inputs"
                )
            digest.update(chunk)
            await writer.write(chunk)
    except BaseException:
        await writer.abort()
        raise
    sha256 = digest.hexdigest()
    if counted:
        charged, retry_after_s, _ = await hub.store.charge_input(
            owner, sha256, size, hub.config.ttl_ms, hub.config.max_queued_bytes_per_key
        )
        if not charged:
            await writer.abort()
            raise _over_quota(hub.config.max_queued_bytes_per_key, retry_after_s)
    guessed = mimetypes.guess_type(name)[0]
    if not content_type or content_type == "application/octet-stream":
        content_type = guessed or "application/octet-stream"
    meta = {
        "ref": f"sha256:{sha256}",
        "name": name,
        "size": size,
        "content_type": content_type,
        "created_at": time.time(),
    }
    # Described before it is visible: the sweeper deletes blobs without a description.
    await hub.store.put_input(sha256, meta, hub.config.ttl_ms)
    await writer.commit(sha256)
    return meta


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def from_base64(hub: Hub, name: str, data: Any, owner: str = "") -> dict[str, Any]:
    if not isinstance(data, str):
        raise BadRequest(f"inputs.{name}.data must be a base64 string", f"inputs.{name}")
    if len(data) > hub.config.max_input_bytes * 4 // 3 + 4:
        raise BadRequest(f"input {name!r} is larger than MAX_INPUT_BYTES", f"inputs.{name}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"inputs.{name}.data is not valid base64", f"inputs.{name}") from None
    return await store_input(hub, _one(raw), name, "", owner)


async def from_ref(hub: Hub, name: str, ref: Any) -> dict[str, Any]:
    match = _REF.match(ref) if isinstance(ref, str) else None
    if match is None:
        raise BadRequest(f"inputs.{name}.ref must be 'sha256:<64 hex>'", f"inputs.{name}")
    meta = await hub.store.get_input(match.group(1))
    if meta is None:
        raise BadRequest(
            f"inputs.{name}.ref {ref} is unknown (never uploaded, or expired): POST /uploads",
            f"inputs.{name}",
        )
    return meta


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def check_fetchable(hub: Hub, url: str, field: str) -> None:
    """Refuse URLs that would make the hub reach inside its own network (SSRF)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{field}: only http:// and https:// URLs can be fetched", field)
    host = parts.hostname.lower().rstrip(".")
    if host in hub.config.fetch_allowed_hosts:
        return
    if host in _METADATA_HOSTS:
        raise BadRequest(f"{field}: {host} is a metadata service; not fetched", field)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise BadRequest(f"{field}: cannot resolve {host}: {exc}", field) from None
    for info in infos:
        if _private(str(info[4][0])):
            raise BadRequest(
                f"{field}: {host} resolves to a private, loopback or link-local address; "
                "add it to FETCH_ALLOWED_HOSTS to allow it",
                field,
            )


async def from_url(hub: Hub, name: str, url: Any, owner: str = "") -> dict[str, Any]:
    field = f"inputs.{name}.url"
    if not isinstance(url, str) or len(url) > 4000:
        raise BadRequest(f"{field} must be a URL string", field)
    timeout = aiohttp.ClientTimeout(total=hub.config.fetch_timeout_s, connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(MAX_REDIRECTS + 1):
            await check_fetchable(hub, url, field)  # every hop, redirects included
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location", "")
                        url = str(response.url.join(URL(location)))
                        continue
                    if response.status != 200:
                        raise BadRequest(f"{field} answered HTTP {response.status}", field)
                    length = response.content_length
                    if length is not None and length > hub.config.max_input_bytes:
                        raise BadRequest(
                            f"input {name!r} is larger than MAX_INPUT_BYTES", f"inputs.{name}"
                        )
                    filename = urlsplit(url).path.rsplit("/", 1)[-1] or name
                    return await store_input(
                        hub,
                        response.content.iter_chunked(1 << 20),
                        filename,
                        response.content_type,
                        owner,
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BadRequest(
                    f"{field} could not be fetched: {exc or type(exc).__name__}", field
                ) from None
    raise BadRequest(f"{field}: more than {MAX_REDIRECTS} redirects", field)


def names_in_workflow(workflow: dict[str, Any]) -> set[str]:
    """Every string literal among the workflow's node inputs (where file names appear)."""
    found: set[str] = set()
    for node in workflow.values():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            found.update(v for v in node["inputs"].values() if isinstance(v, str))
    return found


def _mask_targets(raw: dict[str, Any], files: dict[str, Any], named: set[str]) -> dict[str, str]:
    """{mask input: the input it masks} from `mask_for`: the mask's alpha goes onto that image
    (ComfyUI's /upload/mask) and the nodes naming the image load the merged RGBA file, so a
    LoadImage gives both IMAGE and MASK. The image must be another input a node names."""
    masks: dict[str, str] = {}
    for name, spec in raw.items():
        target = spec.get("mask_for") if isinstance(spec, dict) else None
        if target is None:
            continue
        field = f"inputs.{name}.mask_for"
        if (
            not isinstance(target, str)
            or target == name
            or (target not in raw and target not in files)
        ):
            raise BadRequest(f"{field} must name another input of this job (the image)", field)
        if target not in named:
            raise BadRequest(f"{field}: input {target!r} is not named by any node", field)
        if isinstance(raw.get(target), dict) and raw[target].get("mask_for") is not None:
            raise BadRequest(f"{field}: input {target!r} is a mask itself", field)
        if target in masks.values():
            raise BadRequest(f"{field}: input {target!r} has a mask already", field)
        masks[name] = target
    return masks


async def resolve_inputs(
    hub: Hub, raw: Any, workflow: Any, files: dict[str, dict[str, Any]], owner: str = ""
) -> dict[str, dict[str, Any]]:
    """`inputs` of a job body (plus multipart file parts) -> {name: description}; 400 for an
    input no node names (but a mask: `mask_for`), undecodable base64, an unknown ref, a refused
    URL or too many bytes. A multipart job gives a mask's bytes as a file part and declares it
    in `inputs` with `{"mask_for"}` alone."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadRequest("inputs must be an object {name: {ref}|{data}|{url}}", "inputs")
    if len(raw.keys() | files.keys()) > MAX_INPUTS:
        raise BadRequest(f"a job takes at most {MAX_INPUTS} inputs", "inputs")
    named = names_in_workflow(workflow) if isinstance(workflow, dict) else set()
    for name in list(raw) + list(files):
        if not isinstance(name, str) or not input_name_ok(name):
            raise BadRequest(f"input name {name!r} must be a plain file name", "inputs")
    masks = _mask_targets(raw, files, named)
    for name in list(raw) + list(files):
        if name not in named and name not in masks:
            raise BadRequest(
                f"input {name!r} is not named by any node of the workflow (e.g. LoadImage's image)",
                f"inputs.{name}",
            )
    resolved: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        sources = spec.keys() & {"ref", "data", "url"} if isinstance(spec, dict) else set()
        if name in files and name in masks and not sources:
            continue  # its bytes are the file part of that name
        if (
            not isinstance(spec, dict)
            or len(sources) != 1
            or not spec.keys() <= {*sources, "mask_for"}
        ):
            raise BadRequest(
                f"inputs.{name} must be one of {{ref}}, {{data}} or {{url}} (and a mask's "
                "mask_for)",
                f"inputs.{name}",
            )
        if name in files:
            raise BadRequest(f"input {name!r} is given twice (a file part too)", f"inputs.{name}")
        if "ref" in spec:
            resolved[name] = await from_ref(hub, name, spec["ref"])
        elif "data" in spec:
            resolved[name] = await from_base64(hub, name, spec["data"], owner)
        else:
            resolved[name] = await from_url(hub, name, spec["url"], owner)
    resolved.update(files)
    total = sum(int(meta["size"]) for meta in resolved.values())
    if total > hub.config.max_input_bytes:
        raise BadRequest(
            f"the job's inputs add up to {total} bytes; MAX_INPUT_BYTES is "
            f"{hub.config.max_input_bytes}",
            "inputs",
        )
    described = {
        name: {k: meta[k] for k in ("ref", "name", "size", "content_type")}
        for name, meta in resolved.items()
    }
    for name, target in masks.items():
        described[name]["mask_for"] = target
    return described


# ----------------------------------------------------------------------------- routes


async def part_chunks(part: Any) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 20):
        yield chunk


async def post_upload(request: web.Request) -> web.Response:
    """`POST /uploads`: multipart field `file`, or a raw body with `?name=`."""
    from .runtime import HUB_KEY

    hub = request.app[HUB_KEY]
    caller = request.get(CALLER)
    owner = caller.name if caller is not None else ""
    await check_room(hub, owner)  # a full key is refused before its body is read
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "file":
                name = part.filename or "upload"
                if not input_name_ok(name):
                    raise BadRequest("the file name must be a plain file name", "file")
                content_type = part.headers.get("Content-Type", "")
                meta = await store_input(hub, part_chunks(part), name, content_type, owner)
                return web.json_response(_public(meta), status=201)
        raise BadRequest("a multipart upload needs a 'file' field", "file")
    name = request.query.get("name", "")
    if not input_name_ok(name):
        raise BadRequest("a raw upload needs ?name=<file name> (a plain file name)", "name")
    meta = await store_input(
        hub,
        request.content.iter_chunked(1 << 20),
        name,
        request.headers.get("Content-Type", ""),
        owner,
    )
    return web.json_response(_public(meta), status=201)


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in ("ref", "name", "size", "content_type")}


def _id_ok(value: str) -> bool:
    """An id from the query string, checked before it reaches Redis or the HMAC."""
    try:
        check_text(value, "id", name=True)
    except ProtocolError:
        return False
    return 0 < len(value) <= MAX_ID_LENGTH


async def get_worker_input(request: web.Request) -> web.StreamResponse:
    """`GET /worker/inputs/<hex>?worker_id=W&job_id=J`: an input's bytes, for the worker that
    holds job J. With WORKER_TOKEN set, W's own credential (as on its socket) is required, and J
    must be W's job now and name that input."""
    from .auth import worker_ok
    from .runtime import HUB_KEY

    hub = request.app[HUB_KEY]
    sha256 = request.match_info["sha256"]
    if hub.config.worker_token:
        worker_id = request.query.get("worker_id", "")
        if not _id_ok(worker_id) or not worker_ok(request, hub.config.worker_token, worker_id):
            raise web.HTTPUnauthorized(
                reason="the credential of the worker named by ?worker_id= is required "
                "(WORKER_CREDENTIAL, or WORKER_TOKEN to derive it)"
            )
        job_id = request.query.get("job_id", "")
        if not _id_ok(job_id):
            raise BadRequest(f"?job_id= must name the job (1-{MAX_ID_LENGTH} characters)", "job_id")
        held = await hub.store.held_job_inputs(job_id, worker_id)
        if held is None:
            raise web.HTTPForbidden(reason=f"job {job_id} is not worker {worker_id}'s job now")
        if not _SHA256.fullmatch(sha256) or sha256 not in held:
            raise web.HTTPForbidden(reason=f"job {job_id} has no such input")
    if not _SHA256.fullmatch(sha256):
        raise web.HTTPNotFound(reason="no such input")
    meta = await hub.store.get_input(sha256)
    if meta is None:
        raise web.HTTPNotFound(reason=f"input sha256:{sha256} is unknown or expired")
    chunks = hub.storage.read_chunks(INPUTS_DIR, sha256)
    response = web.StreamResponse(headers={"Content-Type": str(meta["content_type"])})
    response.content_length = int(meta["size"])
    try:
        first = await anext(chunks)
    except FileNotFoundError:
        raise web.HTTPNotFound(reason=f"input sha256:{sha256} is no longer stored") from None
    except StopAsyncIteration:
        first = b""
    await response.prepare(request)
    await response.write(first)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response
