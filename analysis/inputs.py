"""Inputs of an analysis, prepared for each model: image files or uploads, and dataset test splits.

The CLI (``refiner analyze --images/--dataset``) and the app's Dataset page prepare their images here, so
both feed the models the same tensors: a picture goes through each model's own evaluation transform
(`refiner.ModelInfo.transform`); a dataset canvas already at a model's input size is only normalised (no
uint8 round trip), one at another size goes through that model's transform like a picture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from refiner import LoadedModel, ModelInfo
from refiner.hashing import sha256_of_file
from refiner.image_input import small_image_note

Note = Callable[[str], None]
Box = Tuple[float, float, float, float]


@dataclass
class PreparedImage:
    """One image prepared for every model of an analysis.

    Attributes:
        name: the name of its outputs (tables/images/<name>.csv, ...).
        inputs: model label -> (C, H, W) input tensor (each model's own preprocessing).
        picture: (H, W) or (H, W, 3) picture for overlays, as the first model sees it.
        box: object box in the first model's input pixels, or None.
        label: the true class, or None.
        record: what the manifest records about the image (path and hash, or dataset and index).
    """

    name: str
    inputs: Dict[str, torch.Tensor]
    picture: np.ndarray
    box: Optional[Box]
    label: Optional[int]
    record: Dict[str, Any] = field(default_factory=dict)


def prepare_image(image: Image.Image, models: Sequence[LoadedModel], name: str,
                  box_pixels: Optional[Sequence[float]] = None, record: Optional[Dict[str, Any]] = None
                  ) -> PreparedImage:
    """A decoded picture through each model's transform.

    Args:
        image: the picture (any size; `refiner.image_input.load_image` output).
        models: the models, the first one's view gives the overlay picture and the box's pixels.
        name: the output name.
        box_pixels: (x0, y0, x1, y1) in the picture's own pixels, or None.
        record: manifest record of the image.

    Raises:
        ValueError: a model's transform refuses the image.
    """
    reference = models[0].info
    inputs = {m.label: m.info.transform(image) for m in models}
    picture = np.asarray(reference.view(image))
    box = reference.preprocessing.map_box(box_pixels, image.size) if box_pixels is not None else None
    return PreparedImage(name=name, inputs=inputs, picture=picture, box=box, label=None, record=dict(record or {}))


def enlarged_notes(models: Mapping[str, ModelInfo], image_size: Tuple[int, int]) -> List[str]:
    """Notes for a picture smaller than one patch of some models (`refiner.image_input.small_image_note`, the
    one rule for tiny images): one per distinct note, naming the models it applies to ("A and B: The ...").

    Args:
        models: name to show (a slot letter, a label) -> the model's description.
        image_size: (width, height) of the picture.
    """
    by_text: Dict[str, List[str]] = {}
    for name, info in models.items():
        note = small_image_note(image_size, info.patch_size, info.input_size[1:])
        if note:
            by_text.setdefault(note, []).append(name)
    return [f"{' and '.join(names)}: {text[0].upper()}{text[1:]}." for text, names in by_text.items()]


# ------------------------------------------------------------------------------------------- image folders
def check_images_folder(folder: Path) -> None:
    """Raise `ValueError` when ``--images`` is missing or a file (checked before any model loads)."""
    if not folder.exists():
        raise ValueError(f"--images {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"--images {folder} is a file; give the folder that holds the images")


def folder_image_files(folder: Path) -> List[Path]:
    """The image files of ``--images`` (sorted by name).

    Raises:
        ValueError: ``folder`` is missing, is a file, or holds no image files.
    """
    from refiner.image_input import ACCEPTED_EXTENSIONS

    check_images_folder(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in ACCEPTED_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(ACCEPTED_EXTENSIONS)}) in {folder}")
    return files


def read_boxes(path: Optional[Path]) -> Dict[str, List[float]]:
    """``--boxes``: {file name: [x0, y0, x1, y1]}.

    Raises:
        ValueError: the file is missing, not JSON, or not such a mapping (naming the first bad entry).
    """
    if path is None:
        return {}
    try:
        boxes = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"--boxes {path} cannot be read as JSON ({error})") from None
    if not isinstance(boxes, dict):
        raise ValueError(f"--boxes {path} must map file names to [x0, y0, x1, y1]")
    for name, box in boxes.items():
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not
                                                                 isinstance(v, bool) for v in box)):
            raise ValueError(f"--boxes {path}: the box of {name!r} must be [x0, y0, x1, y1], not {str(box)[:80]}")
    return boxes


def iter_folder_images(folder: Path, models: Sequence[LoadedModel], boxes: Mapping[str, Sequence[float]],
                       note: Note, listed: Optional[Sequence[Any]] = None) -> Iterator[PreparedImage]:
    """Images of a folder (sorted by name) read safely; unreadable files are skipped with a note, and an image
    smaller than one patch of a model is analysed enlarged with `enlarged_notes`' note.

    Args:
        folder: ``--images``.
        models: the loaded models (each gets its own input tensor).
        boxes: file name -> box in original image pixels.
        note: where messages go (the CLI prints them on stderr).
        listed: `analysis.manifest_check.ListedImage` s of a manifest: exactly these files under their recorded
            names, and one that cannot be read is an error instead of being skipped.
    """
    from refiner.image_input import ImageInputError, load_image

    from .output_folder import unique_image_names

    if listed is None:
        names = unique_image_names(folder_image_files(folder))
    else:
        names = {image.path: image.name for image in listed}
    for path, name in names.items():
        try:
            image = load_image(path)
            prepared = prepare_image(image, models, name, boxes.get(path.name),
                                     {"path": str(path.resolve()), "sha256": sha256_of_file(path)})
        except (ImageInputError, ValueError) as error:
            if listed is not None:
                raise ValueError(f"{path}, listed in the manifest, cannot be analysed now: {error}") from None
            note(f"skipping {path.name}: {error}")
            continue
        for text in enlarged_notes({m.label: m.info for m in models}, image.size):
            note(f"{path.name}: {text}")
        prepared.record["box_input_pixels"] = list(prepared.box) if prepared.box else None
        yield prepared


def prepared_batches(items: Sequence[PreparedImage]) -> Iterator[Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor],
                                                                       Optional[torch.Tensor]]]:
    """One `analysis.dataset.analyze_dataset` batch per image: (label -> (1, C, H, W), labels, boxes (1, 4)).

    One image per batch keeps models with differing preprocessing (and input sizes) simple.
    """
    for item in items:
        labels = None if item.label is None else torch.tensor([item.label])
        yield ({label: tensor[None] for label, tensor in item.inputs.items()}, labels,
               None if item.box is None else torch.tensor([item.box]))


# ------------------------------------------------------------------------------------------------ datasets
def build_eval_dataset(name: str, split: str, root: Optional[Path], models: Sequence[LoadedModel]):
    """The dataset, its `refiner.data.DatasetInfo` and its options (cluttered-mnist canvases are those of the
    first model trained on it, at the first model's input size, so they match its training canvases).

    Raises:
        refiner.data.DatasetNotFoundError, ValueError: the dataset is missing or unknown.
    """
    from refiner.data import build_dataset, canonical_name, canvas_options_for, dataset_info

    key = canonical_name(name)
    options: Dict[str, Any] = {}
    if key == "cluttered-mnist":
        trained = [m.data for m in models if m.data.get("dataset") and canonical_name(m.data["dataset"]) == key]
        options = canvas_options_for({**(trained[0] if trained else {}), "img_size": models[0].data["img_size"]})
    return build_dataset(key, split, root, **options), dataset_info(key, root, **options), options


def dataset_preprocess(model: LoadedModel, sample_shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """How dataset images of shape ``sample_shape`` (C, H, W, values in [0, 1]) become this model's input.

    At the model's input size: ``(x - mean) / std`` of its preprocessing, exactly. Any other size or channel
    count: each image as an 8-bit picture through the model's own transform (as a sample picture would go).

    Returns:
        (B, C, H, W) -> (B, C', H', W') float32.
    """
    from refiner.preprocessing import Preprocessing

    if tuple(int(v) for v in sample_shape) == tuple(int(v) for v in model.info.input_size):
        prep = Preprocessing.from_mapping(model.data)
        mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
        std = torch.tensor(prep.std).view(1, -1, 1, 1)
        return lambda x: (x - mean) / std

    def through_transform(x: torch.Tensor) -> torch.Tensor:
        pixels = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pictures = [Image.fromarray(p[..., 0], "L").convert("RGB") if p.shape[-1] == 1 else Image.fromarray(p)
                    for p in pixels]
        return torch.stack([model.info.transform(p) for p in pictures])

    return through_transform


def dataset_item(dataset: Any, info: Any, index: int, split: str, preprocess: Mapping[str, Callable]
                 ) -> PreparedImage:
    """Image ``index`` of a dataset prepared for each model (for the per-image analysis of the first images)."""
    sample = dataset[index]
    image = sample[0]
    box = tuple(float(v) for v in sample[2]) if info.has_boxes and len(sample) > 2 else None
    return PreparedImage(name=f"{info.name}-{split}-{index:05d}",
                         inputs={label: fn(image[None])[0] for label, fn in preprocess.items()},
                         picture=image.numpy(), box=box, label=int(sample[1]),
                         record={"dataset": info.name, "split": split, "index": index})
