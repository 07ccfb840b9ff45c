"""The one way every system under test records when a job started: RPUSH of
"index t_submit t_start" to a Redis list, with time.time() taken on the same host."""

from __future__ import annotations

import time

import redis

STARTS_KEY = "bench:starts"


def start_record(index: int, t_submit: float) -> str:
    return f"{index} {t_submit!r} {time.time()!r}"


def parse_records(raw: list[bytes]) -> list[tuple[int, float, float]]:
    out = []
    for item in raw:
        index, t_submit, t_start = item.split()
        out.append((int(index), float(t_submit), float(t_start)))
    return out


def read_records(client: redis.Redis[bytes]) -> list[tuple[int, float, float]]:
    return parse_records(client.lrange(STARTS_KEY, 0, -1))
