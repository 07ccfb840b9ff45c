"""Output files: ComfyUI's naming and counters on disk, and /view's path rules."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from comfyui_sim.config import SimConfig
from comfyui_sim.errors import SimError

FILE_TYPES = ("output", "temp", "input")


class UnsafePath(SimError, ValueError):
    """A filename prefix that would write outside the output directory."""


def _counter_after(folder: Path, name: str) -> int:
    """Stock `get_save_image_path`: one past the highest `{name}_{NNNNN}_` file in `folder`."""
    best = 0
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        return 1
    prefix_len = len(name)
    for entry in entries:
        prefix = entry[: prefix_len + 1]
        if os.path.normcase(prefix[:-1]) != os.path.normcase(name) or prefix[-1:] != "_":
            continue
        try:
            digits = int(entry[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        best = max(best, digits)
    return best + 1


class OutputStore:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.dirs = config.directories()
        # Stock wipes its temp directory at start (PreviewImage files do not outlive a run).
        shutil.rmtree(self.dirs["temp"], ignore_errors=True)
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # Stock PreviewImage names temp files ComfyUI_temp_<5 random letters>_NNNNN_.png.
        self.temp_prefix = "ComfyUI_temp_" + "".join(
            random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5)
        )

    def save(
        self,
        kind: str,
        filename_prefix: str,
        images: list[bytes],
        width: int,
        height: int,
        extension: str = "png",
    ) -> list[dict[str, str]]:
        """Write `images` like SaveImage/PreviewImage; returns the `images` UI entries."""
        reserved = self.reserve(kind, filename_prefix, len(images), width, height, extension)
        for (path, _), data in zip(reserved, images, strict=True):
            path.write_bytes(data)
        return [entry for _, entry in reserved]

    def reserve(
        self,
        kind: str,
        filename_prefix: str,
        count: int,
        width: int,
        height: int,
        extension: str = "png",
    ) -> list[tuple[Path, dict[str, str]]]:
        """Stock's names for `count` new files: (path to write, UI entry) each."""
        root = self.dirs[kind]
        prefix = filename_prefix.replace("%width%", str(width)).replace("%height%", str(height))
        subfolder = os.path.dirname(os.path.normpath(prefix))
        name = os.path.basename(os.path.normpath(prefix))
        folder = (root / subfolder).resolve() if subfolder else root
        if os.path.commonpath((str(root), str(folder))) != str(root):
            raise UnsafePath(
                "**** ERROR: Saving image outside the output folder is not allowed."
                f"\n full_output_folder: {folder}\n         output_dir: {root}"
            )
        counter = _counter_after(folder, name)
        results = []
        for batch_number in range(count):
            base = name.replace("%batch_num%", str(batch_number))
            filename = f"{base}_{counter:05}_.{extension}"
            entry = {"filename": filename, "subfolder": subfolder, "type": kind}
            results.append((folder / filename, entry))
            counter += 1
        return results

    def resolve_view(self, filename: str, subfolder: str | None, kind: str) -> tuple[int, Path]:
        """(http_status, path) for GET /view, with stock's checks: 400 bad name, 403 escape."""
        if filename.endswith("]") and "[" in filename:  # annotated "name.png [output]"
            filename, _, annotation = filename[:-1].rpartition(" [")
            kind = annotation
            filename = filename.strip()
        if not filename:
            return 400, Path()
        if filename[0] == "/" or ".." in filename:
            return 400, Path()
        root = self.dirs.get(kind)
        if root is None:
            return 400, Path()
        folder = root
        if subfolder is not None:
            folder = Path(os.path.abspath(os.path.join(root, subfolder)))
            if os.path.commonpath((str(folder), str(root))) != str(root):
                return 403, Path()
        path = folder / os.path.basename(filename)
        return (200, path) if path.is_file() else (404, path)
