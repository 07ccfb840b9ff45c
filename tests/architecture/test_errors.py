"""Each package's exceptions hang under its one root (drawn in its errors module), and the CLI
turns any orchestrator error into one line and the exit code the error carries."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import comfy_worker.errors
import pytest
from typer.testing import CliRunner

import comfyui_sim.errors
import orchestrator.errors
import redis_api.errors
import wgpu_protocol.errors
from orchestrator.cli import app
from orchestrator.errors import ExitCode

ROOTS: dict[str, type[BaseException]] = {
    "wgpu_protocol": wgpu_protocol.errors.ProtocolError,
    "redis_api": redis_api.errors.HubError,
    "comfy_worker": comfy_worker.errors.WorkerError,
    "comfyui_sim": comfyui_sim.errors.SimError,
    "orchestrator": orchestrator.errors.WgpuError,
}


def _modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_package_is_under_its_root(package: str) -> None:
    root = ROOTS[package]
    strays = []
    for name in _modules(package):
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")  # private control flow (e.g. a run that ended)
                and not issubclass(value, root)
            ):
                strays.append(f"{name}.{attr}")
    assert strays == [], f"outside {root.__name__}: {strays}"


DRAWN = sorted(ROOTS)


@pytest.mark.parametrize("package", DRAWN)
def test_the_errors_module_draws_every_class_of_the_tree(package: str) -> None:
    errors = importlib.import_module(ROOTS[package].__module__)
    drawn = errors.__doc__ or ""
    for name in _modules(package):
        for attr, value in vars(importlib.import_module(name)).items():
            drawable = inspect.isclass(value) and issubclass(value, ROOTS[package])
            if drawable and value.__module__ == name and not attr.startswith("_"):
                assert attr in drawn, f"{attr} ({name}) is not in {errors.__name__}'s tree"


def test_the_cli_maps_an_error_to_its_exit_code_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    by_uuid = runner.invoke(app, ["compose", "render", "--gpus", "GPU-nope"])
    assert by_uuid.exit_code == ExitCode.USAGE
    assert by_uuid.stderr.startswith("error: GPU UUIDs need NVML")
    assert len(by_uuid.stderr.strip().splitlines()) == 1
    missing = runner.invoke(app, ["fleet", "status", "--inventory", str(tmp_path / "no.toml")])
    assert missing.exit_code == ExitCode.USAGE and missing.stderr.startswith("error: ")
    assert "Traceback" not in missing.output
