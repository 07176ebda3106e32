"""Figures of the section 5 metrics for two models, driven by `analysis.attention_metrics.METRICS`.

Each metric's axes decide its plot: per-layer values become curves over relative depth (so models of
different depth line up), (layer, head) values become the per-layer head mean with every head as a dot,
(layer, layer2) matrices become heatmaps, (row, col) maps become images. No Streamlit here.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.attention_metrics import METRICS
from analysis.similarity import relative_depth

COLORS = ("#1f77b4", "#d62728")


def depth_curves(key: str, values: Mapping[str, np.ndarray],
                 intervals: Optional[Mapping[str, Tuple[np.ndarray, np.ndarray]]] = None) -> go.Figure:
    """One metric per layer for each model over relative depth l/L.

    Args:
        key: metric key in `METRICS` with axes ("layer",) or ("layer", "head").
        values: model label -> (L,) or (L, H) values.
        intervals: optional model label -> (low, high) (L,) band, drawn shaded.
    """
    info = METRICS[key]
    fig = go.Figure()
    for index, (label, array) in enumerate(values.items()):
        array = np.asarray(array, dtype=float)
        depth = array.shape[0]
        x = relative_depth(depth) if key != "adjacent_similarity" else relative_depth(depth + 1)[1:]
        color = COLORS[index % len(COLORS)]
        if array.ndim == 2:
            for head in range(array.shape[1]):
                fig.add_trace(go.Scatter(x=x, y=array[:, head], mode="markers", marker={"color": color, "size": 5,
                                         "opacity": 0.35}, name=f"{label} heads", legendgroup=label,
                                         showlegend=head == 0, hovertemplate=f"head {head}: %{{y:.3f}}<extra></extra>"))
            line = np.nanmean(array, axis=1)
        else:
            line = array
        if intervals and label in intervals:
            low, high = intervals[label]
            fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([high, low[::-1]]),
                                     fill="toself", fillcolor=color, opacity=0.2, line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(x=x, y=line, mode="lines+markers", line={"color": color}, name=label,
                                 legendgroup=label))
    fig.update_xaxes(title="relative depth l/L", range=[0, 1.05])
    fig.update_yaxes(title=info.label)
    fig.update_layout(title=info.label, height=340, margin={"l": 50, "r": 10, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def matrices(key: str, values: Mapping[str, np.ndarray], zrange: Tuple[float, float] = (0.0, 1.0)) -> go.Figure:
    """(L, L) matrices of each model side by side."""
    labels = list(values)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels, horizontal_spacing=0.08)
    for index, label in enumerate(labels):
        matrix = np.asarray(values[label])
        ticks = np.arange(1, matrix.shape[0] + 1)
        fig.add_trace(go.Heatmap(z=matrix, x=ticks, y=ticks, zmin=zrange[0], zmax=zrange[1], colorscale="Viridis",
                                 showscale=index == 0, hovertemplate="layer %{y} vs %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=index + 1)
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title="layer")
    fig.update_layout(title=METRICS[key].label, height=380, margin={"l": 50, "r": 10, "t": 60, "b": 40})
    return fig


def images(key: str, values: Mapping[str, np.ndarray]) -> go.Figure:
    """(Gh, Gw) maps of each model side by side (e.g. rollout of the CLS query)."""
    labels = list(values)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels)
    for index, label in enumerate(labels):
        fig.add_trace(go.Heatmap(z=np.asarray(values[label]), colorscale="Inferno", showscale=index == 0),
                      row=1, col=index + 1)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(title=METRICS[key].label, height=360, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def per_layer_table(results: Mapping[str, Mapping[str, np.ndarray]], keys: Sequence[str]) -> pd.DataFrame:
    """Long table: model, layer, relative depth, then one column per metric (head metrics averaged)."""
    rows = []
    for label, metrics in results.items():
        depth = next(np.asarray(metrics[k]).shape[0] for k in keys if k in metrics)
        for layer in range(depth):
            row: Dict[str, object] = {"model": label, "layer": layer + 1, "relative_depth": (layer + 1) / depth}
            for key in keys:
                if key not in metrics or key == "adjacent_similarity":
                    continue
                value = np.asarray(metrics[key], dtype=float)[layer]
                row[key] = float(np.nanmean(value))
            rows.append(row)
    return pd.DataFrame(rows)


def scalar_table(results: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Table of the scalar metrics (localisation) per model."""
    keys = [k for k, info in METRICS.items() if info.axes == ()]
    return pd.DataFrame([{"model": label, **{k: float(np.asarray(m[k])) for k in keys if k in m}}
                         for label, m in results.items()])


def curve_keys(available: Sequence[str]) -> Sequence[str]:
    """Metric keys drawn as per-layer curves, in `METRICS` order."""
    return [k for k, info in METRICS.items() if k in available and info.axes in (("layer",), ("layer", "head"))]
