"""``refiner app``: start the Streamlit app with settings fit for a local research server."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

MAIN = Path(__file__).resolve().parent / "main.py"
SERVE = Path(__file__).resolve().parent / "serve.py"
DEVICE_ENV = "REFINER_APP_DEVICE"  # read by app.sources; set from --device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``refiner app``."""
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    parser.add_argument("--address", default="localhost",
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


def streamlit_command(args: argparse.Namespace) -> List[str]:
    """The server command line for these options: `app.serve` warms the caches, then runs
    ``streamlit run app/main.py`` with these Streamlit options."""
    return [sys.executable, str(SERVE), "run",
            "--server.port", str(args.port), "--server.address", args.address,
            "--server.headless", "false" if args.browser else "true",
            "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", "20",          # MB; refiner.image_input enforces the same limit
            "--server.fileWatcherType", "none",      # a research server, not a dev loop
            "--client.toolbarMode", "minimal"]


def run(args: argparse.Namespace) -> int:
    """Run the app until interrupted; returns Streamlit's exit status."""
    if not 0 < args.port < 65536:
        print(f"refiner app: invalid port {args.port}", file=sys.stderr)
        return 2
    from refiner.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        print(f"refiner app: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env[DEVICE_ENV] = str(device)
    if args.map_budget_mb is not None:
        if args.map_budget_mb < 0:
            print("refiner app: --map-budget-mb must be >= 0", file=sys.stderr)
            return 2
        env["REFINER_APP_MAP_BUDGET_MB"] = str(args.map_budget_mb)
    if args.checkpoints:
        env["REFINER_APP_CHECKPOINTS"] = str(Path(args.checkpoints).resolve())
    print(f"Serving the app on http://{args.address}:{args.port}", flush=True)
    process = subprocess.Popen(streamlit_command(args), env=env)
    # Stopping `refiner app` must stop the server too: pass SIGTERM on (a supervisor, a test harness), or the
    # Streamlit child would be orphaned and keep serving the port.
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: process.terminate())
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole foreground group; wait for Streamlit's own shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:
            process.terminate()
