"""Start the app on a free localhost port and open it in headless Chromium (shared by the e2e test and the
latency benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# True once the page has settled: Streamlit's script run is over (stApp's data-test-script-state), no element
# is stale (Streamlit marks every element of the previous run stale until this run re-sends or drops it), and
# every chart shows the figure this run sent (app/chart_component.js marks each plot node with the revision it
# was asked for and the one it has drawn). Polled on animation frames, so the paint of the last chart is in.
SETTLED = """() => {
  const app = document.querySelector('[data-testid=stApp]');
  if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
  if (document.querySelector('[data-stale=true]')) return false;
  const charts = Array.from(document.querySelectorAll('div.refiner-chart'));
  return charts.length > 0 && charts.every(c => c.dataset.drawn === c.dataset.want && c.querySelector('.main-svg'));
}"""


def settle(page: Any) -> None:
    """Wait until every chart on the page is redrawn (`SETTLED`), then one more frame for the paint."""
    page.wait_for_function(SETTLED, timeout=120_000, polling="raf")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def free_port() -> int:
    """A port that is free now on localhost (the OS picks it, so parallel test workers never collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_app(checkpoints: Path, timeout: float = 120.0, env: Optional[Mapping[str, str]] = None
                ) -> Iterator[Tuple[str, float]]:
    """Yield (url, time at which the server answered its health check); stop the server afterwards.

    ``env``: variables set for this server on top of this process's environment.
    """
    port = free_port()
    env = dict(os.environ, REFINER_APP_CHECKPOINTS=str(checkpoints), **(env or {}))
    # Own process group: the server (refiner app and its Streamlit child) is stopped as a whole afterwards.
    process = subprocess.Popen([sys.executable, "-m", "refiner_cli", "app", "--port", str(port)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited: {process.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the app did not start")
            time.sleep(0.2)
        yield url, time.monotonic()
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is still there after 20 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()  # reap the leader, or the group never empties
        time.sleep(0.2)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
