"""Export buttons for figures, tables, raw maps and the view bundle (DESIGN section 6).

The bytes come from `analysis.export` (the writer ``refiner analyze`` uses), so files from the app and the
CLI are the same. Files are produced only when a button is clicked (``st.download_button`` with a
callable), so drawing a page never pays for static image rendering, and clicking never re-runs the page.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis import export

from .bundle import BUNDLE_FORMATS, DEFAULT_BUNDLE_FORMATS, npz_bytes, table_rows

FIGURE_MIMES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf", "html": "text/html",
                "json": "application/json"}  # json: the plotly figure spec (`refiner analyze --formats json`)


@functools.lru_cache(maxsize=1)
def static_export_available() -> bool:
    """Whether kaleido has a browser for PNG/SVG/PDF (looked up once per process: it does not change)."""
    return export.browser_path() is not None


def _or_message(make: Callable[[], bytes], what: str) -> Callable[[], bytes]:
    """Wrap a deferred export so that a failure still reaches the user in words.

    A deferred download callable runs when the file is fetched, outside the page script, where an exception
    would only show as a broken download and nothing can be drawn; the downloaded file then holds the reason.
    The usual cause (no browser for static formats) is caught earlier: those buttons are disabled with the
    reason shown.
    """
    def run() -> bytes:
        try:
            return make()
        except (export.ExportError, ValueError) as error:
            return f"{what} failed: {error}\n".encode("utf-8")
    return run


def figure_exports(fig: go.Figure, name: str, key: str) -> None:
    """Download buttons for one figure in a popover: PNG (scale chosen there), SVG, PDF, HTML, JSON."""
    with st.popover("Export figure", icon=":material/download:"):
        scale = st.select_slider("PNG scale", options=[1, 2, 3, 4], value=2, key=f"{key}-scale")
        static = static_export_available()
        if not static:
            st.caption(export.NO_BROWSER_MESSAGE)
        for fmt, mime in FIGURE_MIMES.items():
            st.download_button(
                f"{fmt.upper()}" + (f" ({scale}x)" if fmt == "png" else ""),
                data=_or_message(lambda fmt=fmt, scale=scale: export.figure_bytes(fig, fmt, scale),
                                 f"{fmt.upper()} export"),
                file_name=f"{name}.{fmt}", mime=mime, key=f"{key}-{fmt}", on_click="ignore",
                disabled=fmt in export.STATIC_FORMATS and not static)


def table_exports(table: Union[pd.DataFrame, Sequence[Mapping[str, Any]]], name: str, key: str) -> None:
    """CSV and JSON download buttons for a table (`analysis.export.table_csv` / ``table_json``).

    Args:
        table: a DataFrame, or the rows themselves as ``analysis.export`` made them (exported unchanged, so
            the file equals the one ``refiner analyze`` writes from the same rows).
        name: file name without extension.
        key: widget key prefix.
    """
    rows = table_rows(table) if isinstance(table, pd.DataFrame) else list(table)
    left, right = st.columns(2)
    left.download_button("CSV", data=lambda: export.table_csv(rows).encode("utf-8"),
                         file_name=f"{name}.csv", mime="text/csv", key=f"{key}-csv", on_click="ignore")
    right.download_button("JSON", data=lambda: export.table_json(rows).encode("utf-8"),
                          file_name=f"{name}.json", mime="application/json", key=f"{key}-json", on_click="ignore")


def maps_export(arrays_of: Callable[[], Mapping[str, np.ndarray]], name: str, key: str,
                label: str = "Raw maps (NPZ)") -> None:
    """A download button for raw arrays as NPZ, fetched by ``arrays_of()`` when clicked.

    The session keeps the button's callable until its next run, so it must not hold a view's maps: they would stay
    alive after the map store dropped them, outside its budget (``arrays_of`` asks the store again).
    """
    st.download_button(label, data=lambda: npz_bytes(arrays_of()), file_name=f"{name}.npz",
                       mime="application/octet-stream", key=f"{key}-npz", on_click="ignore")


def bundle_export(make: Callable[[Sequence[str]], bytes], name: str, key: str) -> None:
    """One button for the ZIP bundle of the current view, with the figure formats to put in it.

    Args:
        make: builds the bundle for the chosen figure formats (`app.bundle.build_bundle` bound to the view); kept
            by the session until its next run, so it fetches the views when called rather than holding them
            (see `maps_export`).
        name: file name without extension.
        key: widget key prefix.
    """
    with st.popover("Download bundle (ZIP)", icon=":material/folder_zip:"):
        static = static_export_available()
        offered = [f for f in BUNDLE_FORMATS if static or f not in export.STATIC_FORMATS]
        formats = st.multiselect("Figure formats", offered, default=[f for f in DEFAULT_BUNDLE_FORMATS if f in offered],
                                 key=f"{key}-formats",
                                 help="PNG/SVG/PDF are rendered by a headless browser (seconds per figure); HTML "
                                      "is interactive and opens offline.")
        st.caption("Figures, tables (CSV/JSON), raw maps (NPZ) and manifest.json: model names, weight hashes, "
                   "image hash, preprocessing, settings, library versions.")
        st.download_button("Bundle (ZIP)", data=_or_message(lambda: make(tuple(formats)), "Bundle"),
                           file_name=f"{name}.zip", mime="application/zip", key=f"{key}-zip",
                           on_click="ignore", disabled=not formats, type="primary")
