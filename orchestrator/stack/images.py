"""The images the one-host stack needs besides the worker image: the hub and Redis.

Each is built locally (no registry needed when the base image is local) from a Dockerfile in
compose/, tagged with a hash of exactly the files that go in, and reused while they are unchanged.
An image named by its env var (WGPU_HUB_IMAGE, WGPU_REDIS_IMAGE) is used as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ImageBuildError
from orchestrator.images.worker import REPO_ROOT, ProgressCallback, has_image, reproducible_tar

_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class ImageRecipe:
    repository: str
    dockerfile: str  # relative to the repository root
    paths: tuple[str, ...]  # what the build context holds, relative to the repository root


HUB_RECIPE = ImageRecipe(
    "wgpu-local/hub",
    "compose/hub.Dockerfile",
    ("compose/hub.Dockerfile", "compose/hub-requirements.txt", "wgpu_protocol", "redis_api"),
)
REDIS_RECIPE = ImageRecipe(
    "wgpu-local/redis", "compose/redis.Dockerfile", ("compose/redis.Dockerfile",)
)


def _files(recipe: ImageRecipe, root: Path) -> list[Path]:
    found: list[Path] = []
    for entry in recipe.paths:
        path = root / entry
        if path.is_file():
            found.append(path.relative_to(root))
        elif path.is_dir():
            found += [
                p.relative_to(root)
                for p in path.rglob("*")
                if p.is_file()
                and not _SKIP_DIRS & set(p.relative_to(root).parts)
                and not p.name.endswith((".pyc", "~"))
            ]
        else:
            raise ImageBuildError(f"{path} is missing: run this from a complete wgpu checkout")
    return sorted(found)


def image_tag(recipe: ImageRecipe, base_image: str | None = None, root: Path = REPO_ROOT) -> str:
    digest = hashlib.sha256(f"base={base_image or ''}\n".encode())
    for relative in _files(recipe, root):
        digest.update(f"{relative.as_posix()}\n".encode() + (root / relative).read_bytes())
    return f"{recipe.repository}:{digest.hexdigest()[:12]}"


def ensure_image(
    client: Any,
    recipe: ImageRecipe,
    base_image: str | None = None,
    on_progress: ProgressCallback | None = None,
    root: Path = REPO_ROOT,
) -> str:
    """The recipe's image for the current sources: reused when its tag exists, else built."""
    import docker.errors

    tag = image_tag(recipe, base_image, root)
    if has_image(client, tag):
        return tag
    buildargs = {"BASE_IMAGE": base_image} if base_image else {}
    try:
        stream = client.api.build(
            fileobj=reproducible_tar(_files(recipe, root), root),
            custom_context=True,
            dockerfile=recipe.dockerfile,
            tag=tag,
            buildargs=buildargs,
            network_mode="host",  # pip and apt reach their mirrors from the host's network
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        last = ""
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(f"building {tag} failed: {chunk['error']!s} (after: {last})")
            text = str(chunk.get("stream", "")).strip()
            if text:
                last = text.splitlines()[-1]
                if on_progress is not None:
                    on_progress(last)
    except docker.errors.DockerException as exc:
        raise ImageBuildError(f"the Docker Engine could not build {tag}: {exc}") from None
    return tag
