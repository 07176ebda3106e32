"""Running a model on one image with attention capture (no Streamlit here).

`run_model` is the only place the app runs a forward pass for the Compare and Analysis pages; the app keeps
its result in the byte-bounded map store per (model source, image key), so changing layer, head or query only
re-slices its arrays with the helpers of `analysis.compare_view`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import refiner
from analysis.compare_view import ModelView
from refiner import LoadedModel


@torch.no_grad()
def run_model(loaded: LoadedModel, image: Image.Image) -> ModelView:
    """One forward pass with attention capture.

    Raises:
        refiner.image_input.ImageInputError: if the image is smaller than one patch of the model.
    """
    x = loaded.info.transform(image)
    picture = np.asarray(loaded.info.view(image).convert("RGB"))
    device = next(loaded.model.parameters()).device
    with refiner.capture_attention(loaded.model) as rec:
        logits = loaded.model(x[None].to(device))
    meta = rec.meta
    effective = np.stack([m[0].cpu().numpy() for m in rec.effective]).astype(np.float32)
    has_softmax = np.array([m is not None for m in rec.softmax])
    softmax = np.stack([(s if s is not None else e)[0].cpu().numpy() for s, e in zip(rec.softmax, rec.effective)])
    return ModelView(probs=logits.float().softmax(-1)[0].cpu().numpy(), softmax=softmax.astype(np.float32),
                     effective=effective, has_softmax=has_softmax, refined=np.array(meta.refined),
                     num_prefix_tokens=int(meta.num_prefix_tokens), grid=tuple(meta.grid_size),
                     patch_size=tuple(meta.patch_size), picture=picture, input_tensor=x.numpy(),
                     class_token_index=meta.class_token_index)
