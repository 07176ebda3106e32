"""Drawing a plotly figure on a page exactly as it is exported (DESIGN section 6).

Streamlit's default chart theme restyles figures in the browser: it replaces the first stops of their colour
scales (Inferno's black became #ffabab in light mode, #ff2b2b in dark mode, so zero attention looked
lighter than 0.02), their fonts and backgrounds. The PNG/SVG/PDF/HTML exports are made from the figure
itself, so the page must draw the figure itself too: every chart of the app goes through `show_chart`,
which turns the theme off. The figures carry their own white background, so they read the same in light
and dark mode.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import streamlit as st


def show_chart(fig: go.Figure, key: str, **kwargs: Any) -> Any:
    """``st.plotly_chart`` with Streamlit's theme off; returns what it returns (the selection, if any).

    Args:
        fig: the figure, drawn as is.
        key: the element's key.
        **kwargs: other ``st.plotly_chart`` options (``on_select``, ``selection_mode``, ``config``).
    """
    return st.plotly_chart(fig, key=key, theme=None, **kwargs)
