"""Developer sessions: `nox` runs lint, typecheck and tests; bench and chaos run on demand.

Extra arguments go to the tool: `nox -s tests -- tests/orchestrator/gpus/test_nvml.py -x`.
`nox -s mutants` applies the curated mutations of mutants/mutations.toml (`-- -k fencing`).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite against real Redis and Docker (see README: Running the tests)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", *session.posargs)
    session.run("ruff", "format", "--check", *session.posargs)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the packages listed in pyproject.toml."""
    session.install("-e", ".[dev]")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (never part of `tests`): `python -m bench`."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session(python=PYTHON)
def chaos(session: nox.Session) -> None:
    """Fault-injection runs against a live stack: `python -m bench.chaos`."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "bench.chaos", *session.posargs)


@nox.session(python=PYTHON)
def mutants(session: nox.Session) -> None:
    """Curated mutation testing (`python -m mutants`): every mutation must be killed."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "mutants", *session.posargs)


@nox.session(python=PYTHON)
def abuse(session: nox.Session) -> None:
    """A hostile mix and faults next to a normal load, on loopback: `python -m bench.abuse`."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "bench.abuse", *session.posargs)
