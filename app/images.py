"""Images the app can show: sample photos, the dataset's test canvases, and uploads.

An image is named by a short *key*, small enough for the URL:
    "photo:astronaut"   one of scikit-image's bundled photos
    "digit:17"          canvas 17 of the fixed cluttered-MNIST test set (with its digit's box and label)
    "upload:<sha256 prefix>"   an upload; the bytes stay in the session's own upload widget, never shared
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np
from PIL import Image

from refiner.hashing import sha256_hex
from refiner.image_input import load_image

PHOTOS: Tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera")


@dataclass(frozen=True)
class ImageItem:
    """One image with what is known about it.

    Attributes:
        key: the image key.
        image: RGB picture (any size; `refiner.ModelInfo.view` makes the model's view).
        label: the true class for dataset canvases, else None.
        box: (x0, y0, x1, y1) of the digit in canvas pixels (exclusive ends), else None.
        notes: what `load_image` changed (uploads).
        sha256: hash of the encoded bytes (uploads) or of the pixels (samples), for the export manifest.
    """

    key: str
    image: Image.Image
    label: Optional[int] = None
    box: Optional[Tuple[int, int, int, int]] = None
    notes: Tuple[str, ...] = ()
    sha256: str = ""


def test_canvas_count(canvas: Optional[str] = None) -> int:
    """Canvases in the test set drawn with ``canvas`` (`canvas_key`; the dataset's default when it says none)."""
    from refiner.data.cluttered_mnist import ClutteredMNISTOptions

    options = json.loads(canvas) if canvas else {}
    return int(options.get("test_size", ClutteredMNISTOptions().test_size))


def sample_keys(canvas: Optional[str] = None) -> List[str]:
    """Keys of every built-in sample: all test canvases first (the shipped models' own domain), then photos."""
    return [f"digit:{i}" for i in range(test_canvas_count(canvas))] + [f"photo:{name}" for name in PHOTOS]


def upload_key(data: bytes) -> str:
    """The key of an upload: a prefix of its SHA-256 (content-addressed, so equal files share caches)."""
    return "upload:" + sha256_hex(data)[:20]


def _pixels_sha(image: Image.Image) -> str:
    return sha256_hex(np.asarray(image), repr(image.size))


def canvas_key(model_data: Optional[Mapping[str, Any]]) -> str:
    """How to draw digit samples for model A, as canonical JSON (small and hashable: a cache key).

    A model trained on cluttered-mnist gets the canvas options its checkpoint recorded, so the samples are
    canvases of its own test set; any other model (or none yet: 48 px) gets the default geometry at its input
    size (`refiner.data.canvas_options_for`).

    Args:
        model_data: the model's preprocessing dict (`refiner.ModelInfo.data`), or None.
    """
    from refiner.data import canvas_options_for

    return json.dumps(canvas_options_for(model_data or {"img_size": 48}), sort_keys=True)


def sample_item(key: str, canvas: str) -> ImageItem:
    """Build a sample image from its key; digit canvases are drawn with the options of `canvas_key`.

    Raises:
        KeyError: for a key that names no sample.
    """
    kind, _, name = key.partition(":")
    if kind == "photo" and name in PHOTOS:
        import skimage.data  # imported late: it is only needed for photos

        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        return ImageItem(key=key, image=image, sha256=_pixels_sha(image))
    if kind == "digit" and name.isdigit():
        from refiner.data.cluttered_mnist import ClutteredMNIST

        dataset = ClutteredMNIST("test", **json.loads(canvas))
        index = int(name)
        if index >= len(dataset):
            raise KeyError(key)
        canvas, label, box = dataset[index]
        pixels = (canvas[0].numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L").convert("RGB")
        return ImageItem(key=key, image=image, label=int(label), box=tuple(int(v) for v in box.tolist()),
                         sha256=_pixels_sha(image))
    raise KeyError(key)


def upload_item(data: bytes) -> ImageItem:
    """Decode an upload with every safety check of `refiner.image_input.load_image`.

    Raises:
        refiner.image_input.ImageInputError: with a message for the user.
    """
    image = load_image(data)
    return ImageItem(key=upload_key(data), image=image, notes=tuple(image.info.get("input_notes", ())),
                     sha256=sha256_hex(data))


def describe_key(key: str, upload_names: Optional[Mapping[str, str]] = None) -> str:
    """Human label of an image key for pickers (an upload by its file name when ``upload_names`` has it)."""
    kind, _, name = key.partition(":")
    if kind == "upload" and upload_names and key in upload_names:
        return f"Upload: {upload_names[key]}"
    if kind == "digit":
        return f"Cluttered digit #{name}"
    if kind == "photo":
        return f"Photo: {name}"
    if kind == "upload":
        return f"Upload {name[:8]}"
    return key
