"""refiner: vanilla and refined Vision Transformers, attention capture and checkpoints.

The public API:
    load_model                     the one way in: checkpoint folders, timm names and hub ids, weights files,
                                   the released Refiner-ViT, transformers folders -> LoadedModel(model, info)
    ModelInfo, Preprocessing       the frozen description of a loaded model and its evaluation transform
    create_model, list_models      build any timm ViT or one of our registered (refined) models
    refine                         turn a timm ViT into a paper-mode refined one
    capture_attention              context manager recording every block's softmax and effective maps
    save_checkpoint, load_checkpoint, load_training_state, CheckpointError
    convert_official_state_dict, load_official_checkpoint   the released Refiner-ViT weights
"""

__version__ = "0.1.0"  # the one version: pyproject.toml reads it from here

from .capture import AttentionCapture, CaptureMismatchError, capture_attention
from .convert_official import convert_official_state_dict, load_official_checkpoint
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_training_state, save_checkpoint
from .loading import ModelSourceError, load_model
from .model_geometry import AttentionMeta
from .model_info import LoadedModel, ModelInfo
from .preprocessing import Preprocessing
from . import official_refiner_vit  # noqa: F401  (registers refiner_vit_s/m/l with timm)
from .refine import refine
from .refined_attention import RefinedAttention
from .registry import create_model, list_models

__all__ = [
    "AttentionCapture", "AttentionMeta", "CaptureMismatchError", "Checkpoint", "CheckpointError", "LoadedModel",
    "ModelInfo", "ModelSourceError", "Preprocessing", "load_model",
    "RefinedAttention", "capture_attention", "convert_official_state_dict", "create_model", "list_models", "load_checkpoint",
    "load_official_checkpoint", "load_training_state", "refine", "save_checkpoint",
]
