"""The worker's model inventory reads ComfyUI's model list once before anyone needs it: callers
before the first scan share one attempt, and a list that could not be read is not asked for
again by every `ready` (the periodic scans retry it). Against a real HTTP server standing in for
a ComfyUI whose model routes fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from comfy_worker.comfy_client import ComfyClient
from comfy_worker.inventory import ModelInventory

from tests.fixtures.http import serving
from wgpu_protocol import models


@pytest.fixture
async def failing_comfyui() -> AsyncIterator[tuple[str, list[str]]]:
    """A ComfyUI whose /models and /object_info answer 500; yields its URL and the paths asked."""
    asked: list[str] = []

    async def broken(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/{tail:.*}", broken)
    async with serving(app) as url:
        yield url, asked


async def test_an_unreadable_model_list_is_tried_once_not_by_every_caller(
    failing_comfyui: tuple[str, list[str]],
) -> None:
    url, asked = failing_comfyui
    async with aiohttp.ClientSession() as http:
        inventory = ModelInventory(ComfyClient(http, url), models.loader_table())
        await asyncio.gather(*(inventory.read_once() for _ in range(3)))  # at once: one read
        await inventory.read_once()  # later: the failed read is not repeated
        assert inventory.files is None
        assert asked == ["/models"]
        assert not await inventory.scan()  # the periodic scan does try again
        assert asked == ["/models", "/models"]
