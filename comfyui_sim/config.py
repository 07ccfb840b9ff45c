"""Settings of one simulated ComfyUI instance."""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3


@dataclass
class SimConfig:
    """How the simulator listens, how long nodes take and where files go.

    `port=0` picks a free port (read it back from `RunningSim.port`).
    """

    host: str = "127.0.0.1"
    port: int = 8188
    # Seconds each executed node takes; nodes that report progress take `step_time_s` per step.
    node_time_s: float = 0.02
    step_time_s: float = 0.01
    # Directories; None = `<base_dir>/output` etc. (base_dir None = a fresh temp dir per instance).
    base_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    input_dir: Path | None = None
    # Largest side of a written PNG; larger requests are scaled down to keep the simulator fast.
    max_image_side: int = 1024
    # Stock ComfyUI serves an identical resubmitted graph from its cache (`--cache-none` turns
    # that off); keep that on to behave like stock.
    cache_enabled: bool = True
    # Reported by /system_stats as the one device.
    device_name: str = "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"
    device_type: str = "cuda"
    vram_total: int = 24 * GIB
    # fault mode `crash`: True = os._exit(1) like a dying ComfyUI process; False = stop serving
    # (close every socket and the listening port) but keep the Python process alive.
    crash_exits: bool = True
    # Called instead of the default crash behaviour when set (tests).
    crash_hook: Callable[[], None] | None = None
    # Awaited with the file name before /view serves a file (tests hold a relay with it).
    view_hook: Callable[[str], Awaitable[None]] | None = None
    argv: list[str] = field(default_factory=lambda: ["main.py", "--wgpu-sim"])
    # Model files (model_store.py): created at start in `models_dir` (default <base_dir>/models,
    # else a temp dir) per folder; a folder not named here keeps the defaults below.
    models: dict[str, list[str]] = field(default_factory=dict)
    models_dir: Path | None = None
    # A loader whose file is not among the last `vram_models` loaded of its folder takes this.
    load_time_s: float = 2.0
    vram_models: int = 1

    def directories(self) -> dict[str, Path]:
        """Absolute `output`, `temp` and `input` directories of one instance."""
        explicit = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        base = self.base_dir
        if base is None and any(path is None for path in explicit.values()):
            base = Path(tempfile.mkdtemp(prefix="wgpu-sim-"))
        return {
            kind: Path(path if path is not None else Path(str(base)) / kind).resolve()
            for kind, path in explicit.items()
        }

    def models_root(self) -> Path | None:
        if self.models_dir is not None:
            return self.models_dir
        return Path(self.base_dir) / "models" if self.base_dir is not None else None
