"""The mutation catalog (mutants/mutations.toml) still matches the source: every mutation's
text is in its file exactly once and every test it names exists. A refactor that moves code
makes this fail loudly instead of letting `nox -s mutants` report a mutation it never applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutants.catalog import CatalogError, Mutation, check, load, resolve_test

MUTATIONS = load()


def test_the_catalog_covers_every_part_of_the_project() -> None:
    files = {m.file.split("/")[0] for m in MUTATIONS}
    assert {"redis_api", "wgpu_protocol", "worker_image", "orchestrator", "comfyui_sim"} <= files
    assert sum(m.file.endswith(".lua") for m in MUTATIONS) >= 10  # the Lua scripts above all


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_still_applies_and_names_existing_tests(mutation: Mutation) -> None:
    assert check([mutation]) == []


def test_a_vanished_target_or_test_is_reported(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_x() -> None:\n    pass\n")
    (tmp_path / "code.py").write_text("x = 1\nx = 1\n")
    twice = Mutation("twice", "g", "code.py", "x = 1", "x = 2", ("test_a.py::test_x",))
    gone = Mutation("gone", "g", "code.py", "y = 1", "y = 2", ("test_a.py::test_nope",))
    problems = check([twice, gone], root=tmp_path)
    assert problems == [
        "mutation twice: its text is found 2 times in code.py",
        "mutation gone: its text is not found in code.py",
        "mutation gone: test 'test_a.py::test_nope': no function test_nope in tests/test_a.py",
    ]
    assert resolve_test("test_a.py::test_x", tmp_path) == "tests/test_a.py::test_x"
    with pytest.raises(CatalogError, match="matches nothing"):
        resolve_test("test_b.py", tmp_path)
