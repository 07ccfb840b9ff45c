"""The simulator's model files and what it has loaded.

Files live in `<models_dir>/<folder>/...` like ComfyUI's `models/` tree (empty files: nothing is
ever really loaded), so a model copied in while the simulator runs is listed at the next request,
as stock ComfyUI does. `--models folder=a,b` creates files at start. Loading a file that is not
one of the last `vram_models` loaded for its folder costs `load_time_s` (stock keeps the
last-used models in VRAM; a switch reloads).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from comfyui_sim.errors import SimError

# GET /models on ComfyUI 0.3.64, in its order (recorded in object_info_models.json).
MODEL_FOLDERS = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
)
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".sft", ".gguf")


class ModelStoreError(SimError, ValueError):
    """A model name or folder the simulator will not create (the message says which)."""


class ModelStore:
    def __init__(
        self,
        root: Path | None,
        models: Mapping[str, Iterable[str]] | None = None,
        load_time_s: float = 2.0,
        vram_models: int = 1,
    ) -> None:
        self.root = (root or Path(tempfile.mkdtemp(prefix="wgpu-sim-models-"))).resolve()
        self.load_time_s = load_time_s
        self.vram_models = max(1, vram_models)
        self.loads = 0  # loads that cost load_time_s
        self.loaded: dict[str, list[str]] = {}  # folder -> most recent first
        for folder in MODEL_FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.add(models or {})

    # -- files ---------------------------------------------------------------------------------

    def _path(self, folder: str, name: str) -> Path:
        if folder not in MODEL_FOLDERS:
            raise ModelStoreError(f"unknown model folder {folder!r}")
        base = (self.root / folder).resolve()
        path = (base / name).resolve()
        if not name or base not in path.parents:
            raise ModelStoreError(f"model name {name!r} must stay inside {folder}/")
        return path

    def add(self, models: Mapping[str, Iterable[str]]) -> None:
        for folder, names in models.items():
            for name in names:
                path = self._path(folder, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()

    def remove(self, models: Mapping[str, Iterable[str]]) -> None:
        for folder, names in models.items():
            for name in names:
                self._path(folder, name).unlink(missing_ok=True)

    def files(self, folder: str) -> list[str]:
        """Relative paths in a folder, sorted (GET /models/{folder})."""
        base = self.root / folder
        found: list[str] = []
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                if name.startswith("."):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                found.append(rel.replace(os.sep, "/"))
        return sorted(found)

    def inventory(self) -> dict[str, list[str]]:
        return {folder: self.files(folder) for folder in MODEL_FOLDERS}

    def exists(self, folder: str, name: str) -> bool:
        try:
            return self._path(folder, name).is_file()
        except ModelStoreError:
            return False

    # -- loading -------------------------------------------------------------------------------

    async def load(self, folder: str, name: str) -> bool:
        """Load a model for a node: sleeps `load_time_s` unless it is still loaded. True when it
        was loaded now."""
        recent = self.loaded.setdefault(folder, [])
        if name in recent:
            recent.remove(name)
            recent.insert(0, name)
            return False
        await asyncio.sleep(self.load_time_s)
        recent.insert(0, name)
        del recent[self.vram_models :]
        self.loads += 1
        return True

    def unload_all(self) -> None:
        """POST /free {"unload_models": true}."""
        self.loaded.clear()


def parse_models_option(values: Iterable[str]) -> dict[str, list[str]]:
    """`--models checkpoints=a.safetensors,b.safetensors` (repeatable) -> {folder: [files]}."""
    out: dict[str, list[str]] = {}
    for value in values:
        for part in value.split(";"):
            if not part.strip():
                continue
            folder, sep, names = part.strip().partition("=")
            if not sep or folder not in MODEL_FOLDERS:
                raise ModelStoreError(
                    f"--models {part!r}: use FOLDER=file[,file...] with FOLDER one of "
                    + ", ".join(MODEL_FOLDERS)
                )
            out.setdefault(folder, []).extend(n.strip() for n in names.split(",") if n.strip())
    return out


def parse_slot_models(value: str) -> dict[int, list[str]]:
    """`--sim-models "0:checkpoints=a.safetensors;1:checkpoints=b.safetensors,loras=x"` -> per
    slot, the `--models` values of that slot's simulator."""
    out: dict[int, list[str]] = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        slot, sep, spec = part.partition(":")
        if not sep or not slot.strip().isdigit():
            raise ModelStoreError(
                f"--sim-models {part!r}: use SLOT:FOLDER=file[,file...] separated by ';'"
            )
        _folder, eq, names = spec.partition("=")
        if not eq:
            raise ModelStoreError(f"--sim-models {part!r}: missing FOLDER=files")
        if "," in names and "=" in names:
            raise ModelStoreError(f"--sim-models {part!r}: one folder per entry")
        parse_models_option([spec])  # validates the folder
        out.setdefault(int(slot), []).append(spec.strip())
    return out
