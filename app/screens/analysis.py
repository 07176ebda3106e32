"""Analysis: the section 5 metrics of both models on the current image (DESIGN section 6)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import streamlit as st

from analysis.attention_metrics import METRICS, MetricSettings, compute_map_metrics

from ..exports import figure_exports, maps_export, table_exports
from ..metric_views import curve_keys, depth_curves, images, matrices, per_layer_table, scalar_table
from ..sidebar import Context
from .. import cached


@st.cache_data(max_entries=32, show_spinner="Computing metrics...")
def _metrics(source: str, image_key: str, upload: Optional[bytes], canvas: int, settings: MetricSettings,
             box: Optional[Tuple[int, int, int, int]]) -> Dict[str, np.ndarray]:
    """Every metric of one model on one image (cached per model, image and settings)."""
    view = cached.get_view(source, image_key, upload, canvas)
    return compute_map_metrics(view.maps(settings.map_kind), view.num_prefix_tokens, view.grid, view.patch_size,
                               settings, box)


def _settings() -> MetricSettings:
    with st.expander("Settings", expanded=False):
        cols = st.columns(4)
        kind = cols[0].radio("Map", ["effective", "softmax"], key="an-kind")
        normalize = cols[1].selectbox("Normalise rows", ["abs_rownorm", "clip_rownorm", "none"], key="an-norm",
                                      help="How non-stochastic (refined) maps are turned into distributions.")
        tau = cols[2].slider("tau (similarity share)", 0.0, 1.0, 0.5, 0.05, key="an-tau")
        fusion = cols[3].selectbox("Rollout head fusion", ["mean", "max", "min"], key="an-fusion")
    return MetricSettings(normalize=normalize, tau=tau, head_fusion=fusion, map_kind=kind)


def render(ctx: Context) -> None:
    """Draw the Analysis page."""
    st.title("Analysis of the current image")
    if not ctx.ready:
        st.info("Choose two models and an image in the sidebar.")
        return
    settings = _settings()
    canvas = int(ctx.models[0].data["img_size"][0])
    results: Dict[str, Dict[str, np.ndarray]] = {}
    for slot, model in enumerate(ctx.models):
        label = f"{'AB'[slot]}: {model.label}"
        results[label] = _metrics(model.source, ctx.selection.img, ctx.upload, canvas, settings, ctx.item.box)
    available = list(next(iter(results.values())))

    st.header("Cross-layer similarity")
    fig = matrices("similarity", {k: v["similarity"] for k, v in results.items()})
    st.plotly_chart(fig, key="an-similarity")
    figure_exports(fig, "similarity", key="exp-an-similarity")

    st.header("Per-layer metrics")
    for index, key in enumerate(curve_keys(available)):
        if index % 2 == 0:
            columns = st.columns(2)
        with columns[index % 2]:
            fig = depth_curves(key, {k: v[key] for k, v in results.items()})
            st.plotly_chart(fig, key=f"an-{key}")
            figure_exports(fig, key, key=f"exp-an-{key}")

    st.header("Attention rollout of the CLS token")
    fig = images("rollout_cls", {k: v["rollout_cls"] for k, v in results.items()})
    st.plotly_chart(fig, key="an-rollout")
    figure_exports(fig, "rollout-cls", key="exp-an-rollout")

    st.header("Tables")
    table = per_layer_table(results, curve_keys(available))
    st.dataframe(table, hide_index=True)
    table_exports(table, "per-layer-metrics", key="an-table")
    if ctx.item.box is not None:
        scalars = scalar_table(results)
        st.dataframe(scalars, hide_index=True)
        table_exports(scalars, "localisation", key="an-scalars")
    for slot, (label, metrics) in enumerate(results.items()):
        maps_export(metrics, f"metrics-{'ab'[slot]}", key=f"an-raw-{slot}", label=f"{label}: all metrics (NPZ)")
    st.caption("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.to_dict().items()) +
               f". Metric definitions: {len(METRICS)} keys, DESIGN section 5.")
