"""README's Quickstart is what CI runs: the two commands at the top, the test command marked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.paths import REPO as ROOT

README = ROOT / "README.md"


def _sections() -> list[str]:
    return re.findall(r"^## (.+)$", README.read_text(), flags=re.MULTILINE)


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)]


def test_quickstart_comes_first_with_two_commands() -> None:
    sections = _sections()
    assert sections[0] == "Quickstart"
    for heading in ("What it is", "Running the tests", "Performance", "Operations"):
        assert heading in sections
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    run_main, run_tests = _bash_blocks(quickstart)[:2]
    assert "wgpu demo" in run_main and "pip install" in run_main
    assert "<!-- ci:test-command -->" in quickstart
    assert run_tests == "bash scripts/test.sh"


def test_ci_extracts_exactly_the_readme_test_command(tmp_path: Path) -> None:
    extract = ROOT / "scripts" / "readme-test-command"
    done = subprocess.run([extract, README], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "bash scripts/test.sh\n"
    assert "scripts/readme-test-command README.md" in (ROOT / ".ci" / "run").read_text()

    unmarked = tmp_path / "README.md"
    unmarked.write_text("# x\n```bash\nbash scripts/test.sh\n```\n")
    done = subprocess.run([extract, unmarked], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "no test command" in done.stderr


def test_diagram_names_the_parts() -> None:
    text = README.read_text()
    diagram = text.split("```mermaid", 1)[1].split("```", 1)[0]
    for part in ("Redis", "hub", "ComfyUI", "worker", "wgpu"):
        assert part in diagram


def test_ci_scripts_parse() -> None:
    for script in (ROOT / ".ci" / "run", ROOT / "scripts" / "test.sh"):
        done = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
