"""Export buttons for figures, tables and raw maps (DESIGN section 6: every figure, every table).

Files are produced only when a button is clicked (``st.download_button`` with a callable), so drawing a
page never pays for static image rendering, and clicking never re-runs the page.
"""

from __future__ import annotations

import io
import json
from typing import Callable, Dict, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

FIGURE_FORMATS: Dict[str, str] = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf",
                                  "html": "text/html"}


def figure_bytes(fig: go.Figure, fmt: str, scale: float = 2.0) -> bytes:
    """One figure as PNG (at ``scale`` times its drawn size), SVG, PDF or standalone interactive HTML."""
    if fmt == "html":
        return fig.to_html(include_plotlyjs=True, full_html=True).encode("utf-8")
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; choose from {', '.join(FIGURE_FORMATS)}")
    width = fig.layout.width or 900
    height = fig.layout.height or 500
    return fig.to_image(format=fmt, width=int(width), height=int(height), scale=scale if fmt == "png" else 1)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Arrays as a compressed .npz file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _deferred(make: Callable[[], bytes]) -> Callable[[], bytes]:
    return make


def figure_exports(fig: go.Figure, name: str, key: str) -> None:
    """A row of download buttons under a figure: PNG (scale chosen in the popover), SVG, PDF, HTML."""
    with st.popover("Export figure", icon=":material/download:"):
        scale = st.select_slider("PNG scale", options=[1, 2, 3, 4], value=2, key=f"{key}-scale")
        for fmt, mime in FIGURE_FORMATS.items():
            st.download_button(
                f"{fmt.upper()}" + (f" ({scale}x)" if fmt == "png" else ""),
                data=_deferred(lambda fmt=fmt, scale=scale: figure_bytes(fig, fmt, scale)),
                file_name=f"{name}.{fmt}", mime=mime, key=f"{key}-{fmt}", on_click="ignore")


def table_exports(table: pd.DataFrame, name: str, key: str) -> None:
    """CSV and JSON download buttons for a table."""
    left, right = st.columns(2)
    left.download_button("CSV", data=_deferred(lambda: table.to_csv(index=False).encode("utf-8")),
                         file_name=f"{name}.csv", mime="text/csv", key=f"{key}-csv", on_click="ignore")
    right.download_button("JSON", data=_deferred(lambda: json.dumps(
        json.loads(table.to_json(orient="records")), indent=2).encode("utf-8")),
                          file_name=f"{name}.json", mime="application/json", key=f"{key}-json", on_click="ignore")


def maps_export(arrays: Mapping[str, np.ndarray], name: str, key: str, label: str = "Raw maps (NPZ)") -> None:
    """A download button for raw arrays as NPZ."""
    st.download_button(label, data=_deferred(lambda: npz_bytes(arrays)), file_name=f"{name}.npz",
                       mime="application/octet-stream", key=f"{key}-npz", on_click="ignore")
