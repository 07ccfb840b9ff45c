"""`python -m mutants` (`nox -s mutants`): apply each curated mutation to a copy of the tree, run
the tests that cover it, print killed / survived. Exit 1 if any survived or could not run.

The real tree is never written: the working tree (tracked and untracked, not ignored) is copied
into a temporary directory once; each mutation edits its file there, the tests run there with
that copy first on PYTHONPATH (ahead of the editable install), and the file is put back.

    python -m mutants                      # the whole list
    python -m mutants -k fencing -k auth   # mutations whose name contains any of these
    python -m mutants --list               # names and guarantees, run nothing
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mutants.catalog import ROOT, CatalogError, Mutation, check, load, resolve_test

PYTEST_ARGS = ("-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly")


@dataclass(frozen=True)
class Result:
    mutation: Mutation
    verdict: str  # killed, survived, error
    seconds: float
    detail: str = ""


def copy_tree(root: Path, into: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = root / name
        if source.is_file():  # deleted but still in the index: skip
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def pytest_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy's packages shadow the editable install (its finder comes after sys.path).
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "worker_image")])
    # No .pyc: one written for a mutant could outlive it when it is put back in the same second.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_pytest(tree: Path, tests: list[str], timeout_s: float) -> tuple[int | None, str]:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
            cwd=tree,
            env=pytest_env(tree),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"over {timeout_s:.0f} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def imports_from(tree: Path) -> bool:
    probe = "import redis_api, comfy_worker; print(redis_api.__file__, comfy_worker.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tree,
        env=pytest_env(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return all(Path(p).resolve().is_relative_to(tree.resolve()) for p in out)


def run_one(tree: Path, mutation: Mutation, timeout_s: float) -> Result:
    target = tree / mutation.file
    original = target.read_bytes()
    started = time.monotonic()
    try:
        target.write_text(mutation.apply(original.decode()))
        tests = [resolve_test(spec, tree) for spec in mutation.tests]
        code, last = run_pytest(tree, tests, mutation.timeout_s or timeout_s)
    finally:
        target.write_bytes(original)
    seconds = time.monotonic() - started
    if code is None:
        return Result(mutation, "killed", seconds, f"timeout: {last}")
    if code == 1:
        return Result(mutation, "killed", seconds, last)
    if code == 0:
        return Result(mutation, "survived", seconds, last)
    return Result(mutation, "error", seconds, f"pytest exit {code}: {last}")


def table(results: list[Result]) -> str:
    rows = ["| mutation | guarantee broken | result | s |", "| --- | --- | --- | --- |"]
    for r in results:
        verdict = r.verdict if r.verdict != "error" else f"error ({r.detail})"
        m = r.mutation
        rows.append(f"| `{m.name}` | {m.guarantee} | {verdict} | {r.seconds:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants", description=__doc__.split("\n")[0])
    parser.add_argument("-k", action="append", default=[], help="run mutations whose name has this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    mutations = load()
    if args.k:
        mutations = [m for m in mutations if any(k in m.name for k in args.k)]
    if args.list:
        for m in mutations:
            print(f"{m.name:45} {m.file}: {m.guarantee}")
        return 0
    problems = check(mutations)
    if problems:
        print("the mutation catalog no longer matches the source:", *problems, sep="\n  ")
        return 2
    if not mutations:
        print("no mutation matches", args.k)
        return 2

    with tempfile.TemporaryDirectory(prefix="wgpu-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(ROOT, tree)
        if not imports_from(tree):
            print("error: the copy's packages do not shadow the installed ones")
            return 2
        if not args.no_baseline:
            # Every selected test must pass unmutated, or "killed" would mean nothing.
            tests = sorted({resolve_test(s, tree) for m in mutations for s in m.tests})
            code, last = run_pytest(tree, tests, args.timeout * 2)
            if code != 0:
                print(f"error: the selected tests fail without any mutation ({last})")
                return 2
            print(f"baseline: {len(tests)} tests pass unmutated ({last})", flush=True)
        results = []
        for i, mutation in enumerate(mutations, 1):
            result = run_one(tree, mutation, args.timeout)
            results.append(result)
            line = f"[{i}/{len(mutations)}] {result.verdict:8} {mutation.name}"
            print(f"{line} ({result.seconds:.0f} s)", flush=True)

    killed = sum(r.verdict == "killed" for r in results)
    print()
    print(table(results))
    print(f"\nscore: {killed}/{len(results)} killed")
    if args.markdown:
        args.markdown.write_text(table(results) + f"\n\nscore: {killed}/{len(results)} killed\n")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CatalogError as exc:
        print(f"error: {exc}")
        sys.exit(2)
