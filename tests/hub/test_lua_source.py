"""Each script carries only the part of lua/common.lua it uses (redis_api/lua_source.py): every
definition it reaches must be there, in its order, and nothing is silently misread."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from redis_api.lua_source import PreludeError, definitions, used_prelude
from redis_api.store import _SOURCES

PRELUDE = """-- header
local P = ARGV[1]
local function a() return P end
local function b() return a() end
local LIMIT = {1,
  2}
local function c(x, y)
  -- calls nothing; mentions b only in this comment
  return x + y
end
local function unused() return LIMIT end
"""


def names_in(source: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))


def test_a_script_gets_what_it_reaches_transitively_and_in_order() -> None:
    kept = used_prelude(PRELUDE, "return b()")
    assert [n for n, _ in definitions(kept)] == ["", "P", "a", "b"]
    assert "unused" not in kept and "LIMIT" not in kept


def test_a_name_in_a_comment_keeps_a_definition_too_many_never_one_too_few() -> None:
    kept = used_prelude(PRELUDE, "return c(1, 2)")
    assert [n for n, _ in definitions(kept)] == ["", "P", "a", "b", "c"]


def test_a_multiline_definition_is_kept_whole() -> None:
    kept = used_prelude(PRELUDE, "return unused()")
    assert "local LIMIT = {1,\n  2}" in kept


@pytest.mark.parametrize(
    "line", ["x = 1", "local a, b = 1, 2", "function global() end", "redis.call('PING')"]
)
def test_a_top_level_statement_it_cannot_attribute_is_refused(line: str) -> None:
    with pytest.raises(PreludeError):
        definitions(PRELUDE + line + "\n")


def test_every_hub_script_keeps_each_common_definition_it_names() -> None:
    folder = resources.files("redis_api") / "lua"
    defined = {name for name, _ in definitions((folder / "common.lua").read_text()) if name}
    for name, source in _SOURCES.items():
        body = (folder / f"{name}.lua").read_text()
        prelude = source.split("\n", 1)[1].removesuffix("\n" + body)
        kept = {n for n, _ in definitions(prelude) if n}
        missing = (names_in(source) & defined) - kept
        assert not missing, f"{name}.lua names {sorted(missing)} but its prelude lacks them"
    # And the trimming does trim: enqueue does not carry the claim.
    assert "claim_for" not in _SOURCES["enqueue"]
