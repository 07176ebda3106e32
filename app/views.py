"""Reading a click on a Compare overlay (the figures themselves are `analysis.view_figures`). No Streamlit here."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from analysis.view_figures import PATCH_TRACE


def clicked_patch(point: Mapping[str, Any], grid: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """The (row, col) patch of a click on an `attention_overlay` figure.

    Args:
        point: the clicked point as `app.charts.show_chart` reports it (keys ``curve_number`` and
            ``point_index``; ``point_number`` is read when ``point_index`` is missing). On the overlay's
            heatmap plotly gives the cell's index as [row, col].
        grid: (Gh, Gw) patch grid of the figure.

    Returns:
        (row, col), or None when the point is not on the patch heatmap (another trace) or is out of the grid.
    """
    if point.get("curve_number") != PATCH_TRACE:
        return None
    index = point.get("point_index", point.get("point_number"))
    if not isinstance(index, (list, tuple)) or len(index) != 2 or not all(isinstance(i, int) for i in index):
        return None
    row, col = index
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        return None
    return int(row), int(col)
