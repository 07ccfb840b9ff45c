"""Each package's public face: every name in its `__all__` imports, and `wgpu --version` says
the installed distribution's version."""

from __future__ import annotations

import importlib
from importlib import metadata

import pytest
from typer.testing import CliRunner

PACKAGES = ("wgpu_protocol", "redis_api", "comfy_worker", "comfyui_sim", "orchestrator")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_imports(package: str) -> None:
    module = importlib.import_module(package)
    exported = module.__all__
    assert exported, f"{package} exports nothing"
    for name in exported:
        assert getattr(module, name) is not None, f"{package}.{name}"
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # what a user's star import gets
    assert set(exported) <= set(namespace)


def test_version_comes_from_the_installed_distribution() -> None:
    import orchestrator
    from orchestrator.cli import app

    installed = metadata.version(orchestrator.DISTRIBUTION)
    assert orchestrator.__version__ == installed
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"wgpu {installed} ({orchestrator.DISTRIBUTION})"


def test_help_groups_the_commands_in_panels() -> None:
    from orchestrator.cli import HELP_PANELS, app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    for panel, names in HELP_PANELS.items():
        start = lines.index(f"{panel}:")
        listed = []
        for line in lines[start + 1 :]:
            if not line.startswith("  "):
                break
            listed.append(line.split()[0])
        assert listed == list(names), panel
    assert "Other:" not in lines  # every command has its panel
