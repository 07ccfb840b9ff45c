"""Per-worker credentials, derived from the fleet's WORKER_TOKEN (no I/O, stdlib only).

A worker connects as `worker_id` showing `worker_credential(WORKER_TOKEN, worker_id)`. `wgpu`
hands each worker its own credential (env WORKER_CREDENTIAL), so the secret on one machine
proves only that machine's workers; the hub, holding WORKER_TOKEN, derives it to check.
"""

from __future__ import annotations

import hashlib
import hmac

CREDENTIAL_PREFIX = "wc1-"  # versioned, so that the derivation can change without ambiguity


def worker_credential(worker_token: str, worker_id: str) -> str:
    digest = hmac.new(worker_token.encode(), worker_id.encode(), hashlib.sha256).hexdigest()
    return CREDENTIAL_PREFIX + digest
