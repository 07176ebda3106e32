"""Reading user images safely and turning them into model inputs (DESIGN section 8).

Both the app (uploads) and the CLI (``refiner analyze --images DIR``) read images through this module, so
every bad input gets the same clear message:

    image = load_image(uploaded_bytes_or_path)          # RGB PIL image, or ImageInputError
    x = loaded.info.transform(image)                     # the model's own eval transform (refiner.preprocessing)

What `load_image` guarantees about the returned image:
    - it was one of JPEG, PNG, WebP, BMP, GIF, TIFF (other decoders are never tried: smaller attack surface);
    - the encoded file is at most ``max_bytes`` and the decoded image at most ``max_pixels``, checked from the
      header *before* decoding, so a decompression bomb costs nothing;
    - it is fully decoded (a truncated or corrupt file fails here, not later in the model);
    - mode "RGB", 8 bits per channel: CMYK, palette, 1-bit, 16-bit and float images are converted; alpha is
      composited onto a plain background (white by default, the same for every image);
    - EXIF orientation is applied, so the picture is upright as a viewer shows it;
    - animated GIF/WebP: the first frame;
    - the longest side is at most ``max_side`` (larger images are downscaled, keeping the aspect ratio);
    - ``image.info["input_notes"]`` lists, in words, every such change, for the UI to show.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import BinaryIO, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Decoders Pillow may try, by its names (the JPEG decoder also opens MPO, the multi-picture JPEG of cameras).
ACCEPTED_FORMATS: Tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
ACCEPTED_EXTENSIONS: Tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
MAX_BYTES = 20 * 1024 * 1024          # encoded size limit
MAX_PIXELS = 50_000_000               # decoded size limit (width * height), checked before decoding
MAX_SIDE = 2048                       # larger images are downscaled; far above any model input size
BACKGROUNDS: Dict[str, Tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", BinaryIO]


class ImageInputError(ValueError):
    """An image that cannot be used, with a message meant for the person who supplied it."""


def _human_bytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"


def _read_bytes(source: ImageSource, max_bytes: int) -> Tuple[bytes, str]:
    """The encoded bytes of ``source`` (at most ``max_bytes``) and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "the image"
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.path.basename(path) or path
        if not os.path.isfile(path):
            raise ImageInputError(f"{path}: no such file")
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ImageInputError(f"{name} is {_human_bytes(size)}; the limit is {_human_bytes(max_bytes)}")
        with open(path, "rb") as handle:
            data = handle.read()
    elif hasattr(source, "read"):
        name = os.path.basename(str(getattr(source, "name", ""))) or "the image"
        if hasattr(source, "seek"):
            source.seek(0)
        # Read one byte past the limit so an oversize stream is detected without reading all of it.
        data = source.read(max_bytes + 1)
    else:
        raise TypeError(f"load_image takes bytes, a path or a binary file, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageInputError(f"{name} is larger than the limit of {_human_bytes(max_bytes)}")
    if not data:
        raise ImageInputError(f"{name} is empty")
    return data, name


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit "L", scaling the full range instead of clipping."""
    array = np.asarray(image)
    if image.mode.startswith("I;16") or array.dtype == np.uint16:
        scaled = array.astype(np.float64) / 257.0          # 0..65535 -> 0..255 exactly
    elif image.mode == "F":
        finite = array[np.isfinite(array)]
        top = float(finite.max()) if finite.size else 1.0
        # Float images are usually in [0, 1]; anything else is stretched to its own maximum.
        scaled = np.nan_to_num(array, nan=0.0) * (255.0 if top <= 1.0 else 255.0 / top)
    else:  # "I": 32-bit ints; PNG/TIFF 16-bit greys often open in this mode
        top = int(array.max()) if array.size else 0
        scaled = array.astype(np.float64) / (1.0 if top <= 255 else 257.0 if top <= 65535 else top / 255.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image, background: Tuple[int, int, int], notes: List[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, alpha composited on ``background``."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        notes.append(f"converted {image.mode} (high bit depth) to 8 bits")
        image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            name = next((k for k, v in BACKGROUNDS.items() if v == background), str(background))
            notes.append(f"transparent pixels composited on {name}")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "CMYK":
        notes.append("converted CMYK to RGB")
    elif image.mode not in ("RGB", "L", "1", "P"):
        notes.append(f"converted {image.mode} to RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE, min_side: int = 1, background: str = "white") -> Image.Image:
    """Read, check and normalise one image.

    Args:
        source: encoded bytes, a path, or a binary file object (e.g. a Streamlit upload).
        max_bytes: largest accepted encoded size.
        max_pixels: largest accepted width * height, checked from the header before decoding.
        max_side: longer images are downscaled to this longest side.
        min_side: smallest accepted width and height, e.g. the model's patch size (see `check_min_size`).
        background: "white" or "black": what transparent pixels are composited on.

    Returns:
        A fully decoded, upright, 8-bit RGB image; ``image.info["input_notes"]`` lists what was changed.

    Raises:
        ImageInputError: for anything that is not a usable image, with the reason in words.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
    data, name = _read_bytes(source, max_bytes)
    notes: List[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(
                    f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                    f"{max_pixels / 1e6:.0f} megapixels (very large images, or decompression bombs, are refused)")
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                image.seek(0)
                notes.append(f"animated image with {frames} frames: using the first frame")
            # JPEG can decode directly at a reduced scale, which makes huge photos cheap.
            if image.format in ("JPEG", "MPO") and max(width, height) > 2 * max_side:
                image.draft("RGB", (max_side, max_side))
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageInputError(f"{name} is refused as a possible decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"{name} is not an image in a supported format "
                              f"({', '.join(e.upper() for e in ACCEPTED_EXTENSIONS[1:])})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as error:
        raise ImageInputError(f"{name} is corrupt or truncated and cannot be decoded ({error})") from None

    orientation = _exif_orientation(image)
    try:
        image = ImageOps.exif_transpose(image)
        if orientation not in (None, 1):
            notes.append(f"turned upright from its EXIF orientation ({orientation})")
    except Exception:  # a broken EXIF block must not make a good picture unusable
        notes.append("EXIF data unreadable: orientation not applied")

    image = _to_rgb(image, BACKGROUNDS[background], notes)
    if max(image.size) > max_side:
        before = image.size
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {before[0]}x{before[1]} to {image.size[0]}x{image.size[1]}")
    check_min_size(image, min_side)
    image.info["input_notes"] = notes
    return image


def _exif_orientation(image: Image.Image) -> Optional[int]:
    try:
        return image.getexif().get(0x0112)
    except Exception:
        return None


def check_min_size(image: Image.Image, min_side: int) -> None:
    """Raise `ImageInputError` if the image is smaller than ``min_side`` pixels (e.g. one patch) on a side."""
    if min_side > 1 and min(image.size) < min_side:
        raise ImageInputError(f"the image is {image.size[0]}x{image.size[1]} pixels, smaller than one "
                              f"{min_side}x{min_side} patch of the model; use a larger image")


def small_image_note(image_size: Tuple[int, int], patch_size: Tuple[int, int],
                     input_size: Tuple[int, int]) -> Optional[str]:
    """What to tell the user about an image smaller than one patch of a model, or None for any other image.

    The one rule for tiny images (issue 11): they are accepted, because the model's own transform
    (`refiner.ModelInfo.transform`) resizes every image to its input size anyway, and this note says that a
    picture smaller than one patch was enlarged, so every patch holds less than one of its pixels. The app shows
    it beside the image and on the Dataset page; nothing refuses the image or raises.

    Args:
        image_size: (width, height) of the picture in pixels (PIL's order).
        patch_size: (ph, pw) effective patch stride of the model in input pixels.
        input_size: (H, W) of the model input.

    Returns:
        A sentence for the page, or None when the image is at least one patch on both sides.
    """
    width, height = (int(v) for v in image_size)
    ph, pw = (int(v) for v in patch_size)
    if width >= pw and height >= ph:
        return None
    return (f"the image is {width} x {height} px, smaller than one {ph} x {pw} patch: the model sees it enlarged "
            f"to {int(input_size[0])} x {int(input_size[1])} px (shown as the model saw it), so each patch holds "
            "less than one of its pixels and the attention says little about the picture")
