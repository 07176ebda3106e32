"""Analysis: the section 5 metrics of both models on the current image (DESIGN section 6).

Metrics come from `app.cached.get_metrics` (a small model's kept float32 view, or a float32 capture made for them and
kept as tables in the map store) and are drawn by `analysis.figures`, the same builders ``refiner analyze`` uses, so
the app and the CLI show the same plots. The page draws no attention map, so it captures no display view.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

import numpy as np
import streamlit as st

from analysis import figures
from analysis.attention_metrics import METRICS, MetricSettings, rollout_map
from analysis.compare_view import model_picture

from .. import cached
from ..bundle import ViewContents, build_bundle, table_rows
from ..charts import show_chart
from ..exports import bundle_export, figure_exports, maps_export, table_exports
from ..images import canvas_key
from ..metric_views import curve_keys, head_mean, per_layer_table, scalar_table
from ..sidebar import Context

# Drawn elsewhere on the page (similarity_vs_depth) or as a per-head scatter rather than a layer curve.
SEPARATE = ("adjacent_similarity", "distance_px", "distance_patches", "cls_in_box")


def _settings() -> MetricSettings:
    with st.expander("Settings", expanded=False):
        cols = st.columns(4)
        kind = cols[0].radio("Map", ["effective", "softmax"], key="an-kind")
        normalize = cols[1].selectbox("Normalise rows", ["abs_rownorm", "clip_rownorm", "none"], key="an-norm",
                                      help="How non-stochastic (refined) maps are turned into distributions.")
        tau = cols[2].slider("tau (similarity share)", 0.0, 1.0, 0.5, 0.05, key="an-tau")
        fusion = cols[3].selectbox("Rollout head fusion", ["mean", "max", "min"], key="an-fusion")
    return MetricSettings(normalize=normalize, tau=tau, head_fusion=fusion, map_kind=kind)


def _show(fig, name: str, contents: ViewContents) -> None:
    """Draw one figure with its export buttons and keep it for the bundle."""
    show_chart(fig, key=f"an-{name}")
    figure_exports(fig, name, key=f"exp-an-{name}")
    contents.figures[name] = fig


def render(ctx: Context) -> None:
    """Draw the Analysis page."""
    st.title("Analysis of the current image")
    if not ctx.ready:
        st.info("Choose two models and an image in the sidebar.")
        return
    settings = _settings()
    canvas = canvas_key(ctx.models[0].data)
    results: Dict[str, Dict[str, np.ndarray]] = {}
    for slot, model in enumerate(ctx.models):
        label = f"{'AB'[slot]}: {model.label}"
        # From float32 maps, kept in the map store (`app.cached.get_metrics`); no display view is made for them.
        results[label] = cached.get_metrics(model.source, ctx.selection.img, ctx.upload, canvas, settings,
                                            ctx.item.box)
    available = list(next(iter(results.values())))
    bundle_slot = st.container()  # filled last, once every figure exists
    contents = ViewContents(settings={"page": "analysis", **settings.to_dict()})

    st.header("Cross-layer similarity")
    _show(figures.similarity_heatmaps({k: v["similarity"] for k, v in results.items()}), "similarity", contents)
    _show(figures.similarity_vs_depth({k: v["similarity"] for k, v in results.items()}), "similarity-vs-depth",
          contents)

    st.header("Per-layer metrics")
    keys = [k for k in curve_keys(available) if k not in SEPARATE]
    for index, key in enumerate(keys):
        if index % 2 == 0:
            columns = st.columns(2)
        with columns[index % 2]:
            label = METRICS[key].label
            _show(figures.layer_curves({k: head_mean(v[key]) for k, v in results.items()}, label, label), key,
                  contents)
    _show(figures.mean_distance_figure({k: v["distance_px"] for k, v in results.items()}), "mean-distance",
          contents)
    if ctx.item.box is not None and all("cls_in_box" in v for v in results.values()):
        _show(figures.localisation_figure(
            {k: v["cls_in_box"] for k, v in results.items()}, float(next(iter(results.values()))["box_chance"]),
            rollout_in_box={k: float(v["rollout_in_box"]) for k, v in results.items()}), "localisation", contents)

    st.header("Attention rollout of the CLS token")
    # Each model's rollout over the picture that model saw (same picture when preprocessing agrees).
    panels = {f"{k}: rollout" + ("" if key == "rollout_cls" else " (mean patch query: no CLS token)"): rollout
              for k, (key, rollout) in ((k, rollout_map(v)) for k, v in results.items())}
    _show(figures.overlay_figure(model_picture(ctx.models[0], ctx.item.image), panels, "Attention rollout of the CLS query", box=ctx.item.box),
          "rollout-cls", contents)

    st.header("Tables")
    table = per_layer_table(results, curve_keys(available))
    st.dataframe(table, hide_index=True)
    table_exports(table, "per-layer-metrics", key="an-table")
    contents.tables["per-layer-metrics"] = table_rows(table)
    if ctx.item.box is not None:
        scalars = scalar_table(results)
        st.dataframe(scalars, hide_index=True)
        table_exports(scalars, "localisation", key="an-scalars")
        contents.tables["localisation"] = table_rows(scalars)
    for slot, (label, metrics) in enumerate(results.items()):
        maps_export(functools.partial(dict, metrics), f"metrics-{'ab'[slot]}", key=f"an-raw-{slot}",
                    label=f"{label}: all metrics (NPZ)")
    st.caption("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.to_dict().items()) +
               f". Metric definitions: {len(METRICS)} keys, DESIGN section 5.")
    with bundle_slot:
        bundle_export(functools.partial(_bundle, ctx, contents),
                      f"refiner-analysis-{ctx.models[0].label}-vs-{ctx.models[1].label}", key="an-bundle")


def _bundle(ctx: Context, contents: ViewContents, formats: Sequence[str]) -> bytes:
    """The page's ZIP bundle, built when the button is clicked, with the views in the map store then (the session
    keeps this callable: it must not hold them, see `app.exports.maps_export`)."""
    return build_bundle(contents, ctx.models, ctx.views(), ctx.item, formats,
                        extra={"url_query": ctx.selection.to_url()})
