"""What a Streamlit page costs in this browser before our app does anything: the floor under the app's
first-page time (`benchmarks/app_latency.py`).

Serves two throw-away pages with the same Streamlit and headless Chromium and times navigation until drawn:
``bare`` (a title and a sidebar slider) and ``one_plotly_chart`` (the same plus one small plotly heatmap,
so plotly.js is loaded and run once). Several fresh tabs per page, medians reported.

    .venv/bin/python benchmarks/streamlit_baseline.py [--tabs 3]

Writes benchmarks/results/streamlit_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.browser_app import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PAGES = {
    "bare": ('import streamlit as st\nst.sidebar.slider("x", 0, 10, 3)\nst.title("hello")\n', "h1"),
    "one_plotly_chart": (
        'import plotly.graph_objects as go\nimport streamlit as st\nst.sidebar.slider("x", 0, 10, 3)\n'
        'fig = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]))\nfig.update_layout(title="layer 1")\n'
        "st.plotly_chart(fig)\n", ".js-plotly-plot .gtitle"),
}


def time_page(source: str, selector: str, tabs: int, playwright) -> list:
    """Seconds from navigation to ``selector`` present, for ``tabs`` fresh tabs on one served page."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "page.py"
        script.write_text(source)
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                                    "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env={**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("streamlit did not start within 60 s") from None
                    time.sleep(0.1)
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            seconds = []
            for _ in range(tabs):
                page = browser.new_page()
                start = time.perf_counter()
                page.goto(f"http://localhost:{port}")
                page.wait_for_selector(selector, timeout=60_000)
                seconds.append(time.perf_counter() - start)
                page.close()
            browser.close()
            return seconds
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "streamlit_baseline.json")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright:
        for name, (source, selector) in PAGES.items():
            seconds = time_page(source, selector, args.tabs, playwright)
            results[name] = {"seconds": seconds, "median_s": statistics.median(seconds)}
            print(f"{name:18s} median {results[name]['median_s']:.2f} s  ({', '.join(f'{s:.2f}' for s in seconds)})")
    results["load_average"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
