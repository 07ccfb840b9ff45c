"""`python -m comfyui_sim --port 8188 --node-time 0.05 --output-dir DIR`."""

from __future__ import annotations

import logging
import sys

from comfyui_sim.cli_args import config_from_args, parser
from comfyui_sim.model_store import ModelStoreError
from comfyui_sim.server import run_sim


def main(argv: list[str] | None = None, prog: str = "python -m comfyui_sim") -> None:
    """Parse `argv` with the simulator's own options and serve until SIGTERM / Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s wgpu-sim %(message)s")
    try:
        config = config_from_args(args, argv)
    except ModelStoreError as exc:
        parser(prog).error(str(exc))
    try:
        run_sim(config)
    except OSError as exc:
        print(f"wgpu-sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
