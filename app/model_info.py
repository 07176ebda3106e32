"""What a model knows, said beside its predictions: training data, input size, classes, and a warning when the
image is far from what it was trained on (a photo shown to a digit model gets confident digit predictions
that say nothing about the photo). No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from refiner import LoadedModel, ModelInfo

from .images import ImageItem

DIGIT_DATASETS = ("cluttered-mnist", "mnist")


@dataclass(frozen=True)
class Note:
    """One line for the page: ``warning`` lines are drawn as warnings, the others as captions."""

    text: str
    warning: bool = False


def _classes_text(names: Sequence[str]) -> str:
    if not names:
        return "classes not recorded"
    if len(names) <= 12:
        return f"{len(names)} classes: {', '.join(names)}"
    return f"{len(names)} classes ({', '.join(names[:3])}, ..., {names[-1]})"


def _size_text(info: ModelInfo) -> str:
    channels, height, width = info.input_size
    return f"{height} x {width} px, {'grey (1 channel)' if channels == 1 else f'{channels} channels'}"


def training_text(info: ModelInfo) -> str:
    """The training data in words, e.g. "cluttered-mnist (48 px canvases, 2 clutter fragments, digit within 4
    px of the centre)"; "not recorded" when the checkpoint does not say."""
    dataset = info.dataset
    if not dataset:
        return "not recorded in the checkpoint"
    options = dict(info.dataset_options)
    details = []
    if "canvas_size" in options:
        details.append(f"{options['canvas_size']} px canvases")
    if "fragments" in options:
        details.append(f"{options['fragments']} clutter fragments")
    if options.get("max_shift") is not None:
        details.append(f"digit within {options['max_shift']} px of the centre")
    return str(dataset) + (f" ({', '.join(details)})" if details else "")


def model_summary(model: LoadedModel) -> str:
    """One line: what the model was trained on, its input and its classes."""
    return (f"Trained on {training_text(model.info)}; input {_size_text(model.info)}; "
            f"{_classes_text(list(model.info.class_names))}.")


def far_from_training(model: LoadedModel, item: ImageItem) -> Optional[str]:
    """Why ``item`` is far from the model's training data, or None when it is not (or nothing is recorded).

    A digit model (trained on cluttered-mnist or mnist) is only on its own ground on the dataset's test
    canvases; a model trained on anything else is far from its data on those canvases.
    """
    info = model.info
    dataset = str(info.dataset or "")
    if not dataset:
        return None
    is_canvas = item.key.startswith("digit:")
    kind = "upload" if item.key.startswith("upload:") else "photo" if item.key.startswith("photo:") else "image"
    if dataset in DIGIT_DATASETS and not is_canvas:
        return (f"This model was trained on {training_text(info)} and knows only the classes "
                f"{', '.join(info.class_names[:10])}. It sees this {kind} as a {_size_text(info)} image, far "
                "from its training data: its predictions (and attention) say little about the picture.")
    if dataset not in DIGIT_DATASETS and is_canvas:
        return (f"This model was trained on {training_text(info)}; a cluttered-digit canvas is far from "
                "its training data.")
    return None


def model_notes(model: LoadedModel, item: Optional[ImageItem]) -> List[Note]:
    """The lines shown under a model's predictions: its summary, then a warning when the image is far off."""
    notes = [Note(model_summary(model))]
    warning = far_from_training(model, item) if item is not None else None
    if warning:
        notes.append(Note(warning, warning=True))
    return notes
