"""The curated mutations (`mutations.toml`): load them and check that each still applies.

A mutation is one textual replacement in one file, named after the guarantee it breaks, with
the tests that must catch it. It is matched by its text, never by a line number, so that it
follows code that moves; when the text is gone the catalog is out of date and says so.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOG = Path(__file__).resolve().parent / "mutations.toml"
TESTS = ROOT / "tests"


class CatalogError(ValueError):
    """The catalog is malformed or no longer matches the source: the message says which entry."""


@dataclass(frozen=True)
class Mutation:
    name: str  # the guarantee it breaks, as a slug
    guarantee: str  # one sentence: what stops being true
    file: str  # relative to the repository root
    find: str  # exact text, present exactly once in `file`
    replace: str
    tests: tuple[str, ...]  # "test_file.py::test_name" (found anywhere under tests/) or a path
    timeout_s: float | None = None  # for tests that wait forever on the mutant (killed by it)

    def apply(self, source: str) -> str:
        count = source.count(self.find)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise CatalogError(f"mutation {self.name}: its text is {where} in {self.file}")
        return source.replace(self.find, self.replace)


def load(path: Path = CATALOG) -> list[Mutation]:
    raw = tomllib.loads(path.read_text())
    mutations = []
    seen: set[str] = set()
    for i, entry in enumerate(raw.get("mutation", [])):
        try:
            mutation = Mutation(
                name=str(entry["name"]),
                guarantee=str(entry["guarantee"]),
                file=str(entry["file"]),
                find=str(entry["find"]),
                replace=str(entry["replace"]),
                tests=tuple(str(t) for t in entry["tests"]),
                timeout_s=float(entry["timeout_s"]) if "timeout_s" in entry else None,
            )
        except KeyError as missing:
            raise CatalogError(f"mutation #{i + 1} in {path.name} lacks {missing}") from None
        if mutation.name in seen:
            raise CatalogError(f"mutation name {mutation.name!r} is used twice")
        if mutation.find == mutation.replace or not mutation.tests:
            raise CatalogError(f"mutation {mutation.name}: changes nothing or names no test")
        seen.add(mutation.name)
        mutations.append(mutation)
    return mutations


def resolve_test(spec: str, root: Path = ROOT) -> str:
    """`test_x.py::test_y` -> `tests/.../test_x.py::test_y`, wherever under tests/ the file is
    (tests move into folders; their file names stay). Raises CatalogError if it is ambiguous or
    gone, or if the named test function is not in that file."""
    file_part, sep, node = spec.partition("::")
    if "/" in file_part:
        candidates = [root / file_part] if (root / file_part).exists() else []
    else:
        candidates = sorted((root / "tests").rglob(file_part))
    if len(candidates) != 1:
        found = ", ".join(str(c.relative_to(root)) for c in candidates) or "nothing"
        raise CatalogError(f"test {spec!r}: {file_part} matches {found} under tests/")
    path = candidates[0]
    if sep:
        function = node.split("::")[-1].split("[")[0]
        if f"def {function}(" not in path.read_text():
            raise CatalogError(f"test {spec!r}: no function {function} in {path.relative_to(root)}")
    return str(path.relative_to(root)) + sep + node


def check(mutations: list[Mutation], root: Path = ROOT) -> list[str]:
    """Every problem with the catalog against the tree at `root` (empty when all apply)."""
    problems = []
    for mutation in mutations:
        target = root / mutation.file
        if not target.is_file():
            problems.append(f"mutation {mutation.name}: {mutation.file} does not exist")
            continue
        try:
            mutation.apply(target.read_text())
        except CatalogError as exc:
            problems.append(str(exc))
        for spec in mutation.tests:
            try:
                resolve_test(spec, root)
            except CatalogError as exc:
                problems.append(f"mutation {mutation.name}: {exc}")
    return problems
