"""One frozen description of a loaded model, made once by `refiner.load_model` and passed on.

The app, ``refiner analyze``, ``refiner eval`` and the Python API read everything they need to know about a
model from here (name, where the weights came from and their hash, input size and preprocessing, class
names, token geometry, what it was trained on) instead of re-reading checkpoint dicts in several places.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from PIL import Image
from torch import nn

from .preprocessing import Preprocessing


def frozen_mapping(value: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    """A read-only copy of a JSON-like mapping (a round trip through JSON detaches every nested object)."""
    return MappingProxyType(json.loads(json.dumps(dict(value or {}), default=str)))


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, how to feed it, and where it came from.

    Attributes:
        name: architecture name (a timm / refiner registry name, ``transformers:<model_type>``, ...).
        source: the source string it was loaded from (what `refiner.load_model` was given).
        kind: "checkpoint" (our folder), "timm" (name, pretrained), "random" (name, random weights),
            "timm-hub" (``hf-hub:`` / ``local-dir:`` / hub-format folder), "state-dict" (bare weights file plus an
            architecture), "official" (released Refiner-ViT ``.pth``), "transformers" (Hugging Face folder).
        weights: the weights in words ("checkpoint folder ...", "random init, seed 0", a file path).
        weights_sha256: SHA-256 of the weights file, or of the state dict where there is no file.
        num_params: parameter count.
        num_classes: classifier outputs (0 for a backbone without a head).
        class_names: one name per output (indices as text when none were recorded).
        preprocessing: the model's own evaluation preprocessing.
        patch_size: (ph, pw) effective stride of the patch embedding in input pixels.
        grid_size: (Gh, Gw) patch grid at the input size.
        num_prefix_tokens: K, tokens before the patches (class, distillation, registers).
        has_class_token: whether token 0 is a class token (False for register-only / GAP models).
        dataset: the dataset it was trained on where recorded (our checkpoints), else None.
        dataset_options: options of that dataset as recorded (read-only).
        config: the checkpoint's config.json or the hub config (read-only; {} when none).
        metrics: the checkpoint's metrics.json (read-only; {} when none).
    """

    name: str
    source: str
    kind: str
    weights: str
    weights_sha256: str
    num_params: int
    num_classes: int
    class_names: Tuple[str, ...]
    preprocessing: Preprocessing
    patch_size: Tuple[int, int]
    grid_size: Tuple[int, int]
    num_prefix_tokens: int
    has_class_token: bool
    dataset: Optional[str] = None
    dataset_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)

    @property
    def input_size(self) -> Tuple[int, int, int]:
        """(C, H, W) of the model input."""
        return self.preprocessing.input_size

    @property
    def num_tokens(self) -> int:
        """N = K + Gh * Gw at the input size."""
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def transform(self, image: Image.Image) -> torch.Tensor:
        """The model input (C, H, W) float32 for one picture: the model's own evaluation transform."""
        return self.preprocessing.transform(image)

    def view(self, image: Image.Image) -> Image.Image:
        """The picture as the model sees it (resized and cropped, before normalisation)."""
        return self.preprocessing.view(image)

    @property
    def data(self) -> Dict[str, Any]:
        """The preprocessing and data record as one plain dict (the shape manifests and older callers read):
        timm's data-config keys, ``img_size``, ``in_chans``, ``patch_size``, ``class_names``, ``dataset``,
        ``dataset_options``."""
        return {**self.preprocessing.as_dict(), "patch_size": list(self.patch_size),
                "class_names": list(self.class_names), "dataset": self.dataset,
                "dataset_options": dict(self.dataset_options)}

    def record(self) -> Dict[str, Any]:
        """JSON-ready description for manifests (everything but the config and metrics)."""
        return {"name": self.name, "source": self.source, "kind": self.kind, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "num_params": self.num_params,
                "num_classes": self.num_classes, "preprocessing": self.preprocessing.as_dict(),
                "patch_size": list(self.patch_size), "grid_size": list(self.grid_size),
                "num_prefix_tokens": self.num_prefix_tokens, "has_class_token": self.has_class_token,
                "dataset": self.dataset, "dataset_options": dict(self.dataset_options)}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and its description (what `refiner.load_model` returns).

    Attributes:
        model: the module in eval mode.
        info: its frozen description.
        label: a short name for headings and file names (default: from the source).
    """

    model: nn.Module = field(repr=False)
    info: ModelInfo
    label: str = ""

    @property
    def source(self) -> str:
        """Shortcut for ``info.source`` (the app keys its caches by it)."""
        return self.info.source

    @property
    def data(self) -> Dict[str, Any]:
        """Shortcut for ``info.data`` (the plain preprocessing dict)."""
        return self.info.data

    def relabel(self, label: str) -> "LoadedModel":
        """The same model under another label (the model object is shared, not copied)."""
        return replace(self, label=label)
