"""Automatic pipelining of script calls: every call made while a batch is in flight goes out
with the next one, as one pipeline (one write, one read). Under load that turns N round trips
and N syscalls into one; a lone call still costs exactly one round trip."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from .errors import BadRequest


def refuse_unpackable(args: tuple[Any, ...]) -> None:
    """Raise BadRequest for a string Redis cannot be sent (not UTF-8: a lone surrogate)."""
    for arg in args:
        if type(arg) is str and not arg.isascii():
            try:
                arg.encode()
            except UnicodeEncodeError:
                raise BadRequest("a text value is not valid UTF-8 (a lone surrogate)") from None


_Call = tuple[AsyncScript, tuple[Any, ...], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis[str]) -> None:
        self.client = client
        self._pending: list[_Call] = []
        self._busy = False  # a call or a batch is in flight
        self._task: asyncio.Task[None] | None = None

    async def call(self, script: AsyncScript, args: tuple[Any, ...]) -> Any:
        refuse_unpackable(args)  # one bad string must not fail every call in its batch
        if not self._busy:
            # Nothing in flight: go straight out (no task, no future), the common case at low load.
            self._busy = True
            try:
                return await script(keys=[], args=args)
            finally:
                self._after_flight()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, args, future))
        return await future

    def _after_flight(self) -> None:
        if self._pending:
            self._task = asyncio.create_task(self._flush(), name="redis-script-batch")
        else:
            self._busy = False

    async def _flush(self) -> None:
        try:
            await self._flush_pending()
        finally:
            self._after_flight()

    async def _flush_pending(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._execute(batch)
            except BaseException as exc:  # connection lost: every caller in the batch hears it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        if len(batch) == 1:
            script, args, _ = batch[0]
            try:
                return [await script(keys=[], args=args)]
            except ResponseError as exc:
                return [exc]
        async with self.client.pipeline(transaction=False) as pipe:
            for script, args, _ in batch:
                pipe.evalsha(script.sha, 0, *args)  # type: ignore[attr-defined]
            results: list[Any] = await pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                # Redis lost its script cache (it restarted): the call never ran, so run it
                # again the slow way, which loads the script.
                script, args, _ = batch[i]
                try:
                    results[i] = await script(keys=[], args=args)
                except ResponseError as exc:
                    results[i] = exc
        return results
