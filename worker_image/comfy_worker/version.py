"""What code a worker runs: a content hash of its source tree, plus `git describe` when known.

The same function names a worker tree on disk (`tree_version(DIR)`, what `wgpu update
--worker-src DIR` waits for) and the code a running worker loaded (`running_version()`, sent in
`hello`), so the two can be compared. The hash covers the Python files of `comfy_worker/` and
`wgpu_protocol/`: the worker's own code and the protocol it speaks. `git describe` cannot run
inside a container with the tree mounted read-only and no git, so the orchestrator passes it
in WORKER_SRC_DESCRIBE.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from wgpu_protocol import worker_env

DESCRIBE_ENV = worker_env.SRC_DESCRIBE
_SKIP_DIRS = {"__pycache__"}


def _python_files(package: Path) -> Iterator[Path]:
    for path in sorted(package.rglob("*.py")):
        if not _SKIP_DIRS.intersection(path.relative_to(package).parts):
            yield path


def source_hash(comfy_worker_dir: Path, protocol_dir: Path) -> str:
    """12 hex digits over the packages' Python files (relative names and bytes)."""
    digest = hashlib.sha256()
    for name, package in (("comfy_worker", comfy_worker_dir), ("wgpu_protocol", protocol_dir)):
        for path in _python_files(package):
            digest.update(f"{name}/{path.relative_to(package).as_posix()}\n".encode())
            digest.update(path.read_bytes())
            digest.update(b"\n")
    return digest.hexdigest()[:12]


def version_string(content_hash: str, describe: str | None) -> str:
    """`src-<hash>`, or `<git describe>+src-<hash>`."""
    return f"{describe}+src-{content_hash}" if describe else f"src-{content_hash}"


def tree_version(root: Path, describe: str | None = None) -> str:
    """The version of a worker tree laid out like this repository (worker_image/comfy_worker,
    wgpu_protocol)."""
    return version_string(
        source_hash(root / "worker_image" / "comfy_worker", root / "wgpu_protocol"), describe
    )


def running_version() -> str:
    """The version of the code this process imported."""
    import wgpu_protocol

    here = Path(__file__).resolve().parent
    protocol = Path(wgpu_protocol.__file__).resolve().parent
    return version_string(source_hash(here, protocol), os.environ.get(DESCRIBE_ENV) or None)
