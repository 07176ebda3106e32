"""Models: model cards and loading any other model source in one text box (DESIGN section 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from refiner import ModelSourceError

from .. import cached
from ..exports import table_exports
from ..sidebar import EXTRA_SOURCES, Context
from ..sources import checkpoint_root, missing_default_message, shipped_sources


def _card(source: str) -> None:
    """One checkpoint's config, metrics and size."""
    try:
        model = cached.get_model(source)
    except ModelSourceError as error:
        st.error(f"{source}: {error}")
        return
    info = model.info
    with st.container(border=True):
        st.subheader(model.label)
        left, middle, right = st.columns(3)
        left.metric("Parameters", f"{info.num_params:,}")
        accuracy = info.metrics.get("test_accuracy", info.metrics.get("accuracy"))
        middle.metric("Test accuracy", f"{accuracy:.2%}" if isinstance(accuracy, (int, float)) else "not recorded")
        right.metric("Tokens", f"{info.num_tokens:,}")
        st.caption(f"Architecture `{info.name}` ({info.kind}), source `{source}`, weights: {info.weights}, "
                   f"SHA-256 `{info.weights_sha256[:16]}...`")
        spec = info.config.get("model", {}) if info.kind == "checkpoint" else {}
        fields = {"name": info.name, "kind": info.kind, "input_size": list(info.input_size),
                  "patch_size": list(info.patch_size), "grid_size": list(info.grid_size),
                  "num_prefix_tokens": info.num_prefix_tokens, "has_class_token": info.has_class_token,
                  "num_classes": info.num_classes, **(spec.get("overrides") or {}),
                  **({"refine": spec.get("refine")} if spec.get("refine") else {}),
                  **{f"data.{k}": v for k, v in info.data.items()}}
        rows = [{"field": k, "value": str(v)} for k, v in fields.items()]
        rows += [{"field": f"metrics.{k}", "value": str(v)} for k, v in info.metrics.items()]
        table = pd.DataFrame(rows)
        with st.expander("Config and metrics"):
            st.dataframe(table, hide_index=True)
            table_exports(table, f"card-{model.label}", key=f"card-{source}")


def _add_source(source: str) -> None:
    """Load a new source and offer it in the model slots of this session."""
    if os.path.exists(os.path.expanduser(source)):
        source = str(Path(source).expanduser().resolve())  # one spelling per folder, also in the URL
    try:
        cached.get_model(source)
    except ModelSourceError as error:
        st.error(str(error))
        return
    extra = list(st.session_state.get(EXTRA_SOURCES, []))
    if source not in extra:
        st.session_state[EXTRA_SOURCES] = (extra + [source])[-8:]  # a few short strings at most
    st.success(f"Loaded {source}; choose it in the sidebar's model slots.")


def render(ctx: Context) -> None:
    """Draw the Models page."""
    st.title("Models")
    message = missing_default_message()
    if message:
        st.warning(message)
    st.caption(f"Checkpoints under `{checkpoint_root()}`.")
    for source in list(dict.fromkeys(shipped_sources() + list(st.session_state.get(EXTRA_SOURCES, [])))):
        _card(source)
    st.header("Load another model")
    with st.form("load-source"):
        source = st.text_input(
            "Model source: a folder, a weights file, a timm name or a hub id",
            placeholder="/path/to/checkpoint  ·  vit_small_patch16_224@/path/model_best.pth.tar  ·  "
                        "vit_base_patch16_224  ·  hf-hub:timm/NAME  ·  random:vit_large_patch14_dinov2",
            help="A checkpoint folder of this project, a timm hub folder (save_for_hf) or a Hugging Face "
                 "transformers folder (ViT, DeiT, DINOv2); a weights file (.safetensors, .pth, .pth.tar: read "
                 "without running code) as ARCH@FILE, or alone when it records its architecture (timm "
                 "training checkpoints, the released Refiner-ViT); a timm name with pretrained weights (needs a "
                 "network or timm's cache), hf-hub:ORG/NAME or local-dir:PATH; random:NAME for random weights. "
                 "Paths are on the machine that runs the app; uploads of weights are not accepted.")
        if st.form_submit_button("Load") and source.strip():
            _add_source(source.strip())
