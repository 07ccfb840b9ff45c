"""Shared-secret checks. Constant-time comparison; secrets are never logged or echoed."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web


def presented_secret(request: web.Request) -> str | None:
    """The secret in `Authorization: Bearer X` or `X-API-Key: X`, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key") or None


def secret_ok(presented: str | None, accepted: Iterable[str]) -> bool:
    if presented is None:
        return False
    given = presented.encode()
    ok = False
    for secret in accepted:  # check every key, so timing does not say which one matched
        ok |= hmac.compare_digest(given, secret.encode())
    return ok


def bearer_ok(request: web.Request, accepted: Iterable[str]) -> bool:
    return secret_ok(presented_secret(request), accepted)
