"""First page with plotly.js's cartesian bundle against the full bundle, side by side in headless Chromium.

Two servers run at once on the same checkpoints, one with ``REFINER_PLOTLY_BUNDLE=full`` (every chart drawn by
the full plotly.min.js, 4.8 MB) and one as shipped (`app.charts.plotly_bundle`: the 1.5 MB cartesian bundle).
New browser tabs alternate between them (interleaved, so a change of the machine's load hits both alike), and
each is timed from navigation until every chart of the page is drawn (`tests.e2e.browser_app.SETTLED`). Also
printed per tab: when the bundle finished downloading and when it had run (its ``onload``), in page time.

    .venv/bin/python benchmarks/plotly_bundle.py [--checkpoints DIR] [--repeats 7] [--pages / /analysis]

Writes benchmarks/results/plotly_bundle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.browser_app import CHROMIUM, CHROMIUM_ARGS, running_app, settle  # noqa: E402

# Records when a plotly.js bundle has run (window.Plotly appears), in page time; the bundle's download end
# comes from the resource timing.
MARK_PLOTLY = """
  window.__plotlyReady = null;
  new MutationObserver((_records, observer) => {
    if (window.Plotly) { window.__plotlyReady = performance.now(); observer.disconnect(); }
  }).observe(document, {subtree: true, childList: true, attributes: true});
"""
BUNDLE_TIMES = """() => {
  const entry = performance.getEntriesByType('resource').find(e => /plotly[^/]*\\.js$/.test(e.name));
  return {bundle: entry ? entry.name.split('/').pop() : null, downloaded_ms: entry ? entry.responseEnd : null,
          ready_ms: window.__plotlyReady};
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--repeats", type=int, default=7, help="new tabs per server and page")
    parser.add_argument("--pages", nargs="+", default=["/", "/analysis"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "plotly_bundle.json")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    variants = {"full": {"REFINER_PLOTLY_BUNDLE": "full"}, "cartesian": {"REFINER_PLOTLY_BUNDLE": "auto"}}
    times: Dict[str, Dict[str, List[dict]]] = {v: {page: [] for page in args.pages} for v in variants}
    load_start = os.getloadavg()
    with ExitStack() as stack, sync_playwright() as playwright:
        urls = {name: stack.enter_context(running_app(args.checkpoints, env=env))[0] for name, env in variants.items()}
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, url in urls.items():  # one untimed tab each: the servers' first script runs
            tab = browser.new_page()
            tab.goto(url + args.pages[0])
            settle(tab)
            tab.close()
        for repeat in range(args.repeats):
            for page_path in args.pages:
                for name in (variants if repeat % 2 == 0 else list(variants)[::-1]):
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    tab = context.new_page()
                    tab.add_init_script(MARK_PLOTLY)
                    began = time.perf_counter()
                    tab.goto(urls[name] + page_path)
                    settle(tab)
                    record = {"drawn_s": time.perf_counter() - began, **tab.evaluate(BUNDLE_TIMES)}
                    times[name][page_path].append(record)
                    context.close()
        browser.close()
    load_end = os.getloadavg()

    def med(values: List[float]) -> float:
        return float(statistics.median(values))

    summary = {}
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}; {args.repeats} tabs per cell")
    print(f"{'page':<10} {'bundle':<10} {'drawn s':>8} {'bundle run ms':>14} {'bundle file':>26}")
    for page_path in args.pages:
        for name in variants:
            rows = times[name][page_path]
            drawn = med([r["drawn_s"] for r in rows])
            run_ms = med([r["ready_ms"] - r["downloaded_ms"] for r in rows if r["ready_ms"] and r["downloaded_ms"]])
            summary.setdefault(page_path, {})[name] = {"drawn_s": drawn, "bundle_run_ms": run_ms,
                                                       "bundle": rows[0]["bundle"]}
            print(f"{page_path:<10} {name:<10} {drawn:>8.2f} {run_ms:>14.0f} {rows[0]['bundle']:>26}")
        ratio = summary[page_path]["cartesian"]["drawn_s"] / summary[page_path]["full"]["drawn_s"]
        summary[page_path]["cartesian_over_full"] = ratio
        print(f"{page_path:<10} cartesian / full drawn time: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "repeats": args.repeats,
                                    "summary": summary, "runs": times}, indent=2))
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
