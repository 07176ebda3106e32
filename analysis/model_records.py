"""Models of an analysis: loading them from `refiner.load_model` sources, unique labels, manifest records.

The CLI and the app name models the same way: `unique_labels` keeps labels as they are unless two repeat, then
puts a slot letter in front of every one ("A-x", "B-x"); the labels name the models in the figures, the tables,
the NPZ arrays and the manifest, so a figure from either front end has the same legend.
"""

from __future__ import annotations

import string
from typing import Any, Dict, List, Sequence

from refiner import LoadedModel
from refiner.hashing import state_dict_sha256


def load_model(spec: str, seed: int = 0, device: str = "cpu") -> LoadedModel:
    """``[LABEL=]SOURCE`` through `refiner.load_model` (every source kind the app's Models page takes).

    Random weights (``random:NAME`` and our registered names) are drawn under ``torch.manual_seed(seed)``, so
    the same command (or ``--manifest``) gives the same weights and the same figures.

    Raises:
        ValueError: the source cannot be loaded (the message says what was expected).
    """
    import refiner

    try:
        return refiner.load_model(spec, seed=seed, device=device)
    except refiner.ModelSourceError as error:
        raise ValueError(f"--model {spec!r}: {error}") from None


def unique_labels(labels: Sequence[str]) -> List[str]:
    """The labels as given when they are distinct, else each with its slot letter in front ("A-x", "B-x")."""
    labels = list(labels)
    if len(set(labels)) == len(labels):
        return labels
    slots = [string.ascii_uppercase[i] if i < 26 else str(i + 1) for i in range(len(labels))]
    return [f"{slot}-{label}" for slot, label in zip(slots, labels)]


def with_unique_labels(models: Sequence[LoadedModel]) -> List[LoadedModel]:
    """The models relabelled by `unique_labels` (the model objects are shared, not copied)."""
    return [m if m.label == label else m.relabel(label)
            for m, label in zip(models, unique_labels([m.label for m in models]))]


def absolute_source(source: str) -> str:
    """A source that reloads the model from anywhere: the local file or folder it reads
    (`refiner.loading.source_path`) made absolute (``ARCH@FILE`` keeps its architecture, ``local-dir:`` its
    prefix); names and hub ids as they are."""
    from refiner.loading import source_path

    local = source_path(source)
    if local is None:
        return source
    arch, at, _rest = source.partition("@")
    if at and arch and "/" not in arch:
        return f"{arch}@{local.resolve()}"
    return f"local-dir:{local.resolve()}" if source.startswith("local-dir:") else str(local.resolve())


def model_record(loaded: LoadedModel, label: str) -> Dict[str, Any]:
    """What a manifest records about one model (the CLI's and the app's bundles alike): its `refiner.ModelInfo`
    record, the label, a source that reloads it from anywhere (`absolute_source`), its preprocessing and
    ``state_sha256`` (the weights' own hash, which ``--manifest`` compares).

    Args:
        loaded: the model.
        label: its label in this analysis.
    """
    info = loaded.info
    return {"label": label, **info.record(), "source": absolute_source(info.source),
            "architecture": info.name, "model_spec": info.config.get("model"),
            "state_sha256": state_dict_sha256(loaded.model),
            "preprocessing": {k: v for k, v in info.data.items() if k != "class_names"}}
