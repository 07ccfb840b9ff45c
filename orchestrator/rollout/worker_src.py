"""The worker repository: `--worker-src DIR`, a tree with this repository's worker layout
(`worker_image/comfy_worker/`, `wgpu_protocol/`, optionally `comfyui_sim/`) that workers run
from instead of the code baked into an image.

Docker mounts DIR read-only at MOUNT_POINT in each worker container (and in a simulated slot's
ComfyUI container when DIR has `comfyui_sim/`); the process backend puts DIR on PYTHONPATH. The
version the worker will report is computed here, from the tree, with the worker's own function
(comfy_worker.version), so `wgpu update` can wait for exactly it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from wgpu_protocol import worker_env

MOUNT_POINT = "/opt/wgpu-src"
VERSION_ENV = "WGPU_WORKER_SRC_VERSION"  # what the tree was when the service was planned
GIT_TIMEOUT_S = 5.0


class WorkerSrcError(ConfigError):
    """DIR is not a worker tree; the message says what is missing."""


@dataclass(frozen=True)
class WorkerSource:
    path: Path  # absolute
    version: str  # what the workers started from it say in `hello`
    describe: str | None = None  # `git describe --always --dirty`, when DIR is a git checkout

    @property
    def has_simulator(self) -> bool:
        return (self.path / "comfyui_sim" / "__init__.py").is_file()

    def env(self, root: str) -> dict[str, str]:
        """The environment that makes Python import the worker from `root` (DIR or its mount)."""
        env = {"PYTHONPATH": f"{root}:{root}/worker_image", VERSION_ENV: self.version}
        if self.describe:
            env[worker_env.SRC_DESCRIBE] = self.describe
        return env


def git_describe(path: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text and len(text) <= 100 else None


def resolve_worker_src(directory: Path | str) -> WorkerSource:
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise WorkerSrcError(f"--worker-src {directory} is not a directory: pass a worker checkout")
    for needed in ("worker_image/comfy_worker/__init__.py", "wgpu_protocol/__init__.py"):
        if not (path / needed).is_file():
            raise WorkerSrcError(
                f"--worker-src {directory} has no {needed}: pass a checkout of the worker "
                "repository (worker_image/comfy_worker and wgpu_protocol)"
            )
    # The worker's package (and its config) loads only when a tree is named: every command
    # imports this module, few use --worker-src.
    from comfy_worker.version import tree_version

    describe = git_describe(path) if (path / ".git").exists() else None
    return WorkerSource(path, tree_version(path, describe), describe)
