"""Drawing a plotly figure on a page exactly as it is exported, and redrawing it in place (DESIGN section 6).

Every chart of the app goes through `show_chart`. Two things decide how:

- **The figure itself is drawn.** Streamlit's chart theme restyles figures in the browser (it replaced the
  first stops of Inferno, so zero attention looked lighter than 0.02), while the PNG/SVG/PDF/HTML exports are
  made from the figure. Our element hands plotly.js the figure JSON untouched; the figures carry their own
  white background, so they read the same in light and dark mode.
- **A changed figure is diffed into the existing plot.** `st.plotly_chart` includes the figure in its element
  id, so every layer, head or query change unmounts each chart and re-creates it with Plotly.newPlot (about
  0.2 s per chart on our CPU, ~1 s per redraw of the Compare page). Our element (`app/chart_component.js`, a
  Streamlit components-v2 element) keeps one plot node per key and calls Plotly.react on it.

plotly.js is served by Streamlit's component file route; nothing is downloaded at run time. Evaluating the
whole plotly.min.js (4.8 MB, every trace type) took 1.5 s of a 4 s first page in headless Chromium here, so
figures whose traces are all cartesian (every figure of the app: heatmap, scatter, image) get plotly.js's own
cartesian bundle (`app/plotly_js/`, 1.5 MB, 0.6 s), and only when it is the very version plotly.py writes
figures for; any other figure, or another plotly.js version, gets the installed package's full bundle. The
first run of every page asks the browser to load it at once (`preload_plotly`), before the charts arrive.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st
import streamlit.components.v1 as components_v1
from plotly.offline import get_plotlyjs_version
from streamlit import runtime

from refiner.hashing import sha256_hex

ChartClick = Dict[str, Any]
"""A click on a chart: ``curve_number`` (trace index), ``point_index`` and ``point_number`` as plotly.js gives
them (an int for scatter traces, [row, col] for heatmaps)."""

_FULL_BUNDLE = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
CARTESIAN_BUNDLE = Path(__file__).resolve().with_name("plotly_js") / "plotly-cartesian.min.js"
# The trace modules of plotly.js's cartesian bundle (its README and `plotly.js/lib/index-cartesian.js`).
CARTESIAN_TRACES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour",
                              "image", "pie", "scatter", "scatterternary", "violin"})
_chart_element = st.components.v2.component(
    "refiner_chart", js=(Path(__file__).with_name("chart_component.js")).read_text(encoding="utf-8"),
    # Not in a shadow root: plotly.js puts its hover and modebar styles into the document's head.
    isolate_styles=False)


def bundle_version(bundle: Path) -> Optional[str]:
    """The plotly.js version a bundle's licence header names (``"4.1.1"``), or None if it names none."""
    with bundle.open(encoding="utf-8") as handle:
        header = handle.read(400)
    found = re.search(r"plotly\.js\b[^\n]*\bv(\d+\.\d+\.\d+)", header)
    return found.group(1) if found else None


@lru_cache(maxsize=None)
def cartesian_bundle_matches() -> bool:
    """Whether the shipped cartesian bundle is the plotly.js version the installed plotly.py writes figures for."""
    return bundle_version(CARTESIAN_BUNDLE) == get_plotlyjs_version()


BUNDLE_ENV = "REFINER_PLOTLY_BUNDLE"
"""``full`` draws every chart with the full plotly.js (what `benchmarks/plotly_bundle.py` compares against);
unset or ``auto``: the cartesian bundle where it suffices."""


def plotly_bundle(fig: Optional[go.Figure] = None) -> Path:
    """The plotly.js file that draws ``fig`` (the cartesian bundle when it can; None: the app's usual figures)."""
    choice = os.environ.get(BUNDLE_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "full"):
        raise ValueError(f"{BUNDLE_ENV} must be 'auto' or 'full', got {choice!r}")
    types = set() if fig is None else {trace.type for trace in fig.data}
    cartesian = choice == "auto" and cartesian_bundle_matches() and types <= CARTESIAN_TRACES
    return CARTESIAN_BUNDLE if cartesian else _FULL_BUNDLE


def _bundle_url(bundle: Path) -> str:
    """``bundle``'s path relative to the app's root, registering its folder with this server if needed.

    Registration needs a running script (a session), and the component registry belongs to the server's
    runtime, so it is checked on every call rather than done once at import (the module is imported by the
    server's warm-up before any session exists). It is declared only when the registry lacks it:
    `declare_component` keeps its own frame in a reference cycle, one per call.
    """
    name = "plotly_js_" + ("cartesian" if bundle == CARTESIAN_BUNDLE else "full")
    registered = f"{__name__}.{name}"
    registry = runtime.get_instance().component_registry if runtime.exists() else None
    if registry is None or registry.get_component_path(registered) != str(bundle.parent):
        registered = components_v1.declare_component(name, path=str(bundle.parent)).name
    return f"component/{registered}/{bundle.name}"


def preload_plotly() -> None:
    """Have the browser load plotly.js now, while the rest of the script runs (an element that draws nothing).

    Called first thing in every run of the app, so the bundle is fetched and evaluated while the page's other
    elements arrive instead of after the first chart does.
    """
    _chart_element(data={"preload": True, "plotlyUrl": _bundle_url(plotly_bundle())}, key="plotly-preload")


def show_chart(fig: go.Figure, key: str, config: Optional[Mapping[str, Any]] = None,
               on_click: Optional[Callable[[ChartClick], None]] = None) -> None:
    """Draw ``fig`` as is, in place of this key's previous figure.

    Args:
        fig: the figure, drawn exactly as it is exported.
        key: the element's key; the same key on the next run redraws the same plot node in place.
        config: plotly.js config (e.g. ``{"displayModeBar": False}``); ``responsive`` is on by default, so a
            figure without a fixed width fills its column.
        on_click: called before the next run with the clicked point (`ChartClick`) when the user clicks a
            point of the chart. Like a widget callback, it may set ``st.session_state``.
    """
    spec = pio.to_json(fig, validate=False)
    data = {"figure": spec, "config": {"responsive": True, **(config or {})}, "revision": sha256_hex(spec)[:16],
            "clickable": on_click is not None, "plotlyUrl": _bundle_url(plotly_bundle(fig))}
    callbacks = {}
    if on_click is not None:
        def clicked() -> None:
            point = (st.session_state.get(key) or {}).get("click")
            if point:
                on_click(point)
        callbacks["on_click_change"] = clicked
    _chart_element(data=data, key=key, **callbacks)
