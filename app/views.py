"""Reading a click on a Compare overlay (the figures themselves are `analysis.view_figures`). No Streamlit here."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from analysis.view_figures import PATCH_TRACE


def clicked_patch(point: Mapping[str, Any], grid: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """The (row, col) patch of a click on an `attention_overlay` figure.

    The patch comes from the point's index, not its ``customdata``: plotly >= 6 keeps numpy customdata as a
    typed array, which would reach Python as a dict {"0": row, "1": col, ...} rather than a list.

    Args:
        point: the clicked point as `app.charts.show_chart` reports it (keys ``curve_number`` and
            ``point_index``; ``point_number`` is read when ``point_index`` is missing).
        grid: (Gh, Gw) patch grid of the figure.

    Returns:
        (row, col), or None when the point is not a patch marker (another trace) or is out of the grid.
    """
    if point.get("curve_number") != PATCH_TRACE:
        return None
    index = point.get("point_index", point.get("point_number"))
    if not isinstance(index, int) or not 0 <= index < grid[0] * grid[1]:
        return None
    row, col = divmod(index, grid[1])
    return int(row), int(col)
