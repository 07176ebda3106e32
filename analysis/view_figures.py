"""Plotly figures of the Compare view: image overlays, head grids, N x N matrices, top-k bars.

The Compare page draws these and ``refiner analyze --manifest`` re-makes them from a view bundle
(`analysis.compare_view.compare_figures`), so the app and the CLI write the same files. Every figure carries
its own white style (template ``simple_white``), colour bars with titles, and is drawn by the app without
Streamlit's theme, so the screen shows what is exported, in light and in dark mode. No Streamlit here.

The figures are written as plotly's own JSON (the canonical form `plotly.graph_objects.Figure.to_plotly_json`
gives) and wrapped without plotly.py's per-property validation (`figure_from_spec`): building them through
plotly.py's setters validated and deep-copied the whole template for every figure, 20-60 ms each, which was
most of a layer change's page run. The tests check that each builder's figure equals what plotly.py's
validation makes of it, so nothing plotly would have changed is skipped.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from .colorscales import rgb_colorscale

OVERLAY_PX = 340  # drawn height of the overlay figures' plot area
PATCH_TRACE = 1    # index of the clickable heatmap in `attention_overlay` (after the picture)
SEQUENTIAL = rgb_colorscale("Inferno")   # black = 0; rgb() stops: see `analysis.colorscales`
DIVERGING = rgb_colorscale("RdBu_r")
TEMPLATE = "simple_white"
FONT = {"family": "Arial, Helvetica, sans-serif", "color": "#222222"}
QUERY_COLOR = "#00e5ff"   # outline of the query patch
BOX_COLOR = "#7CFC00"     # dotted ground-truth box of dataset canvases
TRUTH_COLOR = "#2ca02c"   # bar of the true class
BAR_COLOR = "#1f77b4"
SUBPLOT_TITLE_SIZE = 16   # plotly's make_subplots size for panel titles

ZRange = Tuple[float, float]
FigureSpec = Dict[str, Any]
"""A figure as plotly JSON: ``{"data": [trace dicts], "layout": {...}}`` with numpy arrays for array values."""


TRACE_TYPES = ("bar", "heatmap", "image")  # what this module draws


@functools.lru_cache(maxsize=None)
def _template_json() -> Dict[str, Any]:
    """`TEMPLATE` as plotly JSON, made once per process (the registry's template, already validated), with the
    trace defaults of `TRACE_TYPES` only: the other 40-odd trace types' defaults were two thirds of every
    figure's template, copied and sent with each redraw for nothing."""
    template = pio.templates[TEMPLATE].to_plotly_json()
    template["data"] = {kind: defaults for kind, defaults in template["data"].items() if kind in TRACE_TYPES}
    return template


def house_layout(**layout: Any) -> Dict[str, Any]:
    """A layout in the house style (white template, font, white background) with ``layout`` on top.

    The template is the one plotly.py would put there, one dict shared by all figures: plotly copies it into
    a figure's own objects when that figure's template is read or changed, so changing one figure never
    changes another (tested).
    """
    return {"template": _template_json(), "font": dict(FONT), "paper_bgcolor": "white",
            "plot_bgcolor": "white", **layout}


def figure_from_spec(spec: FigureSpec) -> go.Figure:
    """``spec`` as a plotly figure, taken as it is (``_validate=False``: no per-property checks or copies).

    Only for specs in plotly's canonical JSON form, which is what this module's builders write (tested
    against plotly.py's validation); anything else belongs in ``go.Figure(spec)``.
    """
    return go.Figure(spec, _validate=False)


def _floats(values: np.ndarray) -> np.ndarray:
    """Array data as float32 or float64 (plotly.js has no float16 arrays; float16 display views give them)."""
    values = np.asarray(values)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float32)


def png_data_uri(picture: np.ndarray) -> str:
    """An (H, W, 3) uint8 picture as a PNG ``data:`` URI (what a plotly image trace draws without decoding
    pixels in the browser; a ``z`` array of pixels costs plotly.js a canvas pass on every redraw).

    The picture of a view is the same on every layer, head or query change, and encoding it costs 7-35 ms at
    224-518 px: the last few are kept, keyed by their pixels.
    """
    picture = np.ascontiguousarray(picture, dtype=np.uint8)
    return _encoded_png(picture.tobytes(), picture.shape)


@functools.lru_cache(maxsize=16)
def _encoded_png(pixels: bytes, shape: Tuple[int, ...]) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.frombuffer(pixels, dtype=np.uint8).reshape(shape)).save(buffer, format="PNG",
                                                                               compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _colorscale(diverging: bool) -> List[List[Any]]:
    """The house colour scale: `DIVERGING` for maps that can be negative (and differences), else `SEQUENTIAL`."""
    return DIVERGING if diverging else SEQUENTIAL


def _panel_title(text: str, x: float, y: float, paper: bool) -> Dict[str, Any]:
    """A small-multiple panel's title centred above (x, y): figure ("paper") coordinates, or the data
    coordinates of the axes "x" and "y"."""
    return {"font": {"size": SUBPLOT_TITLE_SIZE}, "showarrow": False, "text": str(text), "x": x, "xanchor": "center",
            "xref": "paper" if paper else "x", "y": y, "yanchor": "bottom", "yref": "paper" if paper else "y"}


def _colorbar(title: str, **extra: Any) -> Dict[str, Any]:
    return {"thickness": 10, **extra, "title": {"text": title, "side": "right"}}


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
        A figure whose trace `PATCH_TRACE` is the attention heatmap, one cell per patch: a click on a patch
        reports the point index [row, col] (also at opacity 0: plotly finds the cell from the position), and
        hovering names the patch and its value.
    """
    gh, gw = grid_map.shape
    ph, pw = patch_size
    height, width = picture.shape[:2]
    grid_map = _floats(grid_map)
    zmin, zmax = zrange if zrange is not None else color_range(grid_map, diverging)
    # Text arrays as numpy arrays: plotly copies figures whole when it writes them, and one array is one copy
    # where a list of lists of strings is thousands.
    patch_names = np.array([[f"patch ({r}, {c})" for c in range(gw)] for r in range(gh)])
    data = [
        # The picture's pixels span [-0.5, W - 0.5] x [-0.5, H - 0.5] like a ``z`` image, so patches line up.
        {"type": "image", "source": png_data_uri(picture), "hoverinfo": "skip"},
        {"type": "heatmap", "z": grid_map, "x0": (pw - 1) / 2, "dx": pw, "y0": (ph - 1) / 2, "dy": ph,
         "opacity": opacity, "colorscale": _colorscale(diverging), "zmin": zmin, "zmax": zmax,
         "text": patch_names, "hovertemplate": "%{text}<br>attention %{z:.4f}<extra></extra>",
         "colorbar": _colorbar(colorbar_title, len=0.8)},
    ]
    shapes = []
    if query_patch is not None:
        r, c = query_patch
        shapes.append({"type": "rect", "x0": c * pw - 0.5, "x1": (c + 1) * pw - 0.5, "y0": r * ph - 0.5,
                       "y1": (r + 1) * ph - 0.5, "line": {"color": QUERY_COLOR, "width": 3}})
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        shapes.append({"type": "rect", "x0": x0 - 0.5, "x1": x1 - 0.5, "y0": y0 - 0.5, "y1": y1 - 0.5,
                       "line": {"color": BOX_COLOR, "width": 2, "dash": "dot"}})
    layout = house_layout(
        xaxis={"visible": False, "range": [-0.5, width - 0.5]},
        yaxis={"visible": False, "range": [height - 0.5, -0.5], "scaleanchor": "x"},
        title={"text": title, "font": {"size": 14}}, height=OVERLAY_PX + 60,
        margin={"l": 4, "r": 4, "t": 40, "b": 4}, clickmode="event+select", dragmode=False)
    if shapes:
        layout["shapes"] = shapes
    return figure_from_spec({"data": data, "layout": layout})


def heads_grid(grids: np.ndarray, titles: Sequence[str], title: str, diverging: Union[bool, Sequence[bool]] = False,
               columns: int = 4, shared_scale: bool = True,
               colorbar_title: Union[str, Sequence[str]] = "attention weight") -> go.Figure:
    """Small multiples of (Gh, Gw) maps, every panel with square cells.

    On one shared scale the panels are one heatmap (a mosaic with empty gaps between panels, titles as
    annotations), so plotly.js lays out one plot instead of one per head: 16 heads redrew in 43 instead of
    116 ms. Own scales need one plot per panel, each with its colour bar beside it.

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
        The figure; the mosaic uses ``coloraxis`` (shared), or panel i its own ``coloraxis{i + 1}`` (own scales;
        plotly names the first one ``coloraxis``).
    """
    grids = _floats(grids)
    count = grids.shape[0]
    flags = [bool(diverging)] * count if isinstance(diverging, bool) else [bool(d) for d in diverging]
    bar_titles = [colorbar_title] * count if isinstance(colorbar_title, str) else list(colorbar_title)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    if shared_scale:
        return _mosaic(grids, titles, title, flags[0], columns, rows, bar_titles[0])
    # Own colour bars sit right of their panel: leave them room between the columns.
    x_domains = panel_domains(columns, 0.12)
    y_domains = panel_domains(rows, 0.1 if rows > 1 else 0.0)[::-1]  # row 1 at the top
    data: List[Dict[str, Any]] = []
    layout: Dict[str, Any] = {}
    annotations = []
    for index in range(count):
        x_domain, y_domain = x_domains[index % columns], y_domains[index // columns]
        suffix = "" if index == 0 else str(index + 1)
        zmin, zmax = color_range(grids[index], flags[index])
        data.append({"type": "heatmap", "z": grids[index], "coloraxis": f"coloraxis{suffix}",
                     "hovertemplate": f"row %{{y}}, col %{{x}}<br>%{{z:.4f}}<extra>{titles[index]}</extra>",
                     "xaxis": f"x{suffix}", "yaxis": f"y{suffix}"})
        layout[f"coloraxis{suffix}"] = {
            "colorscale": _colorscale(flags[index]), "cmin": zmin, "cmax": zmax,
            "colorbar": _colorbar(bar_titles[index], x=x_domain[1] + 0.005, xanchor="left",
                                  y=(y_domain[0] + y_domain[1]) / 2, len=y_domain[1] - y_domain[0])}
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": list(x_domain), "showticklabels": False,
                                    "ticks": "", "showline": False, "constrain": "domain"}
        # Each panel anchors its own y axis to its own x axis (anchoring all to "x" made only the first square).
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": list(y_domain), "autorange": "reversed",
                                    "showticklabels": False, "ticks": "", "showline": False,
                                    "scaleanchor": f"x{suffix}", "constrain": "domain"}
        annotations.append(_panel_title(titles[index], (x_domain[0] + x_domain[1]) / 2, y_domain[1], paper=True))
    return figure_from_spec({"data": data, "layout": house_layout(
        annotations=annotations, title={"text": title}, height=80 + 220 * rows,
        margin={"l": 4, "r": 60, "t": 70, "b": 4}, **layout)})


def _mosaic(grids: np.ndarray, titles: Sequence[str], title: str, diverging: bool, columns: int, rows: int,
            colorbar_title: str) -> go.Figure:
    """`heads_grid` on one shared scale: the (P, Gh, Gw) panels tiled into one heatmap, row-major."""
    count, gh, gw = grids.shape
    gap = max(1, round(0.08 * max(gh, gw)))  # empty cells between panels
    tiles = np.full((rows * (gh + gap) - gap, columns * (gw + gap) - gap), np.nan, dtype=grids.dtype)
    names = np.full(tiles.shape, "", dtype=object)  # as numpy text, see `attention_overlay`
    annotations = []
    for index in range(count):
        top, left = (index // columns) * (gh + gap), (index % columns) * (gw + gap)
        tiles[top:top + gh, left:left + gw] = grids[index]
        names[top:top + gh, left:left + gw] = [[f"{titles[index]}, row {r}, col {c}" for c in range(gw)]
                                              for r in range(gh)]
        annotations.append(_panel_title(titles[index], left + (gw - 1) / 2, top - 0.5, paper=False))
    zmin, zmax = color_range(grids, diverging)
    hidden = {"visible": False, "constrain": "domain"}
    return figure_from_spec({
        "data": [{"type": "heatmap", "z": tiles, "coloraxis": "coloraxis", "text": names.astype(str),
                  "hovertemplate": "%{text}<br>%{z:.4f}<extra></extra>", "hoverongaps": False}],
        "layout": house_layout(
            coloraxis={"colorscale": _colorscale(diverging), "cmin": zmin, "cmax": zmax,
                       "colorbar": _colorbar(colorbar_title)},
            xaxis=hidden, yaxis={**hidden, "autorange": "reversed", "scaleanchor": "x"},
            annotations=annotations, title={"text": title}, height=80 + 220 * rows,
            margin={"l": 4, "r": 60, "t": 70, "b": 4})})


def panel_domains(count: int, spacing: float) -> List[Tuple[float, float]]:
    """``count`` equal (start, end) intervals of [0, 1] with ``spacing`` between them, in order (the domains
    plotly's ``make_subplots`` gives its columns or, reversed, its rows)."""
    size = (1.0 - spacing * (count - 1)) / count
    return [(index * (size + spacing), index * (size + spacing) + size) for index in range(count)]


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
    matrix = _floats(matrix)
    zmin, zmax = color_range(matrix, diverging)
    tokens = np.arange(matrix.shape[0])
    cells, centres, block = token_blocks(matrix)
    hover = ("query %{y}<br>key %{x}<br>%{z:.4f}<extra></extra>" if block == 1 else
             f"queries %{{y}} +- {block / 2:g}<br>keys %{{x}} +- {block / 2:g}<br>mean %{{z:.4f}}<extra></extra>")
    if block > 1:
        title = f"{title} (means of {block} x {block} token blocks)"
    positions, texts = (token_ticks(labels, num_prefix_tokens, grid) if grid is not None
                        else (list(tokens), list(labels)))
    axis = {"tickmode": "array", "tickvals": [int(p) for p in positions], "ticktext": [str(t) for t in texts],
            "constrain": "domain", "showline": False, "ticks": "outside"}
    return figure_from_spec({
        "data": [{"type": "heatmap", "z": _floats(cells), "x": centres, "y": centres,
                  "colorscale": _colorscale(diverging), "zmin": zmin, "zmax": zmax,
                  "colorbar": _colorbar(colorbar_title), "hovertemplate": hover}],
        "layout": house_layout(
            yaxis={**axis, "autorange": "reversed", "title": {"text": "query token"}, "scaleanchor": "x"},
            xaxis={**axis, "title": {"text": "key token"}, "tickangle": -90},
            title={"text": title}, height=500, margin={"l": 60, "r": 4, "t": 50, "b": 60})})


def top_k_bars(predictions: Sequence[Tuple[str, float]], title: str, truth: Optional[str] = None) -> go.Figure:
    """Horizontal bars of the top-k class probabilities (the true class, when known, in green)."""
    names = [str(name) for name, _ in predictions][::-1]
    probs = [float(p) for _, p in predictions][::-1]
    colors = [TRUTH_COLOR if truth is not None and name == truth else BAR_COLOR for name in names]
    return figure_from_spec({
        "data": [{"type": "bar", "x": probs, "y": names, "orientation": "h", "marker": {"color": colors},
                  "text": [f"{p:.1%}" for p in probs], "textposition": "auto"}],
        "layout": house_layout(xaxis={"range": [0, 1], "title": {"text": "probability"}},
                               yaxis={"type": "category", "title": {"text": "class"}},
                               title={"text": title}, height=230, margin={"l": 4, "r": 4, "t": 40, "b": 30})})
