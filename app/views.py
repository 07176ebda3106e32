"""Plotly figures of the Compare page: interactive image overlays, head grids, N x N matrices.

These views are specific to the interactive page (clickable patches, overlays on the model's own input);
the analysis figures of DESIGN section 5 come from `analysis.figures`. No Streamlit here.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

OVERLAY_PX = 340  # drawn size of the overlay figures; markers are sized from it so every patch is clickable
PATCH_TRACE = 2    # index of the clickable marker trace in `attention_overlay` (after the image and the heatmap)
SEQUENTIAL = "Inferno"
DIVERGING = "RdBu_r"


def _symmetric_range(values: np.ndarray) -> Tuple[float, float]:
    top = float(np.nanmax(np.abs(values))) if values.size else 1.0
    top = top if top > 0 else 1.0
    return -top, top


def attention_overlay(picture: np.ndarray, grid_map: np.ndarray, patch_size: Tuple[int, int], opacity: float,
                      title: str, query_patch: Optional[Tuple[int, int]] = None,
                      box: Optional[Sequence[int]] = None, diverging: bool = False) -> go.Figure:
    """The model's input picture with one attention map over its patches; every patch is clickable.

    Args:
        picture: (H, W, 3) uint8 image as the model saw it.
        grid_map: (Gh, Gw) attention of the query over the patches.
        patch_size: (ph, pw) pixels per patch.
        opacity: opacity of the attention layer in [0, 1].
        title: figure title.
        query_patch: (row, col) of the query patch to outline, None for a prefix (CLS) query.
        box: optional (x0, y0, x1, y1) ground-truth box to outline (exclusive ends).
        diverging: use a symmetric diverging scale (maps that can be negative, differences).

    Returns:
        A figure whose trace `PATCH_TRACE` has one clickable marker per patch, in row-major order (see
        `clicked_patch`); its ``customdata = [row, col, value]`` feeds the hover text.
    """
    gh, gw = grid_map.shape
    ph, pw = patch_size
    height, width = picture.shape[:2]
    fig = go.Figure(go.Image(z=picture, hoverinfo="skip"))
    zmin, zmax = _symmetric_range(grid_map) if diverging else (float(np.nanmin(grid_map)), float(np.nanmax(grid_map)))
    fig.add_trace(go.Heatmap(z=grid_map, x0=(pw - 1) / 2, dx=pw, y0=(ph - 1) / 2, dy=ph, opacity=opacity,
                             colorscale=DIVERGING if diverging else SEQUENTIAL, zmin=zmin, zmax=zmax,
                             hoverinfo="skip", colorbar={"thickness": 10, "len": 0.8}))
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    marker_px = max(4.0, 0.9 * OVERLAY_PX / max(gh, gw))
    fig.add_trace(go.Scatter(
        x=(cols.ravel() + 0.5) * pw - 0.5, y=(rows.ravel() + 0.5) * ph - 0.5, mode="markers",
        marker={"symbol": "square", "size": marker_px, "color": "white", "opacity": 0.01},
        customdata=np.stack([rows.ravel(), cols.ravel(), grid_map.ravel()], axis=1),
        hovertemplate="patch (%{customdata[0]}, %{customdata[1]})<br>attention %{customdata[2]:.4f}<extra></extra>",
        selected={"marker": {"opacity": 0.01}}, unselected={"marker": {"opacity": 0.01}}, showlegend=False))
    if query_patch is not None:
        r, c = query_patch
        fig.add_shape(type="rect", x0=c * pw - 0.5, x1=(c + 1) * pw - 0.5, y0=r * ph - 0.5, y1=(r + 1) * ph - 0.5,
                      line={"color": "#00e5ff", "width": 3})
    if box is not None:
        x0, y0, x1, y1 = box
        fig.add_shape(type="rect", x0=x0 - 0.5, x1=x1 - 0.5, y0=y0 - 0.5, y1=y1 - 0.5,
                      line={"color": "#7CFC00", "width": 2, "dash": "dot"})
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5])
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=OVERLAY_PX + 60,
                      margin={"l": 4, "r": 4, "t": 40, "b": 4}, clickmode="event+select", dragmode=False)
    return fig


def clicked_patch(point: Mapping[str, Any], grid: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """The (row, col) patch of a point from a Streamlit selection on an `attention_overlay` figure.

    The patch comes from the point's index, not its ``customdata``: plotly >= 6 sends numpy customdata as a
    typed array, which reaches Python as a dict {"0": row, "1": col, ...} rather than a list.

    Args:
        point: one entry of ``selection["points"]`` (keys ``curve_number`` and ``point_index``).
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


def heads_grid(grids: np.ndarray, titles: Sequence[str], title: str, diverging: bool = False,
               columns: int = 4) -> go.Figure:
    """Small multiples: (H, Gh, Gw) maps of every head of one layer, one shared colour scale."""
    count = grids.shape[0]
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(titles), horizontal_spacing=0.03,
                        vertical_spacing=0.08)
    zmin, zmax = _symmetric_range(grids) if diverging else (float(grids.min()), float(grids.max()))
    for index in range(count):
        fig.add_trace(go.Heatmap(z=grids[index], colorscale=DIVERGING if diverging else SEQUENTIAL, zmin=zmin,
                                 zmax=zmax, showscale=index == 0, colorbar={"thickness": 10}),
                      row=index // columns + 1, col=index % columns + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor="x")
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=title, height=60 + 190 * rows, margin={"l": 4, "r": 4, "t": 60, "b": 4})
    return fig


def token_matrix(matrix: np.ndarray, labels: List[str], title: str, diverging: bool = False) -> go.Figure:
    """The full N x N map (rows = queries, columns = keys) with token names on hover."""
    zmin, zmax = _symmetric_range(matrix) if diverging else (float(matrix.min()), float(matrix.max()))
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale=DIVERGING if diverging else SEQUENTIAL,
                               zmin=zmin, zmax=zmax,
                               hovertemplate="query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="query token", showticklabels=False)
    fig.update_xaxes(title="key token", showticklabels=False)
    fig.update_layout(title=title, height=460, margin={"l": 40, "r": 4, "t": 50, "b": 40})
    return fig


def top_k_bars(predictions: Sequence[Tuple[str, float]], title: str, truth: Optional[str] = None) -> go.Figure:
    """Horizontal bars of the top-k class probabilities (the true class, when known, in green)."""
    names = [name for name, _ in predictions][::-1]
    probs = [p for _, p in predictions][::-1]
    colors = ["#2ca02c" if truth is not None and name == truth else "#1f77b4" for name in names]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=colors,
                           text=[f"{p:.1%}" for p in probs], textposition="auto"))
    fig.update_xaxes(range=[0, 1], title="probability")
    fig.update_yaxes(type="category")
    fig.update_layout(title=title, height=230, margin={"l": 4, "r": 4, "t": 40, "b": 30})
    return fig
