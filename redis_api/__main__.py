"""`python -m redis_api`: run a hub configured from the environment (see config.py)."""

from __future__ import annotations

import logging
import os
import sys

from .config import HubConfig
from .errors import ConfigError
from .server import run_hub


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run_hub(HubConfig.from_env())
    except ConfigError as exc:
        sys.exit(f"wgpu hub: {exc}")


if __name__ == "__main__":
    main()
