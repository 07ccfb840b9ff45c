"""Builds the worker image (worker_image/Dockerfile) through a Docker Engine.

The build context is the repository root, but only the three packages the image holds travel
(wgpu_protocol/, comfyui_sim/, worker_image/), as a filtered, reproducible tar: no .venv, no
caches, no tests. The tag from `worker_image_tag()` is a hash of exactly those files (and the base
image name), so `ensure_worker_image` reuses an image whose inputs have not changed.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import ImageBuildError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTEXT_DIRS = ("wgpu_protocol", "comfyui_sim", "worker_image")
DOCKERFILE = "worker_image/Dockerfile"
IMAGE_REPOSITORY = "wgpu-local/comfy-worker"
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".git"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")

ProgressCallback = Callable[[str], None]


RUNTIME_REPOSITORY = "wgpu-local/comfy-worker-runtime"
RUNTIME_TARGET = "runtime"  # the Dockerfile stage without the worker code (--worker-src)
RUNTIME_FILES = (Path(DOCKERFILE), Path("worker_image/requirements.txt"))


def context_files(root: Path = REPO_ROOT, target: str | None = None) -> list[Path]:
    """Files of the build context, relative to `root`, in a stable order. The runtime target
    needs only the Dockerfile and the requirements: a code change does not change its tag."""
    if target == RUNTIME_TARGET:
        return sorted(RUNTIME_FILES)
    files: list[Path] = []
    for top in CONTEXT_DIRS:
        base = root / top
        if not base.is_dir():
            raise ImageBuildError(f"{base} is missing: run this from a complete wgpu checkout")
        files.extend(path.relative_to(root) for path in _walk(base))
    return sorted(files)


def _walk(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            if path.name not in _SKIP_DIRS and not path.name.endswith(".egg-info"):
                yield from _walk(path)
        elif path.is_file() and not path.name.endswith(_SKIP_SUFFIXES):
            yield path


def context_hash(
    root: Path = REPO_ROOT, base_image: str | None = None, target: str | None = None
) -> str:
    digest = hashlib.sha256(f"base={base_image or ''}\n".encode())
    if target:
        digest.update(f"target={target}\n".encode())
    for relative in context_files(root, target):
        digest.update(f"{relative.as_posix()}\n".encode())
        digest.update((root / relative).read_bytes())
        digest.update(b"\n")
    return digest.hexdigest()


def worker_image_tag(base_image: str | None = None, root: Path = REPO_ROOT) -> str:
    """`wgpu-local/comfy-worker:<12 hex>`, the same for the same context files and base image."""
    return f"{IMAGE_REPOSITORY}:{context_hash(root, base_image)[:12]}"


def runtime_image_tag(base_image: str | None = None, root: Path = REPO_ROOT) -> str:
    """`wgpu-local/comfy-worker-runtime:<12 hex>`: Python and the worker's dependencies only."""
    return f"{RUNTIME_REPOSITORY}:{context_hash(root, base_image, RUNTIME_TARGET)[:12]}"


def context_tar(root: Path = REPO_ROOT, target: str | None = None) -> io.BytesIO:
    """The filtered build context as an uncompressed tar, with fixed owners and times."""
    return reproducible_tar(context_files(root, target), root)


def reproducible_tar(files: Sequence[Path], root: Path) -> io.BytesIO:
    """`files` (relative to `root`) as an uncompressed tar with fixed owners, times and modes,
    so the same sources always make the same build context."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for relative in files:
            path = root / relative
            info = tar.gettarinfo(str(path), arcname=relative.as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    buffer.seek(0)
    return buffer


def build_worker_image(
    client: Any,
    tag: str,
    base_image: str | None = None,
    on_progress: ProgressCallback | None = None,
    target: str | None = None,
) -> str:
    """Build worker_image/Dockerfile as `tag` (host network, so pip reaches its index);
    `target` RUNTIME_TARGET builds the image without the worker code.

    `client` is a docker.DockerClient; `base_image` overrides the Dockerfile's BASE_IMAGE;
    `on_progress` gets each line of build output. Returns `tag`; raises ImageBuildError.
    """
    import docker.errors

    buildargs = {"BASE_IMAGE": base_image} if base_image else {}
    labels = {"wgpu.context_hash": context_hash(REPO_ROOT, base_image, target)}
    extra: dict[str, Any] = {"target": target} if target else {}
    last_lines: list[str] = []
    try:
        stream = client.api.build(
            fileobj=context_tar(REPO_ROOT, target),
            custom_context=True,
            dockerfile=DOCKERFILE,
            tag=tag,
            buildargs=buildargs,
            labels=labels,
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
            **extra,
        )
        for chunk in stream:
            if "error" in chunk:
                detail = str(chunk.get("error", "")).strip().splitlines()
                context = " | ".join(last_lines[-3:])
                raise ImageBuildError(
                    f"building {tag} failed: {detail[-1] if detail else 'unknown error'}"
                    + (f" (after: {context})" if context else "")
                )
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                for line in text.splitlines():
                    last_lines.append(line)
                    if on_progress is not None:
                        on_progress(line)
                del last_lines[:-20]
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"the Docker Engine refused to build {tag}: {exc}") from None
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"could not reach the Docker Engine to build {tag}: {exc}") from None
    if not has_image(client, tag):
        raise ImageBuildError(f"the build finished but {tag} does not exist")
    return tag


def has_image(client: Any, tag: str) -> bool:
    """Whether the daemon behind `client` (a docker.DockerClient) holds an image tagged `tag`."""
    import docker.errors

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_worker_image(
    client: Any, base_image: str | None = None, on_progress: ProgressCallback | None = None
) -> str:
    """The worker image for the current sources: reused when its hash tag exists, else built."""
    tag = worker_image_tag(base_image)
    if has_image(client, tag):
        return tag
    return build_worker_image(client, tag, base_image, on_progress)
