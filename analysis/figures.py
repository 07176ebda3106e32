"""Paper-ready plotly figures of the section 5 analyses (DESIGN section 5, issue 4 section 3).

Every builder takes plain arrays (or the dataclasses of `analysis.per_image` / `analysis.dataset`) and
returns a ``plotly.graph_objects.Figure``. Defaults are for papers: white background, 14 pt sans-serif
text, axis titles with units, the Okabe-Ito palette for models (distinguishable with colour-vision
deficiencies) and cividis/viridis for continuous values. Figures that put several heatmaps side by side
share one colour axis, so equal colours mean equal values.

`image_figures` and `dataset_figures` build the whole set for one image / one dataset analysis, keyed by
a file-name-safe name; `analysis.export` writes them.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .attention_metrics import METRICS, rollout_map
from .colorscales import rgb_colorscale
from .dataset import DatasetAnalysis, DatasetStatistics, Interval, PairedComparison
from .head_diversity import HeadEmbedding
from .per_image import ImageAnalysis, PAIR_SEPARATOR
from .similarity import relative_depth

# Okabe & Ito (2008), "Color Universal Design": black first for the reference (vanilla) model.
OKABE_ITO: Tuple[str, ...] = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
SEQUENTIAL = "cividis"
DEPTH_SCALE = "viridis"
FONT = dict(family="Arial, Helvetica, sans-serif", size=14, color="#222222")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x")


def model_color(index: int) -> str:
    """Colour of the index-th model (Okabe-Ito, cycling)."""
    return OKABE_ITO[index % len(OKABE_ITO)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def paper_layout(fig: go.Figure, title: str, width: int = 760, height: int = 460) -> go.Figure:
    """Apply the shared paper style in place and return the figure."""
    fig.update_layout(title=dict(text=title, x=0.01, xanchor="left", font=dict(size=16)), font=FONT,
                      template="simple_white", width=width, height=height, margin=dict(l=70, r=30, t=60, b=60),
                      legend=dict(bgcolor="rgba(255,255,255,0.8)"))
    # "power" exponents (1.5x10^-4) instead of SI suffixes (150µ), which read as units in a paper.
    fig.update_xaxes(ticks="outside", showline=True, mirror=False, exponentformat="power")
    fig.update_yaxes(ticks="outside", showline=True, mirror=False, exponentformat="power")
    return fig


def _shared_range(matrices: Sequence[np.ndarray], lower: Optional[float] = None, upper: Optional[float] = None
                  ) -> Tuple[float, float]:
    finite = np.concatenate([np.asarray(m, dtype=np.float64)[np.isfinite(m)].ravel() for m in matrices])
    low = float(finite.min()) if lower is None and finite.size else (0.0 if lower is None else lower)
    high = float(finite.max()) if upper is None and finite.size else (1.0 if upper is None else upper)
    return low, high if high > low else low + 1e-9


def heatmap_grid(matrices: Mapping[str, np.ndarray], title: str, x_title: str, y_title: str,
                 colorbar_title: str, zrange: Optional[Tuple[float, float]] = None,
                 colorscale: str = SEQUENTIAL) -> go.Figure:
    """Heatmaps side by side on ONE colour scale (a shared ``coloraxis``).

    Args:
        matrices: panel title -> (rows, cols) matrix; rows are drawn bottom-up as layer 1..L.
        title, x_title, y_title, colorbar_title: texts (put units in them).
        zrange: (min, max) of the colour scale (default: the range over all panels).
        colorscale: a plotly colour scale name.

    Returns:
        The figure; every trace uses ``coloraxis``.
    """
    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.08)
    low, high = zrange if zrange is not None else _shared_range(list(matrices.values()))
    for col, name in enumerate(names, start=1):
        matrix = np.asarray(matrices[name], dtype=np.float64)
        fig.add_trace(go.Heatmap(z=matrix, x=np.arange(1, matrix.shape[1] + 1), y=np.arange(1, matrix.shape[0] + 1),
                                 coloraxis="coloraxis", name=name,
                                 hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>value %{{z:.3f}}"
                                               "<extra>" + name + "</extra>"), row=1, col=col)
        fig.update_xaxes(title_text=x_title, row=1, col=col, constrain="domain", dtick=max(1, matrix.shape[1] // 8))
        fig.update_yaxes(title_text=y_title if col == 1 else None, row=1, col=col, scaleanchor=f"x{col if col > 1 else ''}",
                         dtick=max(1, matrix.shape[0] // 8))
    fig.update_layout(coloraxis=dict(colorscale=rgb_colorscale(colorscale), cmin=low, cmax=high,
                                     colorbar=dict(title=dict(text=colorbar_title, side="right"))))
    return paper_layout(fig, title, width=max(420, 380 * len(names) + 120), height=460)


def similarity_heatmaps(matrices: Mapping[str, np.ndarray], title: str = "Cross-layer attention similarity",
                        zrange: Tuple[float, float] = (0.0, 1.0)) -> go.Figure:
    """Two (or more) models' L x L DeepViT similarity matrices side by side on one colour scale [0, 1]."""
    return heatmap_grid(matrices, title, "layer", "layer", "column cosine", zrange)


def cka_grid(matrices: Mapping[str, np.ndarray], title: str = "Linear CKA between layers") -> go.Figure:
    """Within- and across-model CKA matrices side by side on one colour scale [0, 1].

    Keys "A|B" are titled "A (rows) vs B (cols)"; rows are layers of A, columns layers of B.
    """
    titled = {(k.replace(PAIR_SEPARATOR, " (rows) vs ") + " (cols)") if PAIR_SEPARATOR in k else k: v
              for k, v in matrices.items()}
    return heatmap_grid(titled, title, "layer", "layer", "CKA", (0.0, 1.0))


def _curve_traces(fig: go.Figure, name: str, index: int, values: np.ndarray, x: Optional[np.ndarray] = None,
                  interval: Optional[Tuple[np.ndarray, np.ndarray]] = None, row: Optional[int] = None,
                  col: Optional[int] = None, showlegend: bool = True) -> None:
    values = np.asarray(values, dtype=np.float64)
    x = relative_depth(len(values)) if x is None else x
    color = model_color(index)
    where = dict(row=row, col=col) if row is not None else {}
    if interval is not None:
        low, high = (np.asarray(v, dtype=np.float64) for v in interval)
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]),
                                 mode="lines", fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0),
                                 hoverinfo="skip",
                                 showlegend=False, legendgroup=name, name=f"{name} 95% CI"), **where)
    fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=name, legendgroup=name, showlegend=showlegend,
                             line=dict(color=color, width=2), marker=dict(color=color, size=7,
                                                                           symbol=SYMBOLS[index % len(SYMBOLS)])),
                  **where)


def layer_curves(curves: Mapping[str, np.ndarray], title: str, y_title: str,
                 intervals: Optional[Mapping[str, Interval]] = None, x: str = "relative depth",
                 y_range: Optional[Tuple[float, float]] = None) -> go.Figure:
    """One line per model of a per-layer quantity against relative depth (models of any depth align).

    Args:
        curves: model -> (L,) values (ignored for models in ``intervals``, whose mean is drawn).
        title, y_title: texts.
        intervals: optional model -> `Interval` for a 95% band.
        x: x-axis title.
        y_range: optional fixed y range.
    """
    fig = go.Figure()
    for index, name in enumerate(curves):
        interval = intervals.get(name) if intervals else None
        values = interval.mean if interval is not None else curves[name]
        _curve_traces(fig, name, index, values,
                      interval=(interval.low, interval.high) if interval is not None else None)
    fig.update_xaxes(title_text=f"{x} (layer / L)", range=[0, 1.05])
    fig.update_yaxes(title_text=y_title, range=y_range if y_range is not None else _flat_range(fig))
    return paper_layout(fig, title)


def _flat_range(fig: go.Figure) -> Optional[Tuple[float, float]]:
    """A y range for curves that are all one value v (plotly would centre them on a -1..1 axis, which shows a
    count of 0 as if it could be negative): [0, max(2v, 1)] for v >= 0, else [2v, 0]. None otherwise."""
    values = np.concatenate([np.asarray(t.y, dtype=np.float64).ravel() for t in fig.data if t.y is not None]
                            or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not values.size or values.min() != values.max():
        return None
    v = float(values[0])
    return (0.0, max(2.0 * v, 1.0)) if v >= 0 else (2.0 * v, 0.0)


def similarity_vs_depth(matrices: Mapping[str, np.ndarray], title: str = "Similarity with the next layer"
                        ) -> go.Figure:
    """S[l, l+1] of each model against the relative depth of layer l + 1 (DeepViT's collapse curve)."""
    fig = go.Figure()
    for index, (name, matrix) in enumerate(matrices.items()):
        matrix = np.asarray(matrix)
        x = relative_depth(matrix.shape[0])[1:]
        _curve_traces(fig, name, index, np.diagonal(matrix, offset=1), x=x)
    fig.update_xaxes(title_text="relative depth of the later layer (layer / L)", range=[0, 1.05])
    fig.update_yaxes(title_text="column cosine with the previous layer", range=[0, 1.02])
    return paper_layout(fig, title)


def head_diversity_figure(values: Mapping[str, np.ndarray], key: str = "head_diversity",
                          intervals: Optional[Mapping[str, Interval]] = None) -> go.Figure:
    """Head diversity (or head_js / effective_heads) per layer for each model."""
    label = METRICS[key].label
    y_range = (0.0, 1.0) if key in ("head_diversity", "head_js") else None
    return layer_curves(values, f"Head diversity: {label}", label, intervals, y_range=y_range)


def head_embedding_scatter(embedding: HeadEmbedding, title: Optional[str] = None) -> go.Figure:
    """Every head as a point (PCA/MDS), colour = relative depth (viridis), marker = model."""
    fig = go.Figure()
    for index, name in enumerate(dict.fromkeys(embedding.model.tolist())):
        pick = embedding.model == name
        fig.add_trace(go.Scatter(
            x=embedding.coords[pick, 0], y=embedding.coords[pick, 1] if embedding.coords.shape[1] > 1 else
            np.zeros(pick.sum()), mode="markers", name=name,
            marker=dict(symbol=SYMBOLS[index % len(SYMBOLS)], size=10, color=embedding.relative_depth[pick],
                        coloraxis="coloraxis", line=dict(width=1, color="#333333")),
            customdata=np.stack([embedding.layer[pick] + 1, embedding.head[pick]], axis=1),
            hovertemplate=name + "<br>layer %{customdata[0]}, head %{customdata[1]}<extra></extra>"))
    ratio = embedding.explained_variance_ratio
    axis = (lambda i: f"PC{i + 1} ({100 * ratio[i]:.1f}% of variance)") if len(ratio) else \
        (lambda i: f"MDS dimension {i + 1} (cosine distance)")
    fig.update_xaxes(title_text=axis(0))
    fig.update_yaxes(title_text=axis(1) if embedding.coords.shape[1] > 1 else "")
    fig.update_layout(coloraxis=dict(colorscale=rgb_colorscale(DEPTH_SCALE), cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="relative depth", side="right"))),
                      legend=dict(x=0.0, y=1.0, yanchor="top"))
    return paper_layout(fig, title or f"Head embedding ({embedding.method.upper()})", width=680, height=560)


def per_head_scatter(values: Mapping[str, np.ndarray], title: str, y_title: str) -> go.Figure:
    """ViT-paper style: one dot per head at its layer, one panel per model, shared y axis.

    Args:
        values: model -> (L, H) values (e.g. mean attention distance).
        title, y_title: texts (with units).
    """
    names = list(values)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, shared_yaxes=True, horizontal_spacing=0.05)
    for col, name in enumerate(names, start=1):
        v = np.asarray(values[name], dtype=np.float64)
        layers, heads = v.shape
        fig.add_trace(go.Scatter(x=np.repeat(np.arange(1, layers + 1), heads), y=v.ravel(), mode="markers",
                                 name=name, showlegend=False,
                                 marker=dict(color=model_color(col - 1), size=7, opacity=0.75),
                                 customdata=np.tile(np.arange(heads), layers),
                                 hovertemplate="layer %{x}, head %{customdata}<br>%{y:.3g}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="layer", row=1, col=col, dtick=max(1, layers // 8))
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    return paper_layout(fig, title, width=max(460, 400 * len(names) + 80))


def mean_distance_figure(distances: Mapping[str, np.ndarray], unit: str = "pixels") -> go.Figure:
    """Mean attention distance per head against layer (Dosovitskiy et al. 2021, Fig. 7)."""
    return per_head_scatter(distances, "Mean attention distance per head", f"mean attention distance ({unit})")


def locality_strips(metrics: Mapping[str, Mapping[str, np.ndarray]],
                    keys: Sequence[str] = ("cls_entropy", "patch_entropy", "grid_mass", "band_mass", "diagonal_mass",
                                           "prefix_mass", "negative_fraction")) -> go.Figure:
    """One strip per local-pattern statistic: heads as dots against relative depth, models in colour.

    Args:
        metrics: model -> metric table (keys of `METRICS` with (L, H) arrays).
        keys: which statistics, one row each.
    """
    keys = [k for k in keys if all(k in m for m in metrics.values())]
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.025,
                        subplot_titles=[METRICS[k].label for k in keys])
    for row, key in enumerate(keys, start=1):
        for index, (name, table) in enumerate(metrics.items()):
            v = np.asarray(table[key], dtype=np.float64)
            layers, heads = v.shape
            x = np.repeat(relative_depth(layers), heads) + (index - (len(metrics) - 1) / 2) * 0.012
            fig.add_trace(go.Scatter(x=x, y=v.ravel(), mode="markers", name=name, legendgroup=name,
                                     showlegend=row == 1, marker=dict(color=model_color(index), size=5, opacity=0.7,
                                                                      symbol=SYMBOLS[index % len(SYMBOLS)])),
                          row=row, col=1)
        fig.update_yaxes(title_text="share" if "entropy" not in key else "H / log N", row=row, col=1)
    fig.update_xaxes(title_text="relative depth (layer / L)", row=len(keys), col=1)
    fig.update_annotations(font=dict(size=13))
    return paper_layout(fig, "Entropy and locality per head", width=760, height=max(360, 190 * len(keys)))


def _image_to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|3) or (C, H, W) float/uint8 -> (H, W, 3) uint8 (float images are min-max scaled)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.transpose(img, (1, 2, 0))
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        low, high = np.nanmin(img), np.nanmax(img)
        img = ((img - low) / (high - low if high > low else 1.0) * 255).round().astype(np.uint8)
    return img


def overlay_figure(image: np.ndarray, heatmaps: Mapping[str, np.ndarray], title: str = "Attention on the image",
                   box: Optional[Sequence[float]] = None, opacity: float = 0.55,
                   colorscale: str = "inferno", columns: Optional[int] = None) -> go.Figure:
    """The input image under one or more heat maps (attention, rollout, attribution), one panel each.

    Grid-resolution maps (Gh, Gw) are stretched over their patches; pixel maps (H, W) are drawn as they are.
    Each panel is scaled to its own maximum (the overlay shows where, not how much; values are in hover).

    Args:
        image: the model input as a picture: (H, W), (H, W, 3) or (C, H, W).
        heatmaps: panel title -> (Gh, Gw) or (H, W) non-negative map.
        title: figure title.
        box: optional (x0, y0, x1, y1) box in pixels, drawn on every panel.
        opacity: heat map opacity.
        colorscale: colour scale of the heat maps (one shared colour axis).
        columns: panels per row (default: all in one row).
    """
    rgb = _image_to_rgb(image)
    height, width = rgb.shape[:2]
    names = list(heatmaps)
    columns = max(1, min(columns or len(names), len(names)))
    rows = -(-len(names) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=names, horizontal_spacing=0.03,
                        vertical_spacing=0.08)
    for index, name in enumerate(names):
        row, col = index // columns + 1, index % columns + 1
        axis = "" if index == 0 else str(index + 1)
        heat = np.clip(np.asarray(heatmaps[name], dtype=np.float64), 0.0, None)
        peak = heat.max()
        heat = heat / peak if peak > 0 else heat
        gh, gw = heat.shape
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), row=row, col=col)
        fig.add_trace(go.Heatmap(z=heat, x0=width / gw / 2 - 0.5, dx=width / gw, y0=height / gh / 2 - 0.5,
                                 dy=height / gh, coloraxis="coloraxis", opacity=opacity, name=name,
                                 hovertemplate="x %{x:.0f}px, y %{y:.0f}px<br>%{z:.3f}<extra></extra>"),
                      row=row, col=col)
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            fig.add_shape(type="rect", x0=x0 - 0.5, y0=y0 - 0.5, x1=x1 - 0.5, y1=y1 - 0.5,
                          line=dict(color="#56B4E9", width=2), row=row, col=col)
        fig.update_xaxes(showticklabels=False, showline=False, ticks="", row=row, col=col, range=[-0.5, width - 0.5])
        fig.update_yaxes(showticklabels=False, showline=False, ticks="", row=row, col=col,
                         range=[height - 0.5, -0.5], scaleanchor=f"x{axis}")
    fig.update_layout(coloraxis=dict(colorscale=rgb_colorscale(colorscale), cmin=0, cmax=1,
                                     colorbar=dict(title=dict(text="share of panel maximum", side="right"))))
    fig.update_annotations(font=dict(size=12))
    paper_layout(fig, title, width=260 * columns + 140, height=250 * rows + 90)
    # Pictures carry no axes: drop the ticks and lines the paper style adds.
    fig.update_xaxes(ticks="", showline=False)
    fig.update_yaxes(ticks="", showline=False)
    return fig


def localisation_figure(cls_in_box: Mapping[str, np.ndarray], chance: Optional[float] = None,
                        intervals: Optional[Mapping[str, Interval]] = None,
                        rollout_in_box: Optional[Mapping[str, float]] = None) -> go.Figure:
    """Share of CLS attention inside the object box per layer (heads averaged), with the chance level.

    Args:
        cls_in_box: model -> (L, H) or (L,) shares.
        chance: share a uniform map would put in the box (dashed line).
        intervals: optional dataset intervals per model.
        rollout_in_box: optional model -> rollout share, listed in the title.
    """
    curves = {k: (np.asarray(v).mean(axis=1) if np.ndim(v) == 2 else np.asarray(v)) for k, v in cls_in_box.items()}
    suffix = ""
    if rollout_in_box:
        suffix = " (rollout: " + ", ".join(f"{k} {v:.2f}" for k, v in rollout_in_box.items()) + ")"
    fig = layer_curves(curves, "CLS attention inside the object box" + suffix, "share of CLS attention in box",
                       intervals, y_range=(0.0, 1.0))
    if chance is not None:
        # An explicit width: the simple_white template's shape default is width 0, which hid this line.
        fig.add_hline(y=chance, line=dict(color="#777777", dash="dash", width=1.5), annotation_text="uniform attention",
                      annotation_position="top left")
    return fig


def paired_difference_figure(comparison: PairedComparison, title: str, y_title: str) -> go.Figure:
    """Per-layer mean difference (b - a) with its 95% interval and a zero line; p-values in hover."""
    diff = comparison.difference
    fig = go.Figure()
    x = relative_depth(len(diff.mean))
    _curve_traces(fig, "difference", 2, diff.mean, x=x, interval=(diff.low, diff.high))
    fig.data[-1].customdata = np.asarray(comparison.p_value).reshape(-1)
    fig.data[-1].hovertemplate = "depth %{x:.2f}<br>difference %{y:.4f}<br>p = %{customdata:.4f}<extra></extra>"
    fig.add_hline(y=0.0, line=dict(color="#777777", dash="dash", width=1.5))
    fig.update_xaxes(title_text="relative depth (layer / L)", range=[0, 1.05])
    fig.update_yaxes(title_text=y_title)
    return paper_layout(fig, title)


# ---------------------------------------------------------------------------------------------- whole sets
IMAGE_FIGURE_NAMES = ("similarity_heatmaps", "similarity_vs_depth", "head_diversity", "head_js", "effective_heads",
                      "head_embedding", "mean_distance", "locality_strips", "overlays", "cka", "localisation")


def image_figures(result: ImageAnalysis, image: Optional[np.ndarray] = None) -> Dict[str, go.Figure]:
    """Every per-image figure of an `ImageAnalysis`.

    Args:
        result: from `analysis.per_image.analyze_image`.
        image: the picture for overlays, (H, W), (H, W, 3) or (C, H, W); overlays are skipped without it.

    Returns:
        name -> figure (names from `IMAGE_FIGURE_NAMES`, those that apply).
    """
    models = result.models
    metrics = {n: r.metrics for n, r in models.items()}
    figs: Dict[str, go.Figure] = {
        "similarity_heatmaps": similarity_heatmaps({n: m["similarity"] for n, m in metrics.items()}),
        "similarity_vs_depth": similarity_vs_depth({n: m["similarity"] for n, m in metrics.items()}),
        "head_diversity": head_diversity_figure({n: m["head_diversity"] for n, m in metrics.items()}),
        "head_js": head_diversity_figure({n: m["head_js"] for n, m in metrics.items()}, "head_js"),
        "effective_heads": head_diversity_figure({n: m["effective_heads"] for n, m in metrics.items()},
                                                 "effective_heads"),
        "mean_distance": mean_distance_figure({n: m["distance_px"] for n, m in metrics.items()}),
        "locality_strips": locality_strips(metrics),
        "cka": cka_grid(result.cka),
    }
    if result.head_embedding is not None:
        figs["head_embedding"] = head_embedding_scatter(result.head_embedding)
    if image is not None:
        panels: Dict[str, np.ndarray] = {}
        for name, r in models.items():
            k, cls = r.meta.num_prefix_tokens, r.meta.class_token_index
            if k > 0 and cls is not None:
                panels[f"{name}: last-layer CLS attention"] = np.abs(r.effective[-1, :, cls, k:]).mean(axis=0) \
                    .reshape(r.meta.grid_size)
            rollout_key, rollout = rollout_map(r.metrics)
            panels[f"{name}: rollout" + ("" if rollout_key == "rollout_cls" else " (mean patch query, no CLS)")] = \
                rollout
            for key, heat in r.attributions.items():
                panels[f"{name}: {key.replace('_', ' ')}"] = heat
        # One row per model: the same kind of map lines up in a column.
        figs["overlays"] = overlay_figure(image, panels, box=result.box, columns=len(panels) // len(models))
    if result.box is not None and all("cls_in_box" in m for m in metrics.values()):
        chance = float(next(iter(metrics.values()))["box_chance"])
        figs["localisation"] = localisation_figure({n: m["cls_in_box"] for n, m in metrics.items()}, chance,
                                                   rollout_in_box={n: float(m["rollout_in_box"])
                                                                   for n, m in metrics.items()})
    return figs


DATASET_CURVE_KEYS = ("similarity", "adjacent_similarity", "head_diversity", "head_js", "effective_heads",
                      "distance_px", "patch_entropy", "cls_entropy", "grid_mass", "band_mass", "prefix_mass",
                      "negative_fraction", "cls_in_box")


def dataset_figures(analysis: DatasetAnalysis, statistics: DatasetStatistics) -> Dict[str, go.Figure]:
    """Dataset curves with 95% bands for every summary metric, mean similarity heatmaps, CKA, paired plots.

    Args:
        analysis: from `analysis.dataset.analyze_dataset`.
        statistics: its intervals (`analysis.dataset.dataset_statistics`, shared with the tables).

    Returns:
        name -> figure.
    """
    names = list(analysis.accumulators)
    figs: Dict[str, go.Figure] = {}
    figs["similarity_heatmaps"] = similarity_heatmaps({n: analysis.accumulators[n].mean("similarity") for n in names},
                                                      title="Cross-layer attention similarity (dataset mean)")
    figs["mean_distance"] = mean_distance_figure({n: analysis.accumulators[n].mean("distance_px") for n in names})
    for key in DATASET_CURVE_KEYS:
        if key not in statistics.keys:
            continue
        intervals = {n: statistics.intervals[(n, key)] for n in names}
        label = METRICS[key].label
        if key == "similarity":
            label = "mean similarity with the other layers"
        y_title = label if key != "adjacent_similarity" else "similarity with the next layer"
        if key == "cls_in_box":
            chance = float(np.nanmean(analysis.accumulators[names[0]].mean("box_chance")))
            figs["localisation"] = localisation_figure({n: intervals[n].mean for n in names}, chance, intervals)
            continue
        figs[f"dataset_{key}"] = layer_curves({n: intervals[n].mean for n in names},
                                              f"{label} (mean over {analysis.images} images, 95% CI)", y_title,
                                              intervals)
    if analysis.cka:
        figs["cka"] = cka_grid(analysis.cka, "Linear CKA between layers (minibatch, CLS token)")
    if statistics.comparisons:
        for key in ("head_diversity", "similarity", "distance_px", "patch_entropy", "grid_mass"):
            if key in statistics.keys:
                comparison = statistics.comparisons[(key, False)]
                figs[f"paired_{key}"] = paired_difference_figure(
                    comparison, f"{names[1]} minus {names[0]}: {METRICS[key].label}", "difference (b - a)")
    return figs


def figure_colorscales(fig: go.Figure) -> List[str]:
    """Colour axes referenced by the traces of a figure (tests check heatmap panels share one)."""
    return sorted({getattr(t, "coloraxis", None) for t in fig.data if getattr(t, "coloraxis", None)})
