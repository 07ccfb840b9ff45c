"""`python -m redis_api`: run a hub configured from the environment (see config.py)."""

from __future__ import annotations

import logging
import os

from .config import HubConfig
from .server import run_hub


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run_hub(HubConfig.from_env())


if __name__ == "__main__":
    main()
