"""Tests mirror the packages: each package's tests live in one folder (tests/hub for redis_api,
tests/worker for comfy_worker, ...), and each subpackage's tests in a folder of the same name
below it, not in files at the top that only a name prefix ties to their subpackage. What tests
share lives in helper modules (tests/polling.py, tests/fixtures/, tests/worker/harness.py, ...):
a test module imports from no other test module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.paths import REPO

TEST_DIRS = {
    REPO / "wgpu_protocol": REPO / "tests" / "protocol",
    REPO / "redis_api": REPO / "tests" / "hub",
    REPO / "worker_image" / "comfy_worker": REPO / "tests" / "worker",
    REPO / "comfyui_sim": REPO / "tests" / "sim",
    REPO / "orchestrator": REPO / "tests" / "orchestrator",
}


def misplaced(package: Path, tests: Path) -> list[str]:
    """What breaks the mirror between `package` and its `tests` folder."""
    subpackages = {p.parent.name for p in package.glob("*/__init__.py")}
    top_modules = {p.stem for p in package.glob("*.py")}
    inside = {p.stem for sub in subpackages for p in (package / sub).glob("*.py")} - top_modules
    problems = [
        f"{package.name}/{sub}: no {tests.name}/{sub}/"
        for sub in sorted(subpackages)
        if not (tests / sub).is_dir()
    ]
    for folder in sorted(p.parent for p in tests.glob("*/__init__.py")):
        if folder.name not in subpackages:
            problems.append(f"{tests.name}/{folder.name}/ mirrors no subpackage of {package.name}")
    for module in sorted(tests.glob("test_*.py")):
        name = module.stem.removeprefix("test_")
        first = name.split("_")[0]
        if name in subpackages or name in inside or first in subpackages:
            problems.append(f"{tests.name}/{module.name} belongs in a subpackage's folder")
    return problems


def test_every_package_has_its_test_folder() -> None:
    assert [str(t) for t in TEST_DIRS.values() if not t.is_dir()] == []


def test_the_tests_mirror_the_packages() -> None:
    problems = [p for package, tests in TEST_DIRS.items() for p in misplaced(package, tests)]
    assert problems == []


def test_the_mirror_check_sees_a_misplaced_test(tmp_path: Path) -> None:
    """A guard that cannot fail is no guard: a layout that breaks each rule is caught."""
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    for folder in (package / "gpus", package / "stack", tests / "stack", tests / "ghost"):
        folder.mkdir(parents=True)
        (folder / "__init__.py").touch()
    (package / "gpus" / "slots.py").touch()
    (tests / "test_slots.py").touch()
    (tests / "test_gpus_count.py").touch()
    (tests / "test_cli.py").touch()
    assert misplaced(package, tests) == [
        "pkg/gpus: no tests/gpus/",
        "tests/ghost/ mirrors no subpackage of pkg",
        "tests/test_gpus_count.py belongs in a subpackage's folder",
        "tests/test_slots.py belongs in a subpackage's folder",
    ]


def imports_of_test_modules(tests: Path) -> list[str]:
    """`file: module` for each import, anywhere under `tests`, of a test module (test_*.py)."""
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_"):
                    found.append(f"{path.relative_to(tests.parent)}: {name}")
    return found


def test_no_test_module_imports_another() -> None:
    assert imports_of_test_modules(REPO / "tests") == []


def test_the_import_check_sees_a_test_module_imported(tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    (tests / "hub").mkdir(parents=True)
    (tests / "hub" / "helpers.py").write_text("X = 1\n")
    (tests / "hub" / "test_a.py").write_text("from tests.hub.helpers import X\n")
    (tests / "hub" / "test_b.py").write_text("from tests.hub.test_a import X\n")
    (tests / "hub" / "test_c.py").write_text(
        "from tests.hub import test_a\nimport tests.hub.test_b\n"
    )
    assert imports_of_test_modules(tests) == [
        "tests/hub/test_b.py: tests.hub.test_a",
        "tests/hub/test_c.py: tests.hub.test_a",
        "tests/hub/test_c.py: tests.hub.test_b",
    ]
