"""What every hub-talking command says when the hub refuses or does not answer: one line, and
the exit code the HTTP status calls for (orchestrator.commands.common.hub_errors)."""

from __future__ import annotations

import pytest
import typer

from orchestrator.commands.common import hub_errors
from orchestrator.console import ExitCode
from orchestrator.errors import HubError, HubUnreachable

URL = "http://hub:8001"


@pytest.mark.parametrize(
    ("error", "code", "says"),
    [
        (HubUnreachable("no answer from http://hub:8001"), ExitCode.UNREACHABLE, "wgpu up"),
        (HubError("no such job", 404), ExitCode.NOT_FOUND, "not found: no such job"),
        (HubError("bad key", 401), ExitCode.USAGE, "pass --api-key"),
        (HubError("limit must be from 1 to 1000", 400), ExitCode.USAGE, "refused: limit"),
        (HubError("redis down", 503), ExitCode.FAILED, "refused: redis down"),
    ],
)
def test_each_hub_error_is_one_line_and_its_exit_code(
    error: HubError, code: ExitCode, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(typer.Exit) as exited, hub_errors(URL, "draining box-gpu0"):
        raise error
    assert exited.value.exit_code == int(code)
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: draining box-gpu0: ") and says in line
    assert "\n" not in line


def test_other_errors_are_not_read_as_the_hubs() -> None:
    with pytest.raises(KeyError), hub_errors(URL):
        raise KeyError("a bug, not a hub answer")
