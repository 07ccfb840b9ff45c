"""The layering docs/architecture.md promises, read from the imports themselves (ast): the
worker never imports typer/rich/docker/redis, the protocol nothing outside the standard library,
the hub and the simulator nothing of the orchestrator."""

from __future__ import annotations

import ast
import sys

import pytest

from tests.paths import REPO

PACKAGE_DIRS = {
    "wgpu_protocol": REPO / "wgpu_protocol",
    "redis_api": REPO / "redis_api",
    "comfy_worker": REPO / "worker_image" / "comfy_worker",
    "comfyui_sim": REPO / "comfyui_sim",
    "orchestrator": REPO / "orchestrator",
}
FORBIDDEN = {
    "comfy_worker": {"typer", "rich", "docker", "redis", "orchestrator", "redis_api"},
    "redis_api": {"orchestrator", "comfy_worker", "comfyui_sim", "typer", "rich", "docker"},
    "comfyui_sim": {"orchestrator", "redis_api", "comfy_worker", "wgpu_protocol", "redis"},
}


def imported_tops(package: str) -> dict[str, set[str]]:
    """Top-level module of every absolute import in the package -> the files importing it."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIRS[package].rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not(package: str) -> None:
    imports = imported_tops(package)
    assert {top: imports[top] for top in FORBIDDEN[package] & set(imports)} == {}


def test_the_protocol_imports_only_the_standard_library() -> None:
    outside = {
        top: files
        for top, files in imported_tops("wgpu_protocol").items()
        if top not in sys.stdlib_module_names and top not in ("__future__", "wgpu_protocol")
    }
    assert outside == {}


def test_the_check_sees_imports_where_they_are() -> None:
    """A guard that cannot fail is no guard: the readers find what is really imported."""
    assert "docker" in imported_tops("orchestrator")
    assert "redis" in imported_tops("redis_api")
    assert "websockets" in imported_tops("comfy_worker")
