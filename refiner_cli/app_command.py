"""``refiner app``: the arguments of `app.launch.serve`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``refiner app``."""
    from app.launch import DEFAULT_ADDRESS, DEFAULT_PORT

    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help="address to bind (default localhost; 0.0.0.0 to serve other machines)")
    parser.add_argument("--checkpoints", default=None,
                        help="directory of checkpoint folders for the model slots (default: ./checkpoints)")
    parser.add_argument("--browser", action="store_true", help="open a browser tab (default: headless)")
    parser.add_argument("--map-budget-mb", type=float, default=None,
                        help="bytes of captured maps the server keeps, in MB, shared by all sessions (default: a "
                             "quarter of the machine's memory, 1024-16384; least recently used views are dropped and "
                             "recomputed when needed)")
    parser.add_argument("--device", default="auto",
                        help="where models run: auto (a GPU when there is one), cpu, cuda, cuda:N or mps")


def run(args: argparse.Namespace) -> int:
    """Run the app until interrupted; returns Streamlit's exit status (2 for bad options)."""
    from app.launch import serve

    try:
        return serve(port=args.port, address=args.address, checkpoints=args.checkpoints, browser=args.browser,
                     map_budget_mb=args.map_budget_mb, device=args.device)
    except ValueError as error:
        print(f"refiner app: {error}", file=sys.stderr)
        return 2
