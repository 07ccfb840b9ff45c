"""The worker version: one content hash names a tree on disk and the code a worker loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from comfy_worker.version import running_version, tree_version

from tests.paths import REPO


def copy_tree(target: Path) -> Path:
    shutil.copytree(REPO / "wgpu_protocol", target / "wgpu_protocol")
    shutil.copytree(
        REPO / "worker_image" / "comfy_worker", target / "worker_image" / "comfy_worker"
    )
    return target


def test_a_tree_and_the_worker_loaded_from_it_name_the_same_version(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    assert tree_version(tree) == tree_version(REPO) == running_version()
    with open(tree / "worker_image" / "comfy_worker" / "config.py", "a") as handle:
        handle.write("# changed\n")
    changed = tree_version(tree)
    assert changed != tree_version(REPO) and changed.startswith("src-")
    # A worker process importing from the tree reports the tree's version, not the installed one.
    code = "from comfy_worker.version import running_version; print(running_version())"
    env = {"PYTHONPATH": f"{tree}:{tree / 'worker_image'}", "WORKER_SRC_DESCRIBE": "v1-2-gabc"}
    printed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert printed == f"v1-2-gabc+{changed}"


def test_caches_and_non_python_files_do_not_change_the_version(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path / "src")
    before = tree_version(tree)
    package = tree / "worker_image" / "comfy_worker"
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "stale.py").write_text("x = 1\n")
    (package / "notes.txt").write_text("not code\n")
    assert tree_version(tree) == before
