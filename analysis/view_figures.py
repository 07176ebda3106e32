"""Plotly figures of the Compare view: image overlays, head grids, N x N matrices, top-k bars.

The Compare page draws these and ``refiner analyze --manifest`` re-makes them from a view bundle
(`analysis.compare_view.compare_figures`), so the app and the CLI write the same files. Every figure carries
its own white style (template ``simple_white``), colour bars with titles, and is drawn by the app without
Streamlit's theme, so the screen shows what is exported, in light and in dark mode. No Streamlit here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .colorscales import rgb_colorscale

OVERLAY_PX = 340  # drawn size of the overlay figures; markers are sized from it so every patch is clickable
PATCH_TRACE = 2    # index of the clickable marker trace in `attention_overlay` (after the image and the heatmap)
SEQUENTIAL = rgb_colorscale("Inferno")   # black = 0; rgb() stops: see `analysis.colorscales`
DIVERGING = rgb_colorscale("RdBu_r")
TEMPLATE = "simple_white"
FONT = {"family": "Arial, Helvetica, sans-serif", "color": "#222222"}
QUERY_COLOR = "#00e5ff"   # outline of the query patch
BOX_COLOR = "#7CFC00"     # dotted ground-truth box of dataset canvases
TRUTH_COLOR = "#2ca02c"   # bar of the true class
BAR_COLOR = "#1f77b4"

ZRange = Tuple[float, float]


def symmetric_range(values: np.ndarray) -> ZRange:
    """(-m, m) with m the largest magnitude of ``values`` (1 when all are 0 or there are none)."""
    values = np.asarray(values)
    top = float(np.nanmax(np.abs(values))) if values.size else 1.0
    top = top if top > 0 else 1.0
    return -top, top


def color_range(values: np.ndarray, diverging: bool) -> ZRange:
    """The colour range of one map: symmetric around 0 when ``diverging``, else its min and max."""
    if diverging:
        return symmetric_range(values)
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    return (low, high) if high > low else (low, low + 1e-9)


def _style(fig: go.Figure) -> None:
    fig.update_layout(template=TEMPLATE, font=FONT, paper_bgcolor="white", plot_bgcolor="white")


def attention_overlay(picture: np.ndarray, grid_map: np.ndarray, patch_size: Tuple[int, int], opacity: float,
                      title: str, query_patch: Optional[Tuple[int, int]] = None,
                      box: Optional[Sequence[float]] = None, diverging: bool = False,
                      zrange: Optional[ZRange] = None, colorbar_title: str = "attention weight") -> go.Figure:
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
        zrange: colour range (default: this map's own, `color_range`); a shared range puts two models on
            one scale.
        colorbar_title: title of the colour bar (what the colour measures).

    Returns:
        A figure whose trace `PATCH_TRACE` has one clickable marker per patch, in row-major order; its
        ``customdata = [row, col, value]`` feeds the hover text.
    """
    gh, gw = grid_map.shape
    ph, pw = patch_size
    height, width = picture.shape[:2]
    fig = go.Figure(go.Image(z=picture, hoverinfo="skip"))
    zmin, zmax = zrange if zrange is not None else color_range(grid_map, diverging)
    fig.add_trace(go.Heatmap(z=grid_map, x0=(pw - 1) / 2, dx=pw, y0=(ph - 1) / 2, dy=ph, opacity=opacity,
                             colorscale=DIVERGING if diverging else SEQUENTIAL, zmin=zmin, zmax=zmax,
                             hoverinfo="skip",
                             colorbar={"thickness": 10, "len": 0.8, "title": {"text": colorbar_title,
                                                                              "side": "right"}}))
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
                      line={"color": QUERY_COLOR, "width": 3})
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        fig.add_shape(type="rect", x0=x0 - 0.5, x1=x1 - 0.5, y0=y0 - 0.5, y1=y1 - 0.5,
                      line={"color": BOX_COLOR, "width": 2, "dash": "dot"})
    _style(fig)
    fig.update_xaxes(visible=False, range=[-0.5, width - 0.5])
    fig.update_yaxes(visible=False, range=[height - 0.5, -0.5], scaleanchor="x")
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=OVERLAY_PX + 60,
                      margin={"l": 4, "r": 4, "t": 40, "b": 4}, clickmode="event+select", dragmode=False)
    return fig


def heads_grid(grids: np.ndarray, titles: Sequence[str], title: str, diverging: Union[bool, Sequence[bool]] = False,
               columns: int = 4, shared_scale: bool = True,
               colorbar_title: Union[str, Sequence[str]] = "attention weight") -> go.Figure:
    """Small multiples of (Gh, Gw) maps, every panel with square cells.

    Args:
        grids: (P, Gh, Gw) panels (e.g. every head of a layer).
        titles: P panel titles.
        title: figure title.
        diverging: one flag for all panels, or one per panel (own scale only).
        columns: panels per row.
        shared_scale: one colour scale for all panels (equal colours mean equal values; heads of a layer) or
            one scale and colour bar per panel (panels of different kinds, e.g. softmax vs effective).
        colorbar_title: one title, or one per panel when the scales are not shared.

    Returns:
        The figure; panel i uses ``coloraxis`` (shared) or ``coloraxis{i + 1}`` (own scales).
    """
    grids = np.asarray(grids)
    count = grids.shape[0]
    flags = [bool(diverging)] * count if isinstance(diverging, bool) else [bool(d) for d in diverging]
    bar_titles = [colorbar_title] * count if isinstance(colorbar_title, str) else list(colorbar_title)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    # Own colour bars sit right of their panel: leave them room between the columns.
    spacing = 0.03 if shared_scale else 0.12
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(titles), horizontal_spacing=spacing,
                        vertical_spacing=0.1 if rows > 1 else 0.0)
    layout = {}
    if shared_scale:
        zmin, zmax = color_range(grids, flags[0])
        layout["coloraxis"] = {"colorscale": DIVERGING if flags[0] else SEQUENTIAL, "cmin": zmin, "cmax": zmax,
                               "colorbar": {"thickness": 10, "title": {"text": bar_titles[0], "side": "right"}}}
    for index in range(count):
        row, col = index // columns + 1, index % columns + 1
        axis = "coloraxis" if shared_scale else f"coloraxis{index + 1}"
        fig.add_trace(go.Heatmap(z=grids[index], coloraxis=axis,
                                 hovertemplate="row %{y}, col %{x}<br>%{z:.4f}<extra>" + str(titles[index]) +
                                               "</extra>"), row=row, col=col)
        suffix = "" if index == 0 else str(index + 1)
        # Each panel anchors its own y axis to its own x axis (anchoring all to "x" made only the first square).
        fig.update_yaxes(autorange="reversed", showticklabels=False, ticks="", showline=False,
                         scaleanchor=f"x{suffix}", constrain="domain", row=row, col=col)
        fig.update_xaxes(showticklabels=False, ticks="", showline=False, constrain="domain", row=row, col=col)
        if not shared_scale:
            zmin, zmax = color_range(grids[index], flags[index])
            x_domain = fig.layout[f"xaxis{suffix}"].domain
            y_domain = fig.layout[f"yaxis{suffix}"].domain
            layout[axis] = {"colorscale": DIVERGING if flags[index] else SEQUENTIAL, "cmin": zmin, "cmax": zmax,
                            "colorbar": {"thickness": 10, "x": x_domain[1] + 0.005, "xanchor": "left",
                                         "y": (y_domain[0] + y_domain[1]) / 2, "len": y_domain[1] - y_domain[0],
                                         "title": {"text": bar_titles[index], "side": "right"}}}
    _style(fig)
    fig.update_layout(title=title, height=80 + 220 * rows, margin={"l": 4, "r": 60, "t": 70, "b": 4}, **layout)
    return fig


def token_ticks(labels: Sequence[str], num_prefix_tokens: int, grid: Tuple[int, int], most: int = 16
                ) -> Tuple[List[int], List[str]]:
    """Tick positions and texts for an N x N token axis: every prefix token and the first patch of evenly
    spaced patch rows ("r3" = patch (3, 0)), at most about ``most`` ticks.

    Args:
        labels: N token names.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        most: rough upper bound on the number of ticks.
    """
    gh, gw = grid
    step = max(1, int(np.ceil(gh / max(most - num_prefix_tokens, 1))))
    positions = list(range(num_prefix_tokens)) + [num_prefix_tokens + r * gw for r in range(0, gh, step)]
    texts = [labels[p] for p in positions[:num_prefix_tokens]] + [f"r{r}" for r in range(0, gh, step)]
    return positions, texts


# Above this many tokens an N x N map has more cells than a figure has pixels (and 785^2 cells are 4 MB of JSON per
# redraw, 1370^2 are 13 MB): it is drawn as means of square token blocks, at most this many per side.
MAX_MATRIX_CELLS = 256


def token_blocks(matrix: np.ndarray, most: int = MAX_MATRIX_CELLS) -> Tuple[np.ndarray, np.ndarray, int]:
    """An (N, N) map as means of b x b token blocks, b = ceil(N / most) (b = 1: the map itself).

    Returns:
        (cells (ceil(N/b), ceil(N/b)), block centres in token units (ceil(N/b),), b); a last, partial block
        is the mean of the tokens it has.
    """
    tokens = matrix.shape[0]
    block = max(1, -(-tokens // most))
    if block == 1:
        return matrix, np.arange(tokens, dtype=float), 1
    count = -(-tokens // block)
    padded = np.full((count * block, count * block), np.nan, dtype=np.float64)
    padded[:tokens, :tokens] = matrix
    cells = np.nanmean(padded.reshape(count, block, count, block), axis=(1, 3))
    starts = np.arange(count) * block
    centres = (starts + np.minimum(starts + block, tokens) - 1) / 2.0
    return cells, centres, block


def token_matrix(matrix: np.ndarray, labels: List[str], title: str, diverging: bool = False,
                 num_prefix_tokens: int = 0, grid: Optional[Tuple[int, int]] = None,
                 colorbar_title: str = "attention weight") -> go.Figure:
    """The full N x N map (rows = queries, columns = keys) with token tick labels and names on hover; above
    `MAX_MATRIX_CELLS` tokens as means of square token blocks (`token_blocks`), said in the title.

    Args:
        matrix: (N, N).
        labels: N token names ("CLS", "patch (r, c)").
        title: figure title.
        diverging: symmetric diverging scale.
        num_prefix_tokens, grid: token layout for the ticks (prefix tokens, then the first patch of patch rows
            labelled "r<row>"); without ``grid`` every token is a tick.
        colorbar_title: colour bar title.
    """
    zmin, zmax = color_range(matrix, diverging)
    tokens = np.arange(matrix.shape[0])
    cells, centres, block = token_blocks(matrix)
    hover = ("query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>" if block == 1 else
             f"queries %{{y}} +- {block / 2:g}<br>keys %{{x}} +- {block / 2:g}<br>mean %{{z:.4f}}<extra></extra>")
    fig = go.Figure(go.Heatmap(z=cells, x=centres, y=centres, colorscale=DIVERGING if diverging else SEQUENTIAL,
                               zmin=zmin, zmax=zmax,
                               colorbar={"thickness": 10, "title": {"text": colorbar_title, "side": "right"}},
                               hovertemplate=hover))
    if block > 1:
        title = f"{title} (means of {block} x {block} token blocks)"
    positions, texts = (token_ticks(labels, num_prefix_tokens, grid) if grid is not None
                        else (list(tokens), list(labels)))
    _style(fig)
    fig.update_yaxes(autorange="reversed", title="query token", tickmode="array", tickvals=positions, ticktext=texts,
                     scaleanchor="x", constrain="domain", showline=False, ticks="outside")
    fig.update_xaxes(title="key token", tickmode="array", tickvals=positions, ticktext=texts, tickangle=-90,
                     constrain="domain", showline=False, ticks="outside")
    fig.update_layout(title=title, height=500, margin={"l": 60, "r": 4, "t": 50, "b": 60})
    return fig


def top_k_bars(predictions: Sequence[Tuple[str, float]], title: str, truth: Optional[str] = None) -> go.Figure:
    """Horizontal bars of the top-k class probabilities (the true class, when known, in green)."""
    names = [name for name, _ in predictions][::-1]
    probs = [p for _, p in predictions][::-1]
    colors = [TRUTH_COLOR if truth is not None and name == truth else BAR_COLOR for name in names]
    fig = go.Figure(go.Bar(x=probs, y=names, orientation="h", marker_color=colors,
                           text=[f"{p:.1%}" for p in probs], textposition="auto"))
    _style(fig)
    fig.update_xaxes(range=[0, 1], title="probability")
    fig.update_yaxes(type="category", title="class")
    fig.update_layout(title=title, height=230, margin={"l": 4, "r": 4, "t": 40, "b": 30})
    return fig
