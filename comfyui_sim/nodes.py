"""What each simulated node does when it runs: values flowing between nodes, files, progress."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from comfyui_sim import faults
from comfyui_sim.catalog import Behaviour, NodeClass
from comfyui_sim.faults import Fault, NodeFailure
from comfyui_sim.model_store import ModelStore
from comfyui_sim.outputs import OutputStore
from comfyui_sim.png import encode_png, make_png, rgb_of


@dataclass(frozen=True)
class SimImage:
    """Stands in for an IMAGE tensor [batch, height, width, 3]: one colour, or real `pixels`
    (row-major RGB of one image, repeated over the batch; from LoadImage), or noise over the
    colour (`noise_seed`, ImageAddNoise), which makes saved files as big as real ones."""

    width: int
    height: int
    batch: int
    rgb: tuple[int, int, int]
    pixels: bytes | None = None
    alpha: bytes | None = None
    noise_seed: int | None = None
    noise_bits: int = 0

    def __str__(self) -> str:
        r, g, b = (f"{c / 255:.4f}" for c in self.rgb)
        row = f"[{r}, {g}, {b}]"
        return f"tensor([[[[{row},\n          ...,\n          {row}]]]])  # shape " + str(
            [self.batch, self.height, self.width, 3]
        )


@dataclass(frozen=True)
class SimLatent:
    width: int
    height: int
    batch: int
    seed: int = 0


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


class RunContext(Protocol):
    """What a running node may use; provided by the executor."""

    store: OutputStore
    prompt: dict[str, Any]
    node_time_s: float
    step_time_s: float
    max_image_side: int
    models: ModelStore

    def check_interrupt(self) -> None: ...

    async def progress(
        self, node_id: str, value: int, total: int, preview: bytes | None
    ) -> None: ...

    async def text(self, node_id: str, text: str) -> None: ...

    async def fault(self, node_id: str, fault: Fault) -> None: ...


NodeRunner = Callable[[RunContext, str, dict[str, Any]], Awaitable[NodeResult]]


def _capped(image: SimImage, cap: int) -> tuple[int, int]:
    scale = min(1.0, cap / max(image.width, image.height))
    return max(1, int(image.width * scale)), max(1, int(image.height * scale))


def render(image: SimImage, cap: int, text: dict[str, str] | None = None, index: int = 0) -> bytes:
    """Image `index` of the batch as a PNG."""
    if image.pixels is not None and len(image.pixels) == image.width * image.height * 3:
        return encode_png(image.width, image.height, image.pixels, text=text)
    width, height = _capped(image, cap)
    if image.noise_seed is not None and image.noise_bits > 0:
        pixels = noise_pixels(width * height, image.rgb, image.noise_seed + index, image.noise_bits)
        return encode_png(width, height, pixels, text=text, level=1)
    return make_png(width, height, image.rgb, text=text)


def noise_pixels(count: int, rgb: tuple[int, int, int], seed: int, bits: int) -> bytes:
    """`count` RGB pixels of `rgb` with their low `bits` bits random (whole-buffer integer
    operations: fast enough for 4096 x 4096)."""
    size = count * 3
    noise = random.Random(seed).randbytes(size)
    if bits >= 8:
        return noise
    low = (1 << bits) - 1
    mask = int.from_bytes(bytes([low]) * size, "big")
    base = int.from_bytes(bytes(c & ~low & 0xFF for c in rgb) * count, "big")
    return ((int.from_bytes(noise, "big") & mask) | base).to_bytes(size, "big")


def _first_image(inputs: dict[str, Any]) -> SimImage:
    for value in inputs.values():
        if isinstance(value, SimImage):
            return value
    return SimImage(64, 64, 1, (0, 0, 0))


def _seed_colour(seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(str(seed).encode()).digest()
    return digest[0], digest[1], digest[2]


async def _steps(ctx: RunContext, node_id: str, total: int, step_time: float) -> None:
    for step in range(total):
        await asyncio.sleep(step_time)
        await ctx.progress(node_id, step + 1, total, None)


async def run(
    ctx: RunContext, node_id: str, node_class: NodeClass, inputs: dict[str, Any]
) -> NodeResult:
    """Execute one node: take its time, produce its outputs and UI entry."""
    behaviour = node_class.behaviour
    from comfyui_sim import media_nodes  # here: media_nodes builds on this module's types

    media = media_nodes.RUNNERS.get(behaviour)
    if media is not None:
        return await media(ctx, node_id, inputs)
    if behaviour is Behaviour.LOAD_MODEL:
        from comfyui_sim.model_nodes import load_models

        await asyncio.sleep(ctx.node_time_s)
        return await load_models(ctx.models, node_class, inputs)
    if behaviour not in (Behaviour.SLEEP, Behaviour.SAMPLER):
        await asyncio.sleep(ctx.node_time_s)
    cap = ctx.max_image_side
    if behaviour is Behaviour.EMPTY_IMAGE:
        image = SimImage(
            int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"]),
            rgb_of(int(inputs["color"])),
        )  # fmt: skip
        return NodeResult((image,))
    if behaviour is Behaviour.SCALE_BY:
        image = _first_image(inputs)
        scale = float(inputs["scale_by"])
        size = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        return NodeResult((replace(image, width=size[0], height=size[1]),))
    if behaviour is Behaviour.SCALE_TO:
        image = _first_image(inputs)
        width, height = int(inputs["width"]), int(inputs["height"])
        if width == 0 and height == 0:
            width, height = image.width, image.height
        elif width == 0:
            width = max(1, round(image.width * height / image.height))
        elif height == 0:
            height = max(1, round(image.height * width / image.width))
        return NodeResult((replace(image, width=width, height=height),))
    if behaviour is Behaviour.IMAGE_SIZE:
        image = _first_image(inputs)
        text = f"width: {image.width}, height: {image.height}\n batch size: {image.batch}"
        await ctx.text(node_id, text)
        return NodeResult((image.width, image.height, image.batch))
    if behaviour is Behaviour.TO_MASK:
        if inputs["channel"] == "alpha":
            raise faults.alpha_channel_error()
        image = _first_image(inputs)
        return NodeResult((image,))
    if behaviour in (Behaviour.SAVE, Behaviour.PREVIEW):
        image = _first_image(inputs)
        width, height = _capped(image, cap)
        png_text = {"prompt": json.dumps(ctx.prompt)}
        if image.noise_seed is not None:
            data = [render(image, cap, png_text, i) for i in range(image.batch)]
        else:
            data = [render(image, cap, png_text)] * image.batch
        if behaviour is Behaviour.SAVE:
            entries = ctx.store.save("output", str(inputs["filename_prefix"]), data, width, height)
        else:
            entries = ctx.store.save("temp", ctx.store.temp_prefix, data, width, height)
        return NodeResult((), {"images": entries})
    if behaviour is Behaviour.SAVE_WS:
        image = _first_image(inputs)
        # Each batch image goes out whole as a binary frame (the node's only output).
        for step in range(image.batch):
            await ctx.progress(node_id, step, image.batch, render(image, cap, None, step))
        return NodeResult(())
    if behaviour is Behaviour.EMPTY_LATENT:
        latent = SimLatent(int(inputs["width"]), int(inputs["height"]), int(inputs["batch_size"]))
        return NodeResult((latent,))
    if behaviour is Behaviour.SAMPLER:
        await _steps(ctx, node_id, int(inputs["steps"]), ctx.step_time_s)
        latent = inputs["latent_image"]
        seed = int(inputs["seed"])
        if isinstance(latent, SimLatent):
            return NodeResult((replace(latent, seed=seed),))
        return NodeResult((SimLatent(512, 512, 1, seed),))
    if behaviour is Behaviour.DECODE:
        latent = inputs["samples"]
        if not isinstance(latent, SimLatent):
            latent = SimLatent(512, 512, 1)
        image = SimImage(latent.width, latent.height, latent.batch, _seed_colour(latent.seed))
        return NodeResult((image,))
    if behaviour is Behaviour.SLEEP:
        steps = max(1, int(inputs["steps"]))
        await _steps(ctx, node_id, steps, float(inputs["seconds"]) / steps)
        return NodeResult((_first_image(inputs),))
    if behaviour is Behaviour.FAULT:
        await ctx.fault(node_id, Fault(str(inputs["mode"]), float(inputs.get("after_s", 0.0))))
        return NodeResult((_first_image(inputs),))
    return _plain(node_class, inputs)


def _plain(node_class: NodeClass, inputs: dict[str, Any]) -> NodeResult:
    """Nodes that only transform: pass the input through."""
    if not node_class.outputs:
        return NodeResult(())
    linked = [v for v in inputs.values() if isinstance(v, SimImage | SimLatent)]
    if linked:
        return NodeResult(tuple(linked[0] for _ in node_class.outputs))
    # Loaders and encoders: opaque tokens naming what they stand for.
    return NodeResult(tuple(f"<{kind} {node_class.name}>" for kind in node_class.outputs))


def failure_for(fault: Fault) -> NodeFailure:
    return faults.out_of_memory() if fault.mode == "oom" else faults.execution_error()
