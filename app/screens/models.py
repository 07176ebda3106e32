"""Models: checkpoint cards and loading another checkpoint or a timm model (DESIGN section 6)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ..exports import table_exports
from ..sidebar import EXTRA_SOURCES, Context
from ..sources import SourceError, checkpoint_root, missing_default_message, shipped_sources
from .. import cached


def _card(source: str) -> None:
    """One checkpoint's config, metrics and size."""
    try:
        model = cached.get_model(source)
    except SourceError as error:
        st.error(f"{source}: {error}")
        return
    with st.container(border=True):
        st.subheader(model.label)
        left, right = st.columns(2)
        left.metric("Parameters", f"{model.num_params:,}")
        accuracy = model.metrics.get("test_accuracy", model.metrics.get("accuracy"))
        right.metric("Test accuracy", f"{accuracy:.2%}" if isinstance(accuracy, (int, float)) else "not recorded")
        st.caption(f"Architecture `{model.architecture}`, source `{source}`, weights SHA-256 "
                   f"`{model.weights_sha256[:16]}...`")
        spec = model.config.get("model", {})
        rows = [{"field": k, "value": str(v)} for k, v in {**{"name": spec.get("name")},
                                                           **(spec.get("overrides") or {}),
                                                           **({"refine": spec.get("refine")} if spec.get("refine") else {}),
                                                           **{f"data.{k}": v for k, v in model.data.items()}}.items()]
        rows += [{"field": f"metrics.{k}", "value": str(v)} for k, v in model.metrics.items()]
        table = pd.DataFrame(rows)
        with st.expander("Config and metrics"):
            st.dataframe(table, hide_index=True)
            table_exports(table, f"card-{model.label}", key=f"card-{source}")


def _add_source(source: str) -> None:
    """Load a new source and offer it in the model slots of this session."""
    try:
        cached.get_model(source)
    except SourceError as error:
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
    with st.form("load-dir"):
        directory = st.text_input("Local checkpoint directory (model.safetensors + config.json)",
                                  placeholder="/path/to/checkpoint")
        if st.form_submit_button("Load checkpoint") and directory.strip():
            path = Path(directory.strip()).expanduser()
            if not (path / "model.safetensors").is_file():
                st.error(f"{path} holds no model.safetensors; the app loads weights only as safetensors.")
            else:
                _add_source(f"dir:{path.resolve()}")
    with st.form("load-timm"):
        name = st.text_input("timm model name (pretrained weights; needs a network or timm's cache)",
                             placeholder="vit_small_patch16_224")
        if st.form_submit_button("Load timm model") and name.strip():
            _add_source(f"timm:{name.strip()}")
