"""The test harness's own rules: what counts as CI (where a missing service fails the run)."""

from __future__ import annotations

import pytest

from tests.fixtures.services import under_ci


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "github-actions", "woodpecker"])
def test_any_non_empty_ci_value_is_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert under_ci()


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", " "])
def test_empty_zero_or_false_is_not_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not under_ci()


def test_unset_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert not under_ci()
