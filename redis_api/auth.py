"""Who is calling: named API keys for clients, per-worker credentials for workers.

Secrets are compared in constant time and never logged or echoed.

- `API_KEYS=name1:secret1,name2:secret2`: each job records the name of the key that submitted
  it (`owner`); a key sees, lists, streams and cancels only its own jobs. A bare secret (no
  `name:`) is named `key-` + the first 12 hex digits of its SHA-256, so that its jobs have a
  stable owner without the secret ever being stored. `ADMIN_API_KEYS` (same form) see all jobs.
- Workers: `WORKER_TOKEN` is the fleet secret; a worker proves itself as `worker_id` with
  `worker_credential(WORKER_TOKEN, worker_id)` (wgpu_protocol), so the credential handed to one
  machine cannot act as another machine's worker.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from wgpu_protocol.credentials import worker_credential


@dataclass(frozen=True)
class ApiKey:
    name: str
    secret: str
    admin: bool = False

    def may_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.name


def parse_keys(entries: Iterable[str], admin: bool = False) -> list[ApiKey]:
    keys = []
    for entry in entries:
        name, sep, secret = entry.partition(":")
        if not sep:
            name, secret = bare_key_name(entry), entry
        if not name or not secret:
            raise ValueError("API keys are name:secret (or a bare secret), comma separated")
        keys.append(ApiKey(name.strip(), secret.strip(), admin))
    return keys


def bare_key_name(secret: str) -> str:
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


class KeyRing:
    """The hub's API keys. Empty: auth is off (every caller may do everything)."""

    def __init__(self, api_keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        self.keys = parse_keys(api_keys) + parse_keys(admin_keys, admin=True)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def match(self, presented: str | None) -> ApiKey | None:
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for key in self.keys:  # check every key, so timing does not say which one matched
            if hmac.compare_digest(given, key.secret.encode()):
                found = key
        return found


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


def worker_ok(request: web.Request, worker_token: str, worker_id: str) -> bool:
    """The socket proves `worker_id`: it shows that worker's credential."""
    return secret_ok(presented_secret(request), (worker_credential(worker_token, worker_id),))
