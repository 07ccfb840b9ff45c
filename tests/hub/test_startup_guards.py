"""What the hub does about its exposure at start: a loud warning when auth is off on an
address others can reach, and the open-file limit raised (each client, stream and worker socket
is a file descriptor)."""

from __future__ import annotations

import logging
import resource

import pytest

from redis_api.config import HubConfig
from redis_api.server import raise_nofile_limit, warn_if_exposed


@pytest.mark.parametrize(
    ("host", "keys", "token", "warned"),
    [
        ("0.0.0.0", (), None, "and connect as a worker"),
        ("0.0.0.0", (), "fleet", "AUTH IS OFF"),
        ("0.0.0.0", ("ak-1",), "fleet", ""),
        ("127.0.0.1", (), None, ""),
    ],
)
def test_auth_off_on_a_reachable_bind_warns(
    caplog: pytest.LogCaptureFixture,
    host: str,
    keys: tuple[str, ...],
    token: str | None,
    warned: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_api")
    warn_if_exposed(HubConfig(host=host, api_keys=keys, worker_token=token))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warned:
        assert len(warnings) == 1 and "AUTH IS OFF" in warnings[0] and warned in warnings[0]
        assert ("connect as a worker" in warnings[0]) == (token is None)
    else:
        assert warnings == []


def test_the_open_file_limit_is_raised_towards_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
        raise_nofile_limit(4096)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
