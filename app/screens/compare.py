"""Compare: the two models side by side on one image (DESIGN section 6).

Everything drawn here slices the cached captures of `app.cached.get_view`; changing layer, head, query or
any display option re-draws without running a model.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import numpy as np
import streamlit as st

from ..maps import (ModelView, all_heads_grids, head_matrix, map_query, patch_token, query_grid, token_label,
                    top_k)
from ..bundle import ViewContents, build_bundle
from ..charts import show_chart
from ..exports import bundle_export, figure_exports, maps_export
from ..sidebar import Context
from ..views import attention_overlay, clicked_patch, heads_grid, token_matrix, top_k_bars

CLICK_KEYS = ("click-a", "click-b")


def _on_click(slot: int, grid: Tuple[int, int], prefix: int, other: Optional[Tuple[int, Tuple[int, int]]]) -> None:
    """A patch was clicked on slot ``slot``'s overlay: make it the query token (in model A's numbering)."""
    state = st.session_state.get(CLICK_KEYS[slot]) or {}
    points = state.get("selection", {}).get("points", [])
    patch = clicked_patch(points[0], grid) if points else None
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


def _options() -> Tuple[float, str]:
    left, right = st.columns([2, 3])
    opacity = left.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="opacity")
    kind = right.radio("Map", ["effective", "softmax"], horizontal=True, key="kind",
                       help="effective: the matrix that multiplies V (what a refined block really uses); "
                            "softmax: the block's own softmax(QK^T) before refinement. Equal for vanilla blocks.")
    return opacity, kind


def _query_patch(query: int, view: ModelView) -> Optional[Tuple[int, int]]:
    if query < view.num_prefix_tokens:
        return None
    return divmod(query - view.num_prefix_tokens, view.grid[1])


def _grid_rows(label: str, grid_map: np.ndarray) -> List[Dict[str, object]]:
    """Long-format rows (model, row, col, attention) of one query's map over the patches."""
    return [{"model": label, "row": int(r), "col": int(c), "attention": float(v)}
            for (r, c), v in np.ndenumerate(grid_map)]


def render(ctx: Context) -> None:
    """Draw the Compare page."""
    st.title("Compare attention")
    if not ctx.ready:
        st.info("Choose two models and an image in the sidebar.")
        return
    views = ctx.views()
    layers = ctx.layers(views)
    queries = (ctx.selection.q, map_query(ctx.selection.q, views[0], views[1]))
    opacity, kind = _options()
    head_text = ctx.selection.head if not ctx.selection.head.isdigit() else f"head {ctx.selection.head}"
    query_name = token_label(queries[0], views[0].num_prefix_tokens, views[0].grid, views[0].class_token_index)
    st.caption(f"Query: {query_name}. Click a patch on "
               "either image to make it the query; CLS is token 0 in the sidebar.")

    # The bundle button sits at the top but is filled in last, once every figure of the view exists.
    bundle_slot = st.container()
    contents = ViewContents(settings={
        "page": "compare", "layer_a": layers[0] + 1, "layer_b": layers[1] + 1, "head": ctx.selection.head,
        "query_a": queries[0], "query_b": queries[1], "map_kind": kind, "opacity": opacity})

    grids = []
    columns = st.columns(2)
    for slot, (column, model, view, layer, query) in enumerate(zip(columns, ctx.models, views, layers, queries)):
        with column:
            st.subheader(f"{'AB'[slot]}: {model.label}")
            use_kind = kind if view.has_softmax[layer] else "effective"
            matrix = head_matrix(view, layer, ctx.head, use_kind)
            grid_map = query_grid(matrix, query, view.num_prefix_tokens, view.grid)
            grids.append(grid_map)
            title = (f"layer {layer + 1}/{view.depth}, {head_text}, {use_kind}"
                     + (" (refined block)" if view.refined[layer] else ""))
            fig = attention_overlay(view.picture, grid_map, view.patch_size, opacity, title,
                                    query_patch=_query_patch(query, view), box=ctx.item.box,
                                    diverging=bool(grid_map.min() < 0))
            other = (views[0].num_prefix_tokens, views[0].grid) if slot == 1 else None
            show_chart(fig, key=CLICK_KEYS[slot], selection_mode="points", config={"displayModeBar": False},
                            on_select=functools.partial(_on_click, slot, view.grid, view.num_prefix_tokens, other))
            figure_exports(fig, f"overlay-{'ab'[slot]}-layer{layer + 1}", key=f"exp-overlay-{slot}")
            contents.figures[f"overlay-{'ab'[slot]}-layer{layer + 1}"] = fig
            contents.tables[f"query-map-{'ab'[slot]}"] = _grid_rows(model.label, grid_map)
            predictions = top_k(view.probs, model.info.class_names, 5)
            truth = model.info.class_names[ctx.item.label] if ctx.item.label is not None and \
                ctx.item.label < len(model.info.class_names) else None
            bars = top_k_bars(predictions, "Top-5 predictions", truth)
            show_chart(bars, key=f"top5-{slot}", config={"displayModeBar": False})
            figure_exports(bars, f"top5-{'ab'[slot]}", key=f"exp-top5-{slot}")
            contents.figures[f"top5-{'ab'[slot]}"] = bars
            contents.tables.setdefault("top5", []).extend(
                {"slot": "AB"[slot], "model": model.label, "rank": rank, "class_name": name, "probability": prob}
                for rank, (name, prob) in enumerate(predictions, start=1))

    # Lazy tabs: only the open tab's charts are sent to the browser (each chart costs serialisation and a
    # plotly render there); every tab's figure is still built, for the bundle.
    tabs = st.tabs(["All heads", "N x N matrix", "Softmax vs effective", "Difference A - B", "Raw maps"],
                   key="compare-tab", on_change="rerun")
    shown = [tab.open is not False for tab in tabs]  # None (no key/tracking): draw everything
    with tabs[0]:
        for slot, (model, view, layer, query) in enumerate(zip(ctx.models, views, layers, queries)):
            use_kind = kind if view.has_softmax[layer] else "effective"
            maps = all_heads_grids(view, layer, query, use_kind)
            fig = heads_grid(maps, [f"head {h}" for h in range(maps.shape[0])],
                             f"{'AB'[slot]}: {model.label}, layer {layer + 1}, every head",
                             diverging=bool(maps.min() < 0))
            if shown[0]:
                show_chart(fig, key=f"heads-{slot}")
                figure_exports(fig, f"heads-{'ab'[slot]}-layer{layer + 1}", key=f"exp-heads-{slot}")
            contents.figures[f"heads-{'ab'[slot]}-layer{layer + 1}"] = fig
    with tabs[1]:
        for slot, column in enumerate(st.columns(2)):
            view, layer = views[slot], layers[slot]
            use_kind = kind if view.has_softmax[layer] else "effective"
            matrix = head_matrix(view, layer, ctx.head, use_kind)
            labels = [token_label(t, view.num_prefix_tokens, view.grid, view.class_token_index)
                      for t in range(matrix.shape[0])]
            fig = token_matrix(matrix, labels, f"{'AB'[slot]}: layer {layer + 1}, {head_text}, {use_kind}",
                               diverging=bool(matrix.min() < 0))
            if shown[1]:
                with column:
                    show_chart(fig, key=f"matrix-{slot}")
                    figure_exports(fig, f"matrix-{'ab'[slot]}-layer{layer + 1}", key=f"exp-matrix-{slot}")
            contents.figures[f"matrix-{'ab'[slot]}-layer{layer + 1}"] = fig
    with tabs[2]:
        any_refined = False
        for slot, (model, view, layer, query) in enumerate(zip(ctx.models, views, layers, queries)):
            if not view.refined[layer]:
                continue
            any_refined = True
            if shown[2]:
                st.markdown(f"**{'AB'[slot]}: {model.label}**, layer {layer + 1}: the softmax map, the effective "
                            "map after refinement, and what refinement added (effective - softmax).")
            soft = query_grid(head_matrix(view, layer, ctx.head, "softmax"), query, view.num_prefix_tokens,
                              view.grid)
            eff = query_grid(head_matrix(view, layer, ctx.head, "effective"), query, view.num_prefix_tokens,
                             view.grid)
            stack = np.stack([soft, eff, eff - soft])
            fig = heads_grid(stack, ["softmax", "effective", "effective - softmax"],
                             f"{model.label}, layer {layer + 1}", diverging=True, columns=3)
            if shown[2]:
                show_chart(fig, key=f"softeff-{slot}")
                figure_exports(fig, f"softmax-vs-effective-{'ab'[slot]}-layer{layer + 1}",
                               key=f"exp-softeff-{slot}")
            contents.figures[f"softmax-vs-effective-{'ab'[slot]}-layer{layer + 1}"] = fig
        if not any_refined and shown[2]:
            st.info("Neither model refines this layer, so its softmax and effective maps are the same.")
    with tabs[3]:
        if grids[0].shape != grids[1].shape:
            st.info(f"The two models have different patch grids ({grids[0].shape} vs {grids[1].shape}); a "
                    "difference map needs the same grid.")
        else:
            difference = grids[0] - grids[1]
            fig = attention_overlay(views[0].picture, difference, views[0].patch_size, opacity,
                                    f"A - B, layer {layers[0] + 1} vs {layers[1] + 1}, {head_text}",
                                    query_patch=_query_patch(queries[0], views[0]), diverging=True)
            if shown[3]:
                show_chart(fig, key="difference", config={"displayModeBar": False})
                figure_exports(fig, "difference-a-b", key="exp-difference")
            contents.figures["difference-a-b"] = fig
    with bundle_slot:
        bundle_export(functools.partial(build_bundle, contents, ctx.models, views, ctx.item,
                                        extra={"url_query": ctx.selection.to_url()}),
                      f"refiner-view-{ctx.models[0].label}-vs-{ctx.models[1].label}", key="bundle")
    with tabs[4]:
        if not shown[4]:
            return
        st.write("Every block's softmax and effective maps of both models on this image, (L, H, N, N) each.")
        for slot, (model, view) in enumerate(zip(ctx.models, views)):
            maps_export({"softmax": view.softmax, "effective": view.effective, "has_softmax": view.has_softmax,
                         "refined": view.refined, "probs": view.probs, "input": view.input_tensor,
                         "picture": view.picture},
                        f"maps-{'ab'[slot]}-{model.label}", key=f"raw-{slot}", label=f"{'AB'[slot]}: {model.label} (NPZ)")
