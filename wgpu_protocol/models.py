"""Models: which files a workflow needs, which files a worker has, and the placement pool a job
waits in. Pure functions, no I/O (the hub, the worker and the simulator share them).

A requirement set is `{folder: [file, ...]}` with ComfyUI's folder names (`checkpoints`, `loras`,
`vae`, ... as `GET /models` lists them) and the file names exactly as the loader inputs take them
(relative paths such as `sub/x.safetensors` included). Flattened, each file is `folder/file`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ProtocolError

# Loader node class -> ((input name, model folder), ...). One table for everything that reads
# model references; custom-node loaders are added by configuration (`parse_loader_table`).
LOADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoints"),),
    "CheckpointLoader": (("config_name", "configs"), ("ckpt_name", "checkpoints")),
    "ImageOnlyCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "unCLIPCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "LoraLoader": (("lora_name", "loras"),),
    "LoraLoaderModelOnly": (("lora_name", "loras"),),
    "VAELoader": (("vae_name", "vae"),),
    "UNETLoader": (("unet_name", "diffusion_models"),),
    "CLIPLoader": (("clip_name", "text_encoders"),),
    "DualCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders")),
    "TripleCLIPLoader": (
        ("clip_name1", "text_encoders"),
        ("clip_name2", "text_encoders"),
        ("clip_name3", "text_encoders"),
    ),
    "ControlNetLoader": (("control_net_name", "controlnet"),),
    "DiffControlNetLoader": (("control_net_name", "controlnet"),),
    "UpscaleModelLoader": (("model_name", "upscale_models"),),
    "CLIPVisionLoader": (("clip_name", "clip_vision"),),
    "StyleModelLoader": (("style_model_name", "style_models"),),
    "GLIGENLoader": (("gligen_name", "gligen"),),
    "HypernetworkLoader": (("hypernetwork_name", "hypernetworks"),),
    "PhotoMakerLoader": (("photomaker_model_name", "photomaker"),),
}

# Values a loader input may take that are not files (VAELoader's built-in decoders).
NOT_FILES: dict[str, frozenset[str]] = {
    "vae": frozenset({"pixel_space", "taesd", "taesdxl", "taesd3", "taef1"}),
}

# Folders the worker does not report: not models.
NOT_MODEL_FOLDERS = frozenset({"custom_nodes", "configs"})

MAX_FOLDER_LENGTH = 64
MAX_FILE_LENGTH = 512
MAX_REQUIRED_FILES = 64
MAX_INVENTORY_FILES = 50_000
_FOLDER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Requirements = dict[str, list[str]]
LoaderTable = Mapping[str, tuple[tuple[str, str], ...]]


class ModelSpecError(ProtocolError):
    """A requirement set, an inventory or a loader table is malformed; the message says where."""


def parse_loader_table(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """Extra loaders from configuration: `Class.input=folder` entries separated by commas or
    semicolons, e.g. `MyLoader.model=checkpoints;MyLoader.lora=loras`."""
    table: dict[str, list[tuple[str, str]]] = {}
    for raw in re.split(r"[;,\s]+", text.strip()):
        if not raw:
            continue
        target, sep, folder = raw.partition("=")
        node_class, dot, input_name = target.partition(".")
        if not sep or not dot or not node_class or not input_name or not _FOLDER.match(folder):
            raise ModelSpecError(
                f"loader entry {raw!r} must look like NodeClass.input_name=model_folder"
            )
        table.setdefault(node_class, []).append((input_name, folder))
    return {name: tuple(entries) for name, entries in table.items()}


def loader_table(extra: LoaderTable | None = None) -> dict[str, tuple[tuple[str, str], ...]]:
    """The built-in table with configured loaders added (a configured class replaces one)."""
    table = dict(LOADERS)
    table.update(extra or {})
    return table


def workflow_requirements(
    workflow: Mapping[str, Any], loaders: LoaderTable | None = None
) -> Requirements:
    """The model files an API-format workflow's loader nodes name: `{folder: [file, ...]}`,
    each list sorted and without duplicates. Linked (non-literal) inputs name nothing."""
    table = LOADERS if loaders is None else loaders
    found: dict[str, set[str]] = {}
    for node in workflow.values():
        if not isinstance(node, Mapping):
            continue
        entries = table.get(str(node.get("class_type")))
        inputs = node.get("inputs")
        if not entries or not isinstance(inputs, Mapping):
            continue
        for input_name, folder in entries:
            value = inputs.get(input_name)
            if isinstance(value, str) and value and value not in NOT_FILES.get(folder, ()):
                found.setdefault(folder, set()).add(value)
    return {folder: sorted(files) for folder, files in sorted(found.items())}


def check_requirements(raw: Any, where: str = "requires") -> Requirements:
    """A client's `requires` object, validated: `{folder: [file, ...]}`."""
    checked = _check_folder_lists(raw, where, MAX_REQUIRED_FILES, "names")
    return {folder: files for folder, files in checked.items() if files}


def check_inventory(raw: Any, where: str = "inventory") -> Requirements:
    """A worker's reported inventory (or warm set): `{folder: [file, ...]}`, bounded."""
    return _check_folder_lists(raw, where, MAX_INVENTORY_FILES, "lists")


def _check_folder_lists(raw: Any, where: str, limit: int, verb: str) -> Requirements:
    """`{folder: [file, ...]}` with valid names and at most `limit` files, in canonical form."""
    if not isinstance(raw, dict):
        raise ModelSpecError(f"{where} must be an object {{folder: [file, ...]}}")
    out: Requirements = {}
    count = 0
    for folder, files in raw.items():
        if not isinstance(folder, str) or not _FOLDER.match(folder):
            raise ModelSpecError(f"{where}: folder {folder!r} must be 1-64 of [A-Za-z0-9_.-]")
        if not isinstance(files, list):
            raise ModelSpecError(f"{where}.{folder} must be a list of file names")
        count += len(files)
        if count > limit:  # before the names are read: a huge list costs nothing
            raise ModelSpecError(f"{where} {verb} more than {limit} files")
        for name in files:
            _check_file(name, f"{where}.{folder}")
        out[folder] = sorted(set(files))
    return dict(sorted(out.items()))


def _check_file(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_FILE_LENGTH:
        raise ModelSpecError(f"{where}: file names must be 1-{MAX_FILE_LENGTH} characters")
    if "\n" in name or "\r" in name or "\x00" in name:
        raise ModelSpecError(f"{where}: file name {name[:40]!r} has a control character")


def merge(*sets: Mapping[str, Iterable[str]]) -> Requirements:
    """The union of requirement sets, in canonical form."""
    found: dict[str, set[str]] = {}
    for req in sets:
        for folder, files in req.items():
            found.setdefault(folder, set()).update(files)
    return {folder: sorted(files) for folder, files in sorted(found.items()) if files}


def flatten(req: Mapping[str, Iterable[str]]) -> list[str]:
    """`folder/file` strings, sorted: how the hub stores files in Redis sets."""
    return sorted(f"{folder}/{name}" for folder, files in req.items() for name in files)


def unflatten(items: Iterable[str]) -> Requirements:
    found: dict[str, set[str]] = {}
    for item in items:
        folder, _, name = item.partition("/")
        if name:
            found.setdefault(folder, set()).add(name)
    return {folder: sorted(files) for folder, files in sorted(found.items())}


def digest(inventory: Mapping[str, Iterable[str]]) -> str:
    """A short stable digest of an inventory: sent with every heartbeat, compared by the hub."""
    text = "\n".join(flatten(inventory))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def pool_id(requires: Mapping[str, Iterable[str]], constraints: Mapping[str, Any] | None) -> str:
    """Jobs with equal requirements and constraints wait in one pool; this names it."""
    c = constraints or {}
    canonical = {
        "r": flatten(requires),
        "m": c.get("machine_id") or "",
        "g": "" if c.get("gpu") is None else str(c["gpu"]).lower(),
        "v": "" if c.get("min_vram_mb") is None else str(c["min_vram_mb"]),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def combo_options(spec: Any) -> list[str] | None:
    """The choices of a COMBO input as `/object_info` shows it: classic `[[names...], {opts}]`
    or new-style `["COMBO", {"options": [...]}]`; None for any other input."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return [str(v) for v in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        if isinstance(options, list):
            return [str(v) for v in options]
    return None


def inventory_from_object_info(
    object_info: Mapping[str, Any], loaders: LoaderTable | None = None
) -> Requirements:
    """A model inventory read from the COMBO lists of loader nodes in `/object_info` (for a
    ComfyUI without the `/models` routes)."""
    table = LOADERS if loaders is None else loaders
    found: dict[str, set[str]] = {}
    for node_class, entries in table.items():
        info = object_info.get(node_class)
        if not isinstance(info, Mapping):
            continue
        inputs = info.get("input")
        if not isinstance(inputs, Mapping):
            continue
        specs: dict[str, Any] = {}
        for group in ("required", "optional"):
            if isinstance(inputs.get(group), Mapping):
                specs.update(inputs[group])
        for input_name, folder in entries:
            options = combo_options(specs.get(input_name))
            if options is None:
                continue
            skip = NOT_FILES.get(folder, frozenset())
            found.setdefault(folder, set()).update(o for o in options if o not in skip)
    return {folder: sorted(files) for folder, files in sorted(found.items())}


def describe(req: Mapping[str, Iterable[str]]) -> str:
    """`checkpoints/a.safetensors, loras/b.safetensors` for messages."""
    return ", ".join(flatten(req))
