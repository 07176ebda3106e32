"""The app at research scale in a real headless Chromium (issue 10 item 4, DESIGN section 9).

    python benchmarks/app_scale.py                  # ViT-B/16 (N = 197), Refiner-ViT-L at 448 (N = 785), DINOv2-L (N = 1370)
    python benchmarks/app_scale.py --quick          # fewer images, sessions and interactions
    python benchmarks/app_scale.py --models "random:vit_base_patch16_224" --map-budget-mb 4096

Random weights of the exact architectures as app sources (``random:NAME``; shapes are what cost time and memory,
nothing is downloaded), the same model in both slots. One fresh server per model (`tests.e2e.browser_app`), so
its memory is its own. Per model:

- ``forward_s``: the model's own plain forward on one image, measured in this process before the server starts
  (median of ``--forwards``; same threads and huge pages as the server, `app.serve.enable_huge_pages`);
  ``load_s``: building the model here.
- ``first_view_s``: a new image's Compare page until every chart is drawn (`tests.e2e.browser_app.settle`), the
  model already loaded on the server; ``first_view_minus_forward_s`` subtracts ``forward_s``: what the app adds
  to the model's own forward (capture, a float16 view's cast, figures, the browser's drawing).
  ``cold_view_s``: the very first view, which also loads the model on the server.
- ``layer_redraw_s``, ``head_redraw_s``, ``query_redraw_s``: a layer change (sidebar slider, keyboard), a head
  change (sidebar picker) and a click on a patch of the overlay, each until the URL says the new value and
  every chart is redrawn; medians over ``--interactions``.
- ``analysis_page_s``: from Compare to the Analysis page drawn (a large view's metrics: a float32 capture made
  for them, `analysis.compare_view.capture_metrics`); ``analysis_new_image_s``: the Analysis page of an image not
  captured yet, opened by its link (the metrics' capture + metrics + figures; no display view is made), and
  ``per_image_metrics_s`` = that minus ``forward_s``; ``analysis_other_settings_s``: a change of the row
  normalisation until drawn (the metrics of other settings: another float32 capture).
- ``peak_rss_gb``: the server's resident memory (its process and children, sampled every 0.25 s) while
  ``--sessions`` browser tabs each open ``--images`` images (a link per image, in step; half the tabs one image
  behind, so they read views the store keeps); ``limit_gb`` = the map budget + the server's memory with the
  model loaded and no view kept beyond the warm-up (``base_rss_gb``). ``hwm_gb``: the kernel's high-water mark of
  each server process, summed (an upper bound of the peak).

Goals on this CPU (issue 10): redraw <= 0.3 s at N = 197 and <= 0.5 s at N = 785; peak memory never above the
budget plus the models; per-image metrics of the N = 785 model under 10 s. The load average is recorded with
every model (the machine is shared). Results: benchmarks/results/app_scale.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.browser_app import CHROMIUM, CHROMIUM_ARGS, running_app, settle  # noqa: E402
from app.serve import enable_huge_pages  # noqa: E402

# The model's own forward is timed here under the server's allocator settings (huge pages), before torch loads.
enable_huge_pages()

RESULTS = REPO / "benchmarks" / "results"
RESEARCH_MODELS = ["random:vit_base_patch16_224", "random:refiner_vit_l?img_size=448",
                   "random:vit_large_patch14_dinov2"]
REDRAW_GOALS = {197: 0.3, 785: 0.5}   # tokens -> seconds (issue 10)
METRICS_GOAL_S = {785: 10.0}
VIEWPORT = {"width": 1400, "height": 1000}
GB = 2.0 ** 30

# The current value of a URL parameter (the sidebar writes the whole view to the URL in every script run).
PARAM = "(name) => new URLSearchParams(location.search).get(name)"


def median(values: List[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ---------------------------------------------------------------------------------------------- server memory
def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def server_pids() -> List[int]:
    """The app server started by `running_app` (``python -m refiner_cli app``, a child of this process) and
    everything below it (its Streamlit process)."""
    tree = _children()
    roots = [p for p in tree.get(os.getpid(), []) if "refiner_cli" in _cmdline(p) and " app" in _cmdline(p)]
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Sums the resident memory of the server's processes every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return sum(_status_kb(pid, "VmRSS") for pid in server_pids()) * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def high_water_bytes() -> int:
    return sum(_status_kb(pid, "VmHWM") for pid in server_pids()) * 1024


# ---------------------------------------------------------------------------------------------- in-process model
def measure_forward(source: str, repeats: int) -> Dict[str, Any]:
    """Build the model here, time its plain forward on one image (median after a warm-up), then free it."""
    import gc

    import numpy as np
    import torch
    from PIL import Image

    import refiner

    start = time.perf_counter()
    loaded = refiner.load_model(source, device="cpu")
    load_s = time.perf_counter() - start
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    x = loaded.info.transform(picture)[None]
    times = []
    with torch.no_grad():
        loaded.model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            loaded.model(x)
            times.append(time.perf_counter() - start)
    from refiner import capture_attention

    with torch.no_grad(), capture_attention(loaded.model) as rec:
        loaded.model(x)
    meta = rec.meta
    tokens = int(meta.num_prefix_tokens + meta.grid_size[0] * meta.grid_size[1])
    out = {"load_s": load_s, "forward_s": median(times), "forward_runs_s": times,
           "input": list(x.shape[1:]), "tokens": tokens, "depth": len(rec.effective),
           "heads": int(next(m for m in rec.effective if m is not None).shape[1]),
           "param_bytes": int(sum(p.numel() * p.element_size() for p in loaded.model.parameters())),
           "class": type(loaded.model).__name__}
    del loaded, rec
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------- browser helpers
def view_url(base: str, source: str, image: str, page: str = "") -> str:
    return f"{base}/{page}?" + urlencode({"a": source, "b": source, "img": image})


def wait_param(page: Any, name: str, before: Optional[str], timeout_ms: int = 600_000) -> None:
    """Until the URL's ``name`` differs from ``before`` (the script run of the change has started writing)."""
    page.wait_for_function(f"([n, b]) => ({PARAM})(n) !== b", arg=[name, before], timeout=timeout_ms,
                           polling="raf")


def timed(action: Callable[[], None], page: Any, param: str) -> float:
    """Seconds from ``action`` to the URL's ``param`` changed and every chart redrawn."""
    before = page.evaluate(f"() => ({PARAM})({json.dumps(param)})")
    start = time.perf_counter()
    action()
    wait_param(page, param, before)
    settle(page)
    return time.perf_counter() - start


def open_view(page: Any, url: str) -> float:
    start = time.perf_counter()
    page.goto(url, timeout=900_000, wait_until="commit")
    page.wait_for_function("document.querySelectorAll('div.refiner-chart[data-drawn]').length >= 2", timeout=900_000)
    settle_long(page)
    return time.perf_counter() - start


def settle_long(page: Any) -> None:
    """`settle`, repeated while a long script run (a capture of a large model) is still going: `settle` waits two
    minutes at most, a ViT-L capture on a loaded 2-core machine can take longer."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(10):
        try:
            settle(page)
            return
        except PlaywrightTimeout:
            continue
    settle(page)


def interactions(page: Any, count: int, heads: int) -> Dict[str, List[float]]:
    """Layer, head and query changes on the Compare page, each until every chart is redrawn."""
    slider = page.locator("[data-testid=stSidebar] [data-testid=stSlider] input").first
    layer_s, head_s, query_s = [], [], []
    for index in range(count):
        def press(key: str = "ArrowLeft" if index % 2 == 0 else "ArrowRight") -> None:
            slider.focus()
            page.keyboard.press(key)
        layer_s.append(timed(press, page, "layer"))
        page.wait_for_timeout(200)
    for index in range(count):
        name = f"head {(index * 5 + 1) % heads}" if index % 3 != 2 else "max over heads"

        def pick(name: str = name) -> None:
            page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]", has_text="Head").first.click()
            page.get_by_role("option", name=name, exact=True).click()
        head_s.append(timed(pick, page, "head"))
        page.wait_for_timeout(200)
    for index in range(count):
        box = page.locator("div.refiner-chart").first.locator("rect.nsewdrag").first.bounding_box()
        fx = 0.15 + 0.7 * ((index * 0.37) % 1.0)      # a different patch each time
        fy = 0.15 + 0.7 * ((index * 0.61 + 0.3) % 1.0)
        x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
        page.mouse.move(x, y)
        query_s.append(timed(lambda: page.mouse.click(x, y), page, "q"))
        page.wait_for_timeout(200)
    return {"layer_redraw_s": layer_s, "head_redraw_s": head_s, "query_redraw_s": query_s}


def analysis_page(page: Any) -> float:
    """From the current page to the Analysis page drawn (its title, then every chart)."""
    start = time.perf_counter()
    page.get_by_role("link", name="Analysis").click()
    page.get_by_text("Analysis of the current image").wait_for(timeout=900_000)
    page.wait_for_function("document.querySelectorAll('div.refiner-chart[data-drawn]').length >= 3", timeout=900_000)
    settle_long(page)
    return time.perf_counter() - start


def other_settings(page: Any) -> float:
    """Change the Analysis page's row normalisation to "none" until every chart is redrawn."""
    page.locator("[data-testid=stExpander] summary", has_text="Settings").first.click()
    select = page.locator("[data-testid=stMain] [data-testid=stSelectbox]", has_text="Normalise rows").first
    select.wait_for(state="visible", timeout=60_000)
    start = time.perf_counter()
    for attempt in range(3):  # the open list can be redrawn under the pointer (a late rerender): open it again
        try:
            select.click()
            page.get_by_role("option").filter(has_text=re.compile(r"^\s*none\s*$")).first.click(timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; the third failure is raised
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    # No URL parameter for this option: wait for the run to start (a stale element), then for the page to settle.
    try:
        page.wait_for_function("document.querySelector('[data-stale=true]') || document.querySelector("
                               "'[data-testid=stApp][data-test-script-state=running]')", timeout=20_000,
                               polling="raf")
    except Exception:  # noqa: BLE001 - a run already over before the first poll is fine
        pass
    settle_long(page)
    return time.perf_counter() - start


def browse(browser: Any, base: str, source: str, images: List[str], sessions: int,
           sampler: MemorySampler) -> Dict[str, Any]:
    """``sessions`` tabs each open every image in step (half of them one image behind); returns timings."""
    pages = [browser.new_page(viewport=VIEWPORT) for _ in range(sessions)]
    steps = []
    try:
        for step in range(len(images) + 1):
            start = time.perf_counter()
            for index, page in enumerate(pages):
                position = min(max(step - index % 2, 0), len(images) - 1)
                page.goto(view_url(base, source, images[position]), timeout=900_000, wait_until="commit")
            for page in pages:
                page.wait_for_function("document.querySelectorAll('div.refiner-chart[data-drawn]').length >= 2", timeout=900_000)
                settle_long(page)
            steps.append(time.perf_counter() - start)
            print(f"    browse step {step + 1}/{len(images) + 1}: {steps[-1]:.1f} s, server RSS now "
                  f"{sampler.now() / GB:.2f} GB, peak {sampler.peak / GB:.2f} GB", flush=True)
    finally:
        for page in pages:
            page.close()
    return {"step_s": steps, "sessions": sessions, "images": len(images)}


def screenshots(browser: Any, base: str, source: str, image: str, folder: Path) -> Dict[str, str]:
    """Each page (Models, Compare, Analysis, Dataset) with the model in both slots, as full-page screenshots
    (after the measurements: nothing here is timed). Returns page -> file, or the error the page showed."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = source.replace("random:", "").replace("?img_size=", "-").replace("/", "_")
    page = browser.new_page(viewport=VIEWPORT)
    out: Dict[str, str] = {}
    try:
        for name, path in (("models", "models"), ("compare", ""), ("analysis", "analysis"), ("dataset", "dataset")):
            page.goto(view_url(base, source, image, path), timeout=900_000, wait_until="commit")
            page.wait_for_selector("[data-testid=stSidebar] [data-testid=stSelectbox]", timeout=900_000)
            try:
                settle_long(page) if name in ("compare", "analysis") else page.wait_for_function(
                    "() => document.querySelector('[data-testid=stApp]')?.getAttribute("
                    "'data-test-script-state') === 'notRunning'", timeout=600_000, polling=500)
            except Exception as error:  # noqa: BLE001 - the screenshot shows what the page has
                out[f"{name}_wait_error"] = f"{type(error).__name__}: {str(error)[:200]}"
            file = folder / f"{stem}-{name}.png"
            page.screenshot(path=str(file), full_page=True)
            out[name] = str(file)
            errors = page.locator("[data-testid=stException], [data-testid=stAlertContentError]").all_inner_texts()
            if errors:
                out[f"{name}_errors"] = " | ".join(e[:300] for e in errors)
    finally:
        page.close()
    return out


def measure_model(source: str, args: argparse.Namespace, checkpoints: Path, playwright: Any) -> Dict[str, Any]:
    print(f"{source}: building it here for the plain forward...", flush=True)
    model = measure_forward(source, args.forwards)
    print(f"  N = {model['tokens']}, input {model['input']}, forward {model['forward_s']:.2f} s, "
          f"load {model['load_s']:.1f} s", flush=True)
    images = [f"digit:{i}" for i in range(args.images)]
    fresh = [f"digit:{900 + i}" for i in range(3)]  # not among the browsed ones: never kept before
    result: Dict[str, Any] = {"source": source, **model, "loadavg_start": os.getloadavg()}
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        with running_app(checkpoints) as (base, _ready), MemorySampler() as sampler:
            result["idle_rss_gb"] = sampler.now() / GB
            page = browser.new_page(viewport=VIEWPORT)
            result["cold_view_s"] = open_view(page, view_url(base, source, fresh[0]))
            result["base_rss_gb"] = sampler.now() / GB
            firsts = [open_view(page, view_url(base, source, image)) for image in fresh[1:1 + args.new_images]]
            result["first_view_runs_s"] = firsts
            result["first_view_s"] = median(firsts)
            result["first_view_minus_forward_s"] = result["first_view_s"] - model["forward_s"]
            print(f"  first view {result['first_view_s']:.1f} s (cold, with loading: {result['cold_view_s']:.1f} s)",
                  flush=True)
            result.update(interactions(page, args.interactions, model["heads"]))
            print("  redraw medians: " + ", ".join(f"{k} {median(result[k]):.3f} s" for k in
                                                   ("layer_redraw_s", "head_redraw_s", "query_redraw_s")), flush=True)
            result["analysis_page_s"] = analysis_page(page)
            page.goto(view_url(base, source, fresh[1 + args.new_images] if args.new_images < 2 else "digit:950",
                               "analysis"), timeout=900_000, wait_until="commit")
            start = time.perf_counter()
            page.get_by_text("Analysis of the current image").wait_for(timeout=900_000)
            page.wait_for_function("document.querySelectorAll('div.refiner-chart[data-drawn]').length >= 3", timeout=900_000)
            settle_long(page)
            result["analysis_new_image_s"] = time.perf_counter() - start
            result["per_image_metrics_s"] = result["analysis_new_image_s"] - model["forward_s"]
            result["analysis_other_settings_s"] = other_settings(page)
            print(f"  Analysis page {result['analysis_page_s']:.2f} s (kept view), new image "
                  f"{result['analysis_new_image_s']:.1f} s, other settings {result['analysis_other_settings_s']:.1f} s",
                  flush=True)
            page.close()
            result["browse"] = browse(browser, base, source, images, args.sessions, sampler)
            result["peak_rss_gb"] = sampler.peak / GB
            result["hwm_gb"] = high_water_bytes() / GB
            if args.screenshots is not None:
                result["screenshots"] = screenshots(browser, base, source, images[-1], args.screenshots)
    finally:
        browser.close()
    budget = float(os.environ["REFINER_APP_MAP_BUDGET_MB"]) * 2**20 / GB
    result["map_budget_gb"] = budget
    result["limit_gb"] = budget + result["idle_rss_gb"] + model["param_bytes"] / GB
    result["within_limit"] = bool(result["peak_rss_gb"] <= result["limit_gb"])
    result["loadavg_end"] = os.getloadavg()
    for key in ("layer_redraw_s", "head_redraw_s", "query_redraw_s"):
        result[key.replace("_s", "_median_s")] = median(result[key])
    goal = REDRAW_GOALS.get(model["tokens"])
    if goal is not None:
        result["redraw_goal_s"] = goal
        result["redraw_goal_met"] = all(result[k.replace("_s", "_median_s")] <= goal
                                        for k in ("layer_redraw_s", "head_redraw_s", "query_redraw_s"))
    if model["tokens"] in METRICS_GOAL_S:
        result["metrics_goal_s"] = METRICS_GOAL_S[model["tokens"]]
        result["metrics_goal_met"] = bool(result["per_image_metrics_s"] <= METRICS_GOAL_S[model["tokens"]])
    return result


def table(results: List[Dict[str, Any]]) -> str:
    rows = [("model", "N", "fwd s", "view-fwd s", "layer s", "head s", "query s", "metrics s", "analysis s",
             "peak GB", "limit GB", "load")]
    for r in results:
        if "error" in r:
            rows.append((r["source"], "-", "error: " + r["error"][:60]) + ("",) * 9)
            continue
        rows.append((r["source"].replace("random:", ""), str(r["tokens"]), f"{r['forward_s']:.2f}",
                     f"{r['first_view_minus_forward_s']:.2f}", f"{r['layer_redraw_median_s']:.3f}",
                     f"{r['head_redraw_median_s']:.3f}", f"{r['query_redraw_median_s']:.3f}",
                     f"{r['per_image_metrics_s']:.2f}", f"{r['analysis_page_s']:.2f}", f"{r['peak_rss_gb']:.2f}",
                     f"{r['limit_gb']:.2f}", " ".join(f"{v:.1f}" for v in r["loadavg_end"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="app sources (default: the three research models)")
    parser.add_argument("--quick", action="store_true", help="3 images, 2 sessions, 3 interactions, 1 new image")
    parser.add_argument("--images", type=int, default=None, help="images each session opens (default 20)")
    parser.add_argument("--sessions", type=int, default=None, help="browser sessions browsing at once (default 8)")
    parser.add_argument("--interactions", type=int, default=None, help="layer, head and query changes (default 5)")
    parser.add_argument("--new-images", type=int, default=None, help="new-image first views timed (default 2)")
    parser.add_argument("--forwards", type=int, default=3, help="plain forwards timed per model")
    parser.add_argument("--map-budget-mb", type=float, default=None,
                        help="the server's map budget (default: the app's own default for this machine)")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="also save a screenshot of each page per model in this folder (after the timings)")
    parser.add_argument("--out", type=Path, default=RESULTS / "app_scale.json")
    args = parser.parse_args(argv)
    quick = {"images": 3, "sessions": 2, "interactions": 3, "new_images": 1}
    full = {"images": 20, "sessions": 8, "interactions": 5, "new_images": 2}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.new_images = min(max(args.new_images, 1), 2)
    if not os.path.exists(CHROMIUM):
        print(f"app_scale: {CHROMIUM} not found; install chromium (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    from app.map_store import default_budget_bytes

    budget_mb = args.map_budget_mb if args.map_budget_mb is not None else default_budget_bytes() / 2**20
    os.environ["REFINER_APP_MAP_BUDGET_MB"] = str(budget_mb)  # running_app passes the environment on
    shipped = REPO / "checkpoints"
    models = args.models or RESEARCH_MODELS
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; map budget {budget_mb:.0f} MB",
          flush=True)
    results: List[Dict[str, Any]] = []
    out = {"benchmark": "app_scale", "quick": args.quick, "images": args.images, "sessions": args.sessions,
           "interactions": args.interactions, "map_budget_mb": budget_mb, "results": results,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "loadavg_start": os.getloadavg()},
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        for source in models:
            try:
                results.append(measure_model(source, args, shipped, playwright))
            except Exception as error:  # noqa: BLE001 - record it and go on with the next model
                results.append({"source": source, "error": f"{type(error).__name__}: {error}"})
                print(f"  {source} failed: {results[-1]['error']}", flush=True)
            out["machine"]["loadavg_end"] = os.getloadavg()
            args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")  # what finished so far
    print(table(results))
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
