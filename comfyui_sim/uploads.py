"""POST /upload/image and /upload/mask as stock ComfyUI 0.3.64 does them (see API.md): the
renaming of taken names, identical bytes kept once, and the mask merged into the original."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyui_sim.errors import SimError
from comfyui_sim.png import PngError, decode_png, encode_png


class UploadRefused(SimError, ValueError):
    """Stock answers these with 400 and an empty body."""


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and _sha256(path.read_bytes()) == _sha256(data)
    except OSError:
        return False


def target_path(
    dirs: dict[str, Path], fields: dict[str, Any], upload: Upload
) -> tuple[Path, str, str, str]:
    """(path to write, name, subfolder, type) for an upload, or UploadRefused."""
    kind = str(fields.get("type") or "input")
    if kind not in dirs:
        kind = "input"
    root = str(dirs[kind])
    subfolder = str(fields.get("subfolder", ""))
    if not upload.filename:
        raise UploadRefused("no file name")
    folder = os.path.join(root, os.path.normpath(subfolder))
    path = os.path.abspath(os.path.join(folder, upload.filename))
    if os.path.commonpath((root, path)) != root:
        raise UploadRefused("the subfolder leaves the directory")
    return Path(path), upload.filename, subfolder, kind


def save_upload(
    dirs: dict[str, Path], fields: dict[str, Any], upload: Upload
) -> tuple[dict[str, str], Path | None]:
    """Stock's `image_upload`: returns the JSON answer and the path to write (None: the same
    bytes are there already under the answered name)."""
    path, name, subfolder, kind = target_path(dirs, fields, upload)
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(fields.get("overwrite")) not in ("true", "1"):
        stem, ext = os.path.splitext(name)
        counter = 1
        while path.exists():
            if _same_bytes(path, upload.data):
                return {"name": name, "subfolder": subfolder, "type": kind}, None
            name = f"{stem} ({counter}){ext}"
            path = path.with_name(name)
            counter += 1
    return {"name": name, "subfolder": subfolder, "type": kind}, path


def original_of_mask(dirs: dict[str, Path], fields: dict[str, Any]) -> Path | None:
    """The file `original_ref` names; None when it does not exist (stock then writes nothing)."""
    try:
        ref = json.loads(str(fields.get("original_ref")))
    except ValueError:
        raise UploadRefused("original_ref is not JSON") from None
    if not isinstance(ref, dict):
        raise UploadRefused("original_ref must be an object")
    filename = str(ref.get("filename", ""))
    kind = str(ref.get("type", "output"))
    if filename.endswith("]") and " [" in filename:
        filename, _, kind = filename[:-1].rpartition(" [")
    if not filename or filename[0] == "/" or ".." in filename or kind not in dirs:
        raise UploadRefused("bad original_ref")
    root = dirs[kind]
    folder = Path(os.path.abspath(os.path.join(root, str(ref.get("subfolder", "")))))
    if os.path.commonpath((str(root), str(folder))) != str(root):
        raise UploadRefused("original_ref leaves the directory")
    path = folder / filename
    return path if path.is_file() else None


def merge_mask(original: bytes, mask: bytes) -> bytes:
    """The original's RGB with the uploaded image's alpha, as an RGBA PNG."""
    try:
        width, height, rgb, _ = decode_png(original)
        mask_width, mask_height, _, alpha = decode_png(mask)
    except PngError as exc:
        raise UploadRefused(str(exc)) from None
    if (mask_width, mask_height) != (width, height):
        raise UploadRefused("the mask and the original differ in size")
    return encode_png(width, height, rgb, alpha=alpha or bytes([255]) * (width * height), level=4)
