"""Compare: the two models side by side on one image (DESIGN section 6).

The figures come from `analysis.compare_view.compare_figures` (``refiner analyze --manifest`` re-makes the
same from a bundle); this page only chooses what to show and draws it. Everything drawn slices the cached
captures of `app.cached.get_view`, so changing layer, head, query or any display option re-draws without
running a model, and only the open tab's figures are built and sent to the browser.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import streamlit as st

from analysis.compare_view import (CompareSettings, ModelView, compare_figures, compare_tables, figure_stem,
                                   map_query, patch_token, token_label)

from ..bundle import ViewContents, build_bundle, bundle_labels
from ..charts import ChartClick, show_chart
from ..exports import bundle_export, figure_exports, maps_export
from ..model_info import model_notes
from ..selection import COMPARE_TABS
from ..sidebar import Context
from ..views import clicked_patch

CLICK_KEYS = ("click-a", "click-b")
HALF_NOTE = ("Large model: its maps are drawn from float16 copies (within 0.05% of each value); every metric on the "
             "Analysis page is computed from the float32 maps.")
TAB_PARTS = {"All heads": "heads", "N x N matrix": "matrix", "Softmax vs effective": "softmax-vs-effective",
             "Difference A - B": "difference"}
LEGEND = ("**Reading the maps.** Each overlay is the chosen query's row of the attention map over the patches "
          "(prefix tokens such as CLS left out). The cyan square is the query patch (none for CLS); the dotted "
          "green box is the digit's ground-truth box (dataset canvases only); in the top-5 bars the true class "
          "is green. Effective maps of refined blocks are what multiplies V: they are not probabilities, can be "
          "negative and above 1, and are drawn on a blue-white-red scale centred on 0; softmax maps are in "
          "[0, 1] (Inferno, black = 0). Each colour bar says what it measures; by default each overlay has its "
          "own range, tick *Same colour scale for A and B* to compare magnitudes.")


def _on_click(slot: int, grid: Tuple[int, int], prefix: int, other: Optional[Tuple[int, Tuple[int, int]]],
              point: ChartClick) -> None:
    """A patch was clicked on slot ``slot``'s overlay: make it the query token (in model A's numbering)."""
    patch = clicked_patch(point, grid)
    if patch is None:
        return
    row, col = patch
    if slot == 1 and other is not None:
        # Clicked on B: translate its patch into A's grid so both panels stay linked.
        a_prefix, a_grid = other
        row = min(int((row + 0.5) * a_grid[0] / grid[0]), a_grid[0] - 1)
        col = min(int((col + 0.5) * a_grid[1] / grid[1]), a_grid[1] - 1)
        grid, prefix = a_grid, a_prefix
    st.session_state["q"] = patch_token(row, col, prefix, grid)


def _options() -> Tuple[float, str, bool]:
    """Display options; their values are seeded from the URL by the sidebar (no defaults passed here)."""
    left, middle, right = st.columns([2, 2, 2])
    opacity = left.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="opacity")
    kind = middle.radio("Map", ["effective", "softmax"], horizontal=True, key="kind",
                        help="effective: the matrix that multiplies V (what a refined block really uses); "
                             "softmax: the block's own softmax(QK^T) before refinement. Equal for vanilla blocks.")
    shared = right.checkbox("Same colour scale for A and B", key="shared",
                            help="One colour range over both overlays, so equal colours mean equal values.")
    return opacity, kind, shared


def _view_settings(ctx: Context, views: Sequence[ModelView], opacity: float, kind: str,
                   shared: bool) -> CompareSettings:
    layers = ctx.layers()
    return CompareSettings(layer_a=layers[0] + 1, layer_b=layers[1] + 1, head=ctx.selection.head,
                           query_a=ctx.selection.q, query_b=map_query(ctx.selection.q, views[0], views[1]),
                           map_kind=kind, opacity=opacity, shared_scale=shared)


def _bundle(ctx: Context, settings: CompareSettings, formats: Sequence[str]) -> bytes:
    """The view's ZIP bundle: every part's figures and tables, built only when the button is clicked (from the
    views in the map store then: see `app.exports.maps_export`)."""
    views = ctx.views()
    labels = bundle_labels(ctx.models)
    names = [m.info.class_names for m in ctx.models]
    contents = ViewContents(
        figures=compare_figures(views, labels, settings, names, ctx.item.box, ctx.item.label),
        tables=compare_tables(views, labels, settings, names),
        settings={"page": "compare", **settings.to_dict()})
    return build_bundle(contents, ctx.models, views, ctx.item, formats, extra={"url_query": ctx.selection.to_url()})


def render(ctx: Context) -> None:
    """Draw the Compare page."""
    st.title("Compare attention")
    if not ctx.ready:
        st.info("Choose two models and an image in the sidebar.")
        return
    views = ctx.views()
    opacity, kind, shared = _options()
    settings = _view_settings(ctx, views, opacity, kind, shared)
    st.caption(f"Query: {token_label(settings.query_a, views[0].num_prefix_tokens, views[0].grid, views[0].class_token_index)}. Click a patch "
               "on either image to make it the query; CLS is token 0 in the sidebar.")
    with st.expander("How to read this page"):
        st.markdown(LEGEND)
    bundle_export(functools.partial(_bundle, ctx, settings),
                  f"refiner-view-{ctx.models[0].label}-vs-{ctx.models[1].label}", key="bundle")

    labels = bundle_labels(ctx.models)
    names = [m.info.class_names for m in ctx.models]
    tab = st.session_state.get("compare-tab") or COMPARE_TABS[0]
    parts = ("overlay", "top5") + ((TAB_PARTS[tab],) if tab in TAB_PARTS else ())
    figs = compare_figures(views, labels, settings, names, ctx.item.box, ctx.item.label, parts=parts)
    layers = (settings.layer_a - 1, settings.layer_b - 1)

    columns = st.columns(2)
    for slot, (column, model, view, layer) in enumerate(zip(columns, ctx.models, views, layers)):
        with column:
            st.subheader(f"{'AB'[slot]}: {model.label}")
            stem = figure_stem("overlay", slot, layer)
            other = (views[0].num_prefix_tokens, views[0].grid) if slot == 1 else None
            show_chart(figs[stem], key=CLICK_KEYS[slot], config={"displayModeBar": False},
                       on_click=functools.partial(_on_click, slot, view.grid, view.num_prefix_tokens, other))
            figure_exports(figs[stem], stem, key=f"exp-overlay-{slot}")
            stem = figure_stem("top5", slot, layer)
            show_chart(figs[stem], key=f"top5-{slot}", config={"displayModeBar": False})
            if not view.exact:
                st.caption(HALF_NOTE)
            for note in model_notes(model, ctx.item):
                if note.warning:
                    st.warning(note.text)
                else:
                    st.caption(note.text)
            figure_exports(figs[stem], stem, key=f"exp-top5-{slot}")

    # Lazy tabs: only the open tab's figures are built and sent to the browser (each chart costs building,
    # serialisation and a plotly render there); the bundle builds every part when it is asked for.
    tabs = st.tabs(list(COMPARE_TABS), key="compare-tab", on_change="rerun")
    for label, container in zip(COMPARE_TABS, tabs):
        if container.open is False:
            continue
        with container:
            _draw_tab(label, ctx, views, figs, layers)


def _draw_tab(label: str, ctx: Context, views: Sequence[ModelView], figs: dict, layers: Tuple[int, int]) -> None:
    if label == "All heads":
        for slot in range(2):
            stem = figure_stem("heads", slot, layers[slot])
            show_chart(figs[stem], key=f"heads-{slot}")
            figure_exports(figs[stem], stem, key=f"exp-heads-{slot}")
    elif label == "N x N matrix":
        for slot, column in enumerate(st.columns(2)):
            stem = figure_stem("matrix", slot, layers[slot])
            with column:
                show_chart(figs[stem], key=f"matrix-{slot}")
                figure_exports(figs[stem], stem, key=f"exp-matrix-{slot}")
    elif label == "Softmax vs effective":
        shown = False
        for slot, model in enumerate(ctx.models):
            stem = figure_stem("softmax-vs-effective", slot, layers[slot])
            if stem not in figs:
                continue
            shown = True
            st.markdown(f"**{'AB'[slot]}: {model.label}**, layer {layers[slot] + 1}: the softmax map, the effective "
                        "map after refinement, and what refinement added (effective - softmax), each on its own "
                        "colour scale.")
            show_chart(figs[stem], key=f"softeff-{slot}")
            figure_exports(figs[stem], stem, key=f"exp-softeff-{slot}")
        if not shown:
            st.info("Neither model refines this layer, so its softmax and effective maps are the same.")
    elif label == "Difference A - B":
        stem = figure_stem("difference", 0, layers[0])
        if stem not in figs:
            st.info(f"The two models have different patch grids ({views[0].grid} vs {views[1].grid}); a "
                    "difference map needs the same grid.")
            return
        show_chart(figs[stem], key="difference", config={"displayModeBar": False})
        figure_exports(figs[stem], stem, key="exp-difference")
    elif label == "Raw maps":
        st.write("Every block's softmax and effective maps of both models on this image, (L, H, N, N) each.")
        for slot, model in enumerate(ctx.models):
            maps_export(functools.partial(_raw_maps, ctx, slot), f"maps-{'ab'[slot]}-{model.label}", key=f"raw-{slot}",
                        label=f"{'AB'[slot]}: {model.label} (NPZ)")


def _raw_maps(ctx: Context, slot: int) -> Dict[str, np.ndarray]:
    """The arrays of the raw-maps NPZ of model ``slot``, from its view in the map store when the button is clicked."""
    view = ctx.views()[slot]
    return {"softmax": view.softmax, "effective": view.effective, "has_softmax": view.has_softmax,
            "refined": view.refined, "probs": view.probs, "input": view.input_tensor, "picture": view.picture}
