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

plotly.js comes from the installed plotly package (`plotly/package_data/plotly.min.js`, the version plotly.py
writes figures for), served by Streamlit's component file route: nothing is downloaded and nothing is copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import plotly
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st
import streamlit.components.v1 as components_v1

from refiner.hashing import sha256_hex

ChartClick = Dict[str, Any]
"""A click on a chart: ``curve_number`` (trace index), ``point_index`` and ``point_number`` as plotly.js gives
them (an int for scatter traces, [row, col] for heatmaps)."""

_PLOTLY_DIR = Path(plotly.__file__).resolve().parent / "package_data"
_ASSET_NAME = "plotly_js"
_chart_element = st.components.v2.component(
    "refiner_chart", js=(Path(__file__).with_name("chart_component.js")).read_text(encoding="utf-8"),
    # Not in a shadow root: plotly.js puts its hover and modebar styles into the document's head.
    isolate_styles=False)


def _plotly_url() -> str:
    """plotly.min.js's path relative to the app's root, registering its folder with this server if needed.

    Registration needs a running script (a session), and the component registry belongs to the server's
    runtime, so it is checked on every call rather than once at import (the module is imported by the server's
    warm-up before any session exists).
    """
    asset = components_v1.declare_component(_ASSET_NAME, path=str(_PLOTLY_DIR))
    return f"component/{asset.name}/plotly.min.js"


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
            "clickable": on_click is not None, "plotlyUrl": _plotly_url()}
    callbacks = {}
    if on_click is not None:
        def clicked() -> None:
            point = (st.session_state.get(key) or {}).get("click")
            if point:
                on_click(point)
        callbacks["on_click_change"] = clicked
    _chart_element(data=data, key=key, **callbacks)
