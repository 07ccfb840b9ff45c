"""A redis-py asyncio connection that packs commands with hiredis, as redis-py's own sync client
does (its asyncio client packs in pure Python, about a tenth of the hub's CPU per job)."""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import Connection

_PLAIN = frozenset((str, bytes, int))  # exact types: bool, float, memoryview take the old path


class HiredisPackConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        if not args or not all(type(arg) in _PLAIN for arg in args):
            return super().pack_command(*args)
        # As the pure-Python packer does: 'CONFIG GET' is sent as two arguments.
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]
