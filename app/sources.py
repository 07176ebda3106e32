"""Where the app's models come from, and loading them once per process.

A model *source* is a short string, small enough for the URL:
    "vanilla"            a checkpoint directory under the checkpoint root (default: the shipped pair)
    "dir:/abs/path"      any local checkpoint directory (safetensors only: loading never runs code)
    "timm:vit_small_patch16_224"   a timm model name with pretrained weights (needs a network or timm cache)

The checkpoint root is ``$REFINER_APP_CHECKPOINTS`` if set (tests point it at tiny models), else
``<repo>/checkpoints``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

import refiner
from refiner.image_input import data_config_for

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS_ENV = "REFINER_APP_CHECKPOINTS"
DEFAULT_PAIR = ("vanilla", "refined")


class SourceError(ValueError):
    """A model source that cannot be loaded, with the reason in words."""


def checkpoint_root() -> Path:
    """The directory holding the checkpoints offered in the model slots."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or REPO_ROOT / "checkpoints")


def shipped_sources() -> List[str]:
    """Names of the checkpoint directories under the root (those with a config.json), default pair first."""
    root = checkpoint_root()
    if not root.is_dir():
        return []
    names = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file() and not p.name.startswith("."))
    return sorted(names, key=lambda n: (DEFAULT_PAIR.index(n) if n in DEFAULT_PAIR else len(DEFAULT_PAIR), n))


def missing_default_message() -> Optional[str]:
    """A message when the shipped pair is not there (None when both are)."""
    root = checkpoint_root()
    missing = [name for name in DEFAULT_PAIR if not (root / name / "config.json").is_file()]
    if not missing:
        return None
    return (f"The shipped checkpoints {', '.join(missing)} were not found under {root}. Train them (see the "
            f"README), set {CHECKPOINTS_ENV} to a directory holding checkpoint folders, or load one on the "
            "Models page.")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, shared read-only by every session.

    Attributes:
        source: the source string it was loaded from.
        label: short name for headings.
        model: the module, in eval mode with gradients off.
        data: preprocessing dict (`refiner.image_input.data_config_for`).
        config: the checkpoint's config.json ({} for timm models).
        metrics: the checkpoint's metrics.json ({} when absent).
        weights_sha256: hash of the weights file (or of the state dict for timm models).
        num_params: parameter count.
    """

    source: str
    label: str
    model: nn.Module = field(repr=False)
    data: Dict[str, Any]
    config: Dict[str, Any]
    metrics: Dict[str, Any]
    weights_sha256: str
    num_params: int

    @property
    def class_names(self) -> List[str]:
        """Names of the output classes (indices as text when the checkpoint has none)."""
        names = self.data.get("class_names")
        count = int(getattr(self.model, "num_classes", 0) or 0)
        return list(names) if names else [str(i) for i in range(count)]

    @property
    def architecture(self) -> str:
        """The registered model name."""
        return str((self.config.get("model") or {}).get("name") or getattr(self.model, "default_cfg", {}).get(
            "architecture", type(self.model).__name__))


def source_path(source: str) -> Optional[Path]:
    """The checkpoint directory of a source (None for timm names)."""
    if source.startswith("timm:"):
        return None
    if source.startswith("dir:"):
        return Path(source[4:]).expanduser()
    if "/" in source or source in ("", ".", ".."):
        raise SourceError(f"{source!r} is not a checkpoint name; use dir:/path for a directory")
    return checkpoint_root() / source


def _freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the object is shared by all sessions and must never change."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def load_source(source: str) -> LoadedModel:
    """Load a model source (uncached; the app wraps this in ``st.cache_resource``).

    Raises:
        SourceError: unknown name, missing or broken checkpoint, timm weights unavailable.
    """
    path = source_path(source)
    if path is None:
        name = source[5:]
        try:
            model = refiner.create_model(name, pretrained=True)
        except ValueError as error:
            raise SourceError(str(error)) from None
        except Exception as error:  # no network / no cached weights: say so instead of a traceback
            raise SourceError(f"could not get pretrained weights for {name}: {error}") from None
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        config, metrics, sha = {"model": {"name": name}}, {}, digest.hexdigest()
        data = data_config_for(model)
        label = name
    else:
        try:
            checkpoint = refiner.load_checkpoint(path)
        except refiner.CheckpointError as error:
            raise SourceError(str(error)) from None
        model, config, metrics = checkpoint.model, checkpoint.config, checkpoint.metrics
        sha = str(config.get("weights_sha256", ""))
        data = data_config_for(checkpoint)
        label = path.name if not source.startswith("dir:") else f"{path.name} ({path.parent})"
    model = _freeze(model)
    return LoadedModel(source=source, label=label, model=model, data=data, config=config, metrics=metrics,
                       weights_sha256=sha, num_params=sum(p.numel() for p in model.parameters()))


def describe_checkpoint_dir(path: Path) -> Dict[str, Any]:
    """config.json and metrics.json of a checkpoint directory without loading weights (for cards)."""
    out: Dict[str, Any] = {"path": str(path)}
    for name in ("config.json", "metrics.json"):
        try:
            out[name.split(".")[0]] = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            out[name.split(".")[0]] = {}
    return out


@torch.no_grad()
def predict(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Class probabilities (num_classes,) for one preprocessed (C, H, W) input."""
    return loaded.model(x[None]).softmax(-1)[0]
