"""The hub's version: that of the installed distribution holding this package (whatever it is
named), as `wgpu --version` reports it."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def hub_version() -> str:
    try:
        names = metadata.packages_distributions().get(__package__ or "redis_api") or []
        return metadata.version(names[0]) if names else "0+unknown"
    except metadata.PackageNotFoundError:
        return "0+unknown"  # run from a source tree that is not installed
