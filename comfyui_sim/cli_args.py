"""Command-line options shared by `python -m comfyui_sim` and `wgpu sim`."""

from __future__ import annotations

import argparse
from pathlib import Path

from comfyui_sim.config import SimConfig
from comfyui_sim.model_store import parse_models_option


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def parser(prog: str = "python -m comfyui_sim") -> argparse.ArgumentParser:
    """The simulator's options, the one definition (`wgpu sim` is built from it too)."""
    defaults = SimConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve stock ComfyUI's HTTP and WebSocket API with simulated nodes.",
    )
    p.add_argument("--host", default=defaults.host, help=f"address to bind ({defaults.host})")
    p.add_argument(
        "--port", type=int, default=defaults.port, help=f"port ({defaults.port}; 0 = any free)"
    )
    p.add_argument("--node-time", type=_seconds, default=defaults.node_time_s, help="s per node")
    p.add_argument(
        "--step-time", type=_seconds, default=defaults.step_time_s, help="s per progress step"
    )
    p.add_argument("--output-dir", "--output-directory", type=Path, default=None)
    p.add_argument("--temp-dir", "--temp-directory", type=Path, default=None)
    p.add_argument("--input-dir", "--input-directory", type=Path, default=None)
    p.add_argument("--cache-none", action="store_true", help="never serve nodes from cache")
    p.add_argument("--device-name", default=None, help="device name in /system_stats")
    p.add_argument("--vram-mb", type=int, default=None, help="VRAM in /system_stats (MiB)")
    p.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="FOLDER=FILE[,FILE...]",
        help="model files this instance has (repeatable), e.g. checkpoints=a.safetensors",
    )
    p.add_argument("--models-dir", type=Path, default=None, help="model folders (default: temp)")
    p.add_argument("--load-time", type=float, default=2.0, help="seconds per model load")
    p.add_argument("--vram-models", type=int, default=1, help="models kept loaded per loader kind")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace, argv: list[str]) -> SimConfig:
    config = SimConfig(
        host=args.host,
        port=args.port,
        node_time_s=args.node_time,
        step_time_s=args.step_time,
        output_dir=args.output_dir,
        temp_dir=args.temp_dir,
        input_dir=args.input_dir,
        cache_enabled=not args.cache_none,
        argv=["main.py", *argv],
        models=parse_models_option(args.models),
        models_dir=args.models_dir,
        load_time_s=args.load_time,
        vram_models=args.vram_models,
    )
    if args.device_name:
        config.device_name = args.device_name
    if args.vram_mb:
        config.vram_total = args.vram_mb * 1024 * 1024
    return config
