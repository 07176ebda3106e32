"""Named plotly colour scales as explicit ``rgb()`` stops, so that every viewer draws the same colours.

Streamlit's chart element rewrites the hex colours ``#000001`` to ``#000040`` anywhere in a figure, whatever
its theme setting: it uses them as placeholders for its own theme colours. Inferno and Magma start at
``#000004``, so their black (zero attention) was drawn as ``#ab63fa`` without the theme and ``#ffabab`` with
it, and the page no longer matched the exported files. The same colours written as ``rgb(0,0,4)`` pass
through untouched; every figure of `analysis` takes its colour scales from here.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import plotly.colors

Colorscale = List[Tuple[float, str]]


@lru_cache(maxsize=None)
def _stops(name: str) -> Tuple[Tuple[float, str], ...]:
    scale = plotly.colors.get_colorscale(name)
    out = []
    for position, color in scale:
        if color.startswith("#"):
            red, green, blue = plotly.colors.hex_to_rgb(color)
            color = f"rgb({red},{green},{blue})"
        out.append((float(position), color.replace(" ", "")))
    return tuple(out)


def rgb_colorscale(name: str) -> Colorscale:
    """The plotly colour scale ``name`` (e.g. "Inferno", "RdBu_r", "cividis") as [(position, "rgb(r,g,b)")]."""
    return [tuple(stop) for stop in _stops(name)]
