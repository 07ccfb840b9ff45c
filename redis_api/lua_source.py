"""Assembles a script's source: lua/common.lua's definitions that the script uses, then the script.

Redis runs a script's whole body on every call, so every `local function` of the shared prelude
is a closure made (and collected) per call whether the script needs it or not: ~9 µs per call
for all of common.lua on the development machine. Only the definitions a script reaches (by
name, transitively) are kept. A Lua local can only be reached by its name written out, so
matching identifiers finds every one it needs (a name in a comment or string at worst keeps a
definition too many); definitions keep their order, so upvalues stay defined before use.
"""

from __future__ import annotations

import re

from redis_api.errors import HubError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFINITION = re.compile(r"local (?:function )?([A-Za-z_][A-Za-z0-9_]*)\b")


class PreludeError(HubError, ValueError):
    """common.lua has a top-level statement this module cannot attribute to a name."""


def definitions(prelude: str) -> list[tuple[str, str]]:
    """The prelude's top-level definitions in order: (name, its text up to the next one).
    Text before the first definition (the header comment) comes as name ''."""
    chunks: list[tuple[str, list[str]]] = [("", [])]
    for line in prelude.splitlines():
        if line.startswith("local "):
            match = _DEFINITION.match(line)
            plain = not line.startswith("local function ")
            if match is None or (plain and "," in line.split("=", 1)[0]):
                raise PreludeError(f"common.lua: one name per top-level local: {line!r}")
            chunks.append((match.group(1), [line]))
        elif line and not line[0].isspace() and not line.startswith(("--", "end", "}")):
            raise PreludeError(f"common.lua: a top-level statement that is no local: {line!r}")
        else:
            chunks[-1][1].append(line)
    return [(name, "\n".join(lines)) for name, lines in chunks]


def used_prelude(prelude: str, script: str) -> str:
    """The prelude cut down to the definitions `script` reaches, directly or through others."""
    chunks = definitions(prelude)
    defined = {name for name, _ in chunks if name}
    uses = {name: set(_NAME.findall(text)) & defined - {name} for name, text in chunks if name}
    needed: set[str] = set()
    todo = set(_NAME.findall(script)) & defined
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= uses[name] - needed
    return "\n".join(text for name, text in chunks if not name or name in needed)
