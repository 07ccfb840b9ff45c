"""A job's input files: fetched from the hub, uploaded to this worker's ComfyUI under
`wgpu/<job_id>/`, and the workflow's references rewritten to the uploaded names.

A mask (an input with `mask_for`: the image input it masks) goes through ComfyUI's
`/upload/mask` after its image: ComfyUI writes the image with the mask's alpha as an RGBA PNG,
and the nodes naming the image load that file instead, so a LoadImage gives both the image and
its MASK (1 - alpha), as ComfyUI's own mask editor arranges it."""

from __future__ import annotations

import asyncio
import copy
import os
import re
import shutil
import tempfile
from typing import Any

import aiohttp

from .comfy_client import ComfyClient
from .config import WorkerConfig
from .errors import WorkerError

_REF = re.compile(r"^sha256:([0-9a-f]{64})$")
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=60)


class InputUnavailable(WorkerError):
    """An input could not be fetched from the hub or placed in ComfyUI."""


def subfolder_of(job_id: str) -> str:
    return f"wgpu/{job_id}"


def rewrite(workflow: dict[str, Any], placed: dict[str, str]) -> dict[str, Any]:
    """A copy of the workflow with each input name replaced by its path in ComfyUI's input
    directory, wherever a node input names it."""
    result = copy.deepcopy(workflow)
    for node in result.values():
        values = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, str) and value in placed:
                    values[key] = placed[value]
    return result


async def place_inputs(
    client: ComfyClient,
    config: WorkerConfig,
    job_id: str,
    inputs: dict[str, Any],
) -> dict[str, str]:
    """{input name: path for the workflow}. Each file goes through a temporary file, so memory
    stays bounded whatever its size."""
    placed: dict[str, str] = {}
    subfolder = subfolder_of(job_id)
    spool = await asyncio.to_thread(tempfile.mkdtemp, prefix="wgpu-in-")
    # The hub gives a job's inputs only to the worker holding the job, on its own credential.
    credential = config.credential
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    holder = {"worker_id": config.worker_id, "job_id": job_id}
    # Images before the masks that refer to them.
    ordered = sorted(inputs.items(), key=lambda item: _mask_for(item[1]) is not None)
    try:
        for name, meta in ordered:
            match = _REF.match(str(meta.get("ref", ""))) if isinstance(meta, dict) else None
            if match is None:
                raise InputUnavailable(f"input {name!r} has no valid ref")
            path = os.path.join(spool, match.group(1))
            url = f"{config.hub_http_url}/worker/inputs/{match.group(1)}"
            try:
                async with client.http.get(
                    url, params=holder, headers=headers, timeout=FETCH_TIMEOUT
                ) as response:
                    if response.status != 200:
                        raise InputUnavailable(
                            f"input {name!r}: the hub answered HTTP {response.status}"
                        )
                    with open(path, "wb") as out:  # noqa: ASYNC230 (one chunk at a time)
                        async for chunk in response.content.iter_chunked(1 << 20):
                            out.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise InputUnavailable(f"input {name!r}: fetching from the hub: {exc}") from None
            filename = os.path.basename(str(meta.get("name") or name)) or "input"
            target = _mask_for(meta)
            if target is None:
                stored = await client.upload_input(path, filename, subfolder)
                placed[name] = f"{subfolder}/{stored}"
            else:
                original = placed.get(target, "").removeprefix(subfolder + "/")
                if not original:
                    raise InputUnavailable(f"mask {name!r}: its image {target!r} is not an input")
                merged = await client.upload_mask(path, masked_name(original), subfolder, original)
                placed[target] = f"{subfolder}/{merged}"  # the image, with the mask as alpha
            await asyncio.to_thread(os.unlink, path)
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)
    return placed


def _mask_for(meta: Any) -> str | None:
    target = meta.get("mask_for") if isinstance(meta, dict) else None
    return target if isinstance(target, str) else None


def masked_name(original: str) -> str:
    """Where ComfyUI writes an image with its mask: beside it, always a PNG (ComfyUI picks the
    format from the name, and only PNG keeps the alpha)."""
    return os.path.splitext(original)[0] + "-masked.png"


async def remove_inputs(config: WorkerConfig, job_id: str) -> None:
    """Delete the job's uploaded inputs where ComfyUI's input directory is reachable (stock
    ComfyUI has no route to delete them)."""
    if config.comfyui_input_dir is None:
        return
    folder = os.path.join(str(config.comfyui_input_dir), subfolder_of(job_id))
    await asyncio.to_thread(shutil.rmtree, folder, True)
