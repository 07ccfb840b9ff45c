"""What the input/output nodes of catalog_media.py do when they run."""

from __future__ import annotations

import asyncio
import math
import os
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from comfyui_sim import faults
from comfyui_sim.catalog import Behaviour
from comfyui_sim.nodes import NodeResult, RunContext, SimImage, render
from comfyui_sim.png import PngError, decode_png

BLOB_CHUNK = 1 << 20
UPSCALE_TILE = 512
UPSCALE_OVERLAP = 32


def _f32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _invert(value: int) -> int:
    # Stock: image is float32 v/255; ImageInvert is 1.0 - x; SaveImage truncates 255 * x.
    return int(_f32(_f32(1.0 - _f32(value / 255.0)) * 255.0))


# Byte -> byte table for ImageInvert followed by SaveImage (checked against upload_image.json).
INVERT_TABLE = bytes(_invert(v) for v in range(256))


def input_path(ctx: RunContext, name: str) -> Path:
    """Where LoadImage looks for `name` ("sub/in.png" or "in.png [input]")."""
    if name.endswith("]") and " [" in name:
        name = name[:-1].rpartition(" [")[0]
    return ctx.store.dirs["input"] / name


def _first_image(inputs: dict[str, Any]) -> SimImage:
    for value in inputs.values():
        if isinstance(value, SimImage):
            return value
    return SimImage(64, 64, 1, (0, 0, 0))


def _read_image(ctx: RunContext, name: str) -> tuple[int, int, bytes, bytes | None]:
    path = input_path(ctx, name)
    if path.is_dir():
        raise faults.load_image_error("IsADirectoryError", f"[Errno 21] Is a directory: '{path}'")
    try:
        return decode_png(path.read_bytes())
    except FileNotFoundError:
        raise faults.load_image_error(
            "FileNotFoundError", f"[Errno 2] No such file or directory: '{path}'"
        ) from None
    except PngError:
        raise faults.load_image_error(
            "PIL.UnidentifiedImageError", f"cannot identify image file '{path}'"
        ) from None


async def load_image(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    width, height, pixels, alpha = _read_image(ctx, str(inputs["image"]))
    image = SimImage(width, height, 1, tuple(pixels[:3]) or (0, 0, 0), pixels=pixels)  # type: ignore[arg-type]
    # Stock's MASK is 1 - alpha (all zeros without alpha): kept as a grey image here.
    mask_values = bytes(255 - a for a in alpha) if alpha is not None else bytes(width * height)
    mask = SimImage(width, height, 1, (0, 0, 0), pixels=bytes(_grey_to_rgb(mask_values)))
    return NodeResult((image, mask))


def _grey_to_rgb(grey: bytes) -> bytearray:
    rgb = bytearray(len(grey) * 3)
    rgb[0::3] = rgb[1::3] = rgb[2::3] = grey
    return rgb


async def load_mask(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    width, height, pixels, alpha = _read_image(ctx, str(inputs["image"]))
    channel = str(inputs["channel"])
    if channel == "alpha":
        grey = bytes(255 - a for a in alpha) if alpha is not None else bytes(width * height)
    else:
        grey = pixels[("red", "green", "blue").index(channel) :: 3]
    return NodeResult((SimImage(width, height, 1, (0, 0, 0), pixels=bytes(_grey_to_rgb(grey))),))


async def add_noise(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    image = _first_image(inputs)
    strength = float(inputs["strength"])
    bits = 0 if strength <= 0 else max(1, min(8, round(8 * strength)))
    noisy = replace(image, pixels=None, noise_seed=int(inputs["seed"]) % (1 << 32), noise_bits=bits)
    return NodeResult((noisy,))


async def invert(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    image = _first_image(inputs)
    rgb = tuple(INVERT_TABLE[c] for c in image.rgb)
    pixels = image.pixels.translate(INVERT_TABLE) if image.pixels is not None else None
    return NodeResult((replace(image, rgb=rgb, pixels=pixels),))  # type: ignore[arg-type]


async def primitive(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    return NodeResult((inputs["value"],))


def preview_text(value: Any) -> str:
    """PreviewAny's text: str() of numbers and booleans, strings as they are."""
    return value if isinstance(value, str) else str(value)


async def preview_any(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    return NodeResult((), {"text": [preview_text(inputs.get("source"))]})


def _container(extension: str, frames: list[bytes]) -> bytes:
    """A file of the right kind whose size follows the frames' (not a playable encoding)."""
    body = b"".join(frames)
    if extension == "webp":
        payload = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + bytes(10) + b"ANMF" + body
        return b"RIFF" + struct.pack("<I", len(payload)) + payload
    if extension == "mp4":
        ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
        return ftyp + struct.pack(">I", 8 + len(body)) + b"mdat" + body
    return frames[0]  # an animated PNG starts as a plain PNG of its first frame


async def save_animated(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    image = _first_image(inputs)
    cls = ctx.prompt[node_id]["class_type"]
    extension = "webp" if cls == "SaveAnimatedWEBP" else "png"
    frames = [render(image, ctx.max_image_side, None, i) for i in range(image.batch)]
    entries = ctx.store.save(
        "output",
        str(inputs["filename_prefix"]),
        [_container(extension, frames)],
        image.width,
        image.height,
        extension,
    )
    return NodeResult((), {"images": entries, "animated": [True]})


async def create_video(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    return NodeResult((_first_image(inputs),))


async def save_video(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    video = _first_image(inputs)
    frames = [render(video, ctx.max_image_side, None, i) for i in range(video.batch)]
    entries = ctx.store.save(
        "output",
        str(inputs["filename_prefix"]),
        [_container("mp4", frames)],
        video.width,
        video.height,
        "mp4",
    )
    return NodeResult((), {"images": entries, "animated": [True]})


def upscale_steps(image: SimImage) -> int:
    """Stock's tiled upscale: one progress step per tile, per batch image."""
    stride = UPSCALE_TILE - UPSCALE_OVERLAP
    return image.batch * math.ceil(image.height / stride) * math.ceil(image.width / stride)


async def tiled_upscale(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    image = _first_image(inputs)
    total = upscale_steps(image)
    await asyncio.sleep(ctx.node_time_s)
    for step in range(1, total + 1):
        await asyncio.sleep(ctx.step_time_s)
        await ctx.progress(node_id, step, total, None)  # checks for an interrupt first
    return NodeResult((image,))


async def busy(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    # No progress callback, so no interrupt check until the node is over (stock behaviour).
    await asyncio.sleep(float(inputs["seconds"]))
    return NodeResult((_first_image(inputs),))


def write_blob(path: Path, size: int, seed: int) -> None:
    """`size` pseudo-random bytes, written in chunks (memory stays at one chunk)."""
    block = bytearray(random.Random(seed).randbytes(min(size, BLOB_CHUNK)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            # Vary each chunk a little so that equal chunks do not repeat verbatim.
            block[:8] = written.to_bytes(8, "big")
            out.write(block[:n] if n < len(block) else block)
            written += n
        out.flush()
        os.fsync(out.fileno())


async def blob(ctx: RunContext, node_id: str, inputs: dict[str, Any]) -> NodeResult:
    await asyncio.sleep(ctx.node_time_s)
    size = int(inputs["size_bytes"])
    extension = str(inputs["extension"])
    ((path, entry),) = ctx.store.reserve(
        "output", str(inputs["filename_prefix"]), 1, 0, 0, extension
    )
    await asyncio.to_thread(write_blob, path, size, int(inputs.get("seed", 0)))
    return NodeResult((), {"images": [entry]})


MediaRunner = Callable[[RunContext, str, dict[str, Any]], Awaitable[NodeResult]]
RUNNERS: dict[Behaviour, MediaRunner] = {
    Behaviour.LOAD_IMAGE: load_image,
    Behaviour.LOAD_MASK: load_mask,
    Behaviour.ADD_NOISE: add_noise,
    Behaviour.INVERT: invert,
    Behaviour.PRIMITIVE: primitive,
    Behaviour.PREVIEW_ANY: preview_any,
    Behaviour.SAVE_ANIMATED: save_animated,
    Behaviour.CREATE_VIDEO: create_video,
    Behaviour.SAVE_VIDEO: save_video,
    Behaviour.TILED_UPSCALE: tiled_upscale,
    Behaviour.BUSY: busy,
    Behaviour.BLOB: blob,
}
