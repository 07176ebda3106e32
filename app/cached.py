"""The app's caches: models once per process, per-image arrays bounded, all read-only after creation.

Several browser sessions share these caches; nothing in them is ever mutated (models are frozen in eval
mode, arrays are returned as copies by ``st.cache_data``), and every cache has ``max_entries`` so memory
stays bounded however many images are looked at.
"""

from __future__ import annotations

from typing import Optional

import streamlit as st

from .images import ImageItem, sample_item, upload_item
from .maps import ModelView, run_model
from .sources import LoadedModel, load_source


@st.cache_resource(max_entries=6, show_spinner="Loading model...")
def get_model(source: str) -> LoadedModel:
    """The model of a source, loaded once per process (raises `refiner.ModelSourceError`)."""
    return load_source(source)


@st.cache_data(max_entries=64, show_spinner=False)
def get_sample(key: str, canvas: str) -> ImageItem:
    """A built-in sample image, digits drawn as `app.images.canvas_key` says (KeyError for an unknown key)."""
    return sample_item(key, canvas)


@st.cache_data(max_entries=16, show_spinner=False)
def get_upload(data: bytes) -> ImageItem:
    """A decoded upload (raises `refiner.image_input.ImageInputError`)."""
    return upload_item(data)


@st.cache_data(max_entries=32, show_spinner="Running the model...")
def get_view(source: str, image_key: str, upload: Optional[bytes], canvas: str) -> ModelView:
    """Captured maps of one model on one image: the forward pass runs once per (model, image).

    The image is named by its key (and, for uploads, its bytes, which are also what the key hashes), so
    changing the layer, head or query token never reaches this function's body again.
    """
    item = get_upload(upload) if upload is not None else get_sample(image_key, canvas)
    return run_model(get_model(source), item.image)
