"""``refiner app``: start the Streamlit app with settings fit for a local research server (`serve`;
`refiner_cli.app_command` parses its arguments)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Union

MAIN = Path(__file__).resolve().parent / "main.py"
SERVE = Path(__file__).resolve().parent / "serve.py"
DEVICE_ENV = "REFINER_APP_DEVICE"  # read by app.sources; set from --device
DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "localhost"


def streamlit_command(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS, browser: bool = False) -> List[str]:
    """The server command line: `app.serve` warms the caches, then runs ``streamlit run app/main.py`` with
    these Streamlit options."""
    return [sys.executable, str(SERVE), "run",
            "--server.port", str(port), "--server.address", address,
            "--server.headless", "false" if browser else "true",
            "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", "20",          # MB; refiner.image_input enforces the same limit
            "--server.fileWatcherType", "none",      # a research server, not a dev loop
            "--client.toolbarMode", "minimal"]


def serve(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS, checkpoints: Optional[Union[str, Path]] = None,
          browser: bool = False, map_budget_mb: Optional[float] = None, device: str = "auto") -> int:
    """Run the app until interrupted; returns Streamlit's exit status.

    Args:
        port, address: where to serve.
        checkpoints: directory of checkpoint folders for the model slots (default: the shipped pair).
        browser: open a browser tab.
        map_budget_mb: bytes of captured maps the server keeps, in MB (default: `app.map_store`'s).
        device: where models run (`refiner.device.resolve_device`).

    Raises:
        ValueError: an invalid port, budget or device (before the server starts).
    """
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    from refiner.device import resolve_device

    resolved = resolve_device(device)
    env = dict(os.environ)
    env[DEVICE_ENV] = str(resolved)
    if map_budget_mb is not None:
        if map_budget_mb < 0:
            raise ValueError("--map-budget-mb must be >= 0")
        env["REFINER_APP_MAP_BUDGET_MB"] = str(map_budget_mb)
    if checkpoints:
        env["REFINER_APP_CHECKPOINTS"] = str(Path(checkpoints).resolve())
    print(f"Serving the app on http://{address}:{port}", flush=True)
    process = subprocess.Popen(streamlit_command(port, address, browser), env=env)
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
