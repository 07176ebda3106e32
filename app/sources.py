"""Where the app's models come from, and loading them once per process.

A model *source* is a short string, small enough for the URL. The shipped checkpoint names ("vanilla",
"refined", any folder under the checkpoint root) are the app's own shorthand; every other string is a
`refiner.load_model` source, exactly as ``refiner analyze --model`` takes it: a checkpoint or hub folder,
a weights file (``ARCH@FILE``), a timm name or ``hf-hub:`` id, ``random:NAME``. (``dir:PATH`` and
``timm:NAME`` from older links still work.) Uploaded weights are never read: only paths on the server.

The checkpoint root is ``$REFINER_APP_CHECKPOINTS`` if set (tests point it at tiny models), else the
shipped pair (`refiner.shipped.checkpoint_root`: ``<repo>/checkpoints``, or the installed package data).
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from torch import nn

import refiner
from refiner import LoadedModel
from refiner.loading import source_path
from refiner.shipped import CHECKPOINTS_ENV, DEFAULT_PAIR, checkpoint_root


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


def _freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the object is shared by all sessions and must never change."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def app_device() -> str:
    """The device the app's models run on: ``refiner app --device`` (``$REFINER_APP_DEVICE``), default the CPU."""
    return os.environ.get("REFINER_APP_DEVICE") or "cpu"


def load_source(source: str, device: Optional[str] = None) -> LoadedModel:
    """Load a model source (uncached; the app wraps this in ``st.cache_resource``) on ``device`` (default
    `app_device`).

    Returns:
        `refiner.LoadedModel` whose ``info.source`` is the app's source string (the cache key and URL value).

    Raises:
        refiner.ModelSourceError: whatever `refiner.load_model` refuses, with its message.
    """
    source = source.strip()
    target = str(checkpoint_root() / source) if source in shipped_sources() else source
    loaded = refiner.load_model(target, device=device or app_device())
    path = source_path(source)
    label = source if source in shipped_sources() else loaded.label
    if path is not None and source not in shipped_sources():
        label = f"{loaded.label} ({path.parent})" if path.is_dir() else loaded.label
    _freeze(loaded.model)
    return dataclasses.replace(loaded, info=dataclasses.replace(loaded.info, source=source), label=label)
