"""Reading user images safely and turning them into model inputs (DESIGN section 8).

Both the app (uploads) and the CLI (``refiner analyze --images DIR``) read images through this module, so
every bad input gets the same clear message:

    image = load_image(uploaded_bytes_or_path)          # RGB PIL image, or ImageInputError
    data = data_config_for(checkpoint)                   # img_size, in_chans, mean, std, patch_size, ...
    x = preprocess(image, data)                          # (C, H, W) float32, normalised

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
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
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


def _as_pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])


def _first_conv(model: torch.nn.Module) -> Optional[torch.nn.Conv2d]:
    """The convolution that sees the image: the one timm's ``pretrained_cfg["first_conv"]`` names, else the
    first Conv2d registered in ``patch_embed`` (a conv stem registers its input conv before ``proj``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(name, str):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if isinstance(module, torch.nn.Conv2d):
            return module
    patch_embed = getattr(model, "patch_embed", None)
    if isinstance(patch_embed, torch.nn.Module):
        return next((m for m in patch_embed.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return None


def input_channels(model: torch.nn.Module, default: int = 3) -> int:
    """Number of image channels a model takes.

    ``pretrained_cfg["input_size"][0]`` first (timm and our registrations keep it in step with an
    ``in_chans`` override), checked against the first convolution's ``in_channels``; the convolution wins
    when they disagree, since it is what the input actually meets. Not ``patch_embed.proj``: behind a conv
    stem (the official Refiner-ViT) that layer takes the stem's 128 feature channels, not the image.

    Args:
        model: a ViT-like module.
        default: used when the model has neither a pretrained_cfg input size nor a convolution.

    Returns:
        The channel count C of the (B, C, H, W) input.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, Mapping) else None
    from_cfg = int(size[0]) if isinstance(size, (tuple, list)) and len(size) == 3 else None
    conv = _first_conv(model)
    if conv is not None and conv.in_channels != from_cfg:
        return int(conv.in_channels)
    return from_cfg if from_cfg is not None else default


DATA_KEYS = ("dataset", "dataset_options", "img_size", "in_chans", "mean", "std", "class_names", "interpolation")


def saved_data(config: Any) -> Dict[str, Any]:
    """The preprocessing a checkpoint's ``config.json`` records, in the CONTRACT's ``extra["data"]`` shape.

    Reads ``extra["data"]`` (CONTRACT) and also the trainer's flat layout: ``extra["preprocessing"]`` (img_size,
    in_chans, mean, std) with ``extra["class_names"]``, ``extra["dataset"]`` and ``extra["dataset_options"]`` beside
    it, which checkpoints written before the trainer moved to ``extra["data"]`` hold. Without the latter a
    trained checkpoint would silently lose its class names and normalisation. Where both are present,
    ``extra["data"]`` wins.

    Args:
        config: the parsed config.json (anything else gives {}).

    Returns:
        A dict with some of `DATA_KEYS`.
    """
    extra = config.get("extra") if isinstance(config, Mapping) else None
    if not isinstance(extra, Mapping):
        return {}
    flat: Dict[str, Any] = {}
    preprocessing = extra.get("preprocessing")
    if isinstance(preprocessing, Mapping):
        flat.update({k: preprocessing[k] for k in DATA_KEYS if k in preprocessing})
    flat.update({k: extra[k] for k in ("dataset", "dataset_options", "class_names") if k in extra})
    data = extra.get("data")
    if isinstance(data, Mapping):
        flat.update(data)
    return flat


def data_config_for(checkpoint_or_model: Any) -> Dict[str, Any]:
    """The preprocessing dict of a checkpoint or model (CONTRACT: "Checkpoint extra and preprocessing").

    Starts from timm's ``resolve_data_config`` of the model, then takes every key the checkpoint's
    ``config["extra"]["data"]`` gives (the trainer's values win), and adds the model's ``patch_size``.

    Args:
        checkpoint_or_model: a `refiner.Checkpoint` or an ``nn.Module``.

    Returns:
        {"dataset", "img_size": [H, W], "in_chans", "mean": [...], "std": [...], "class_names": [...] or None,
         "patch_size": [ph, pw], "interpolation"}.
    """
    from timm.data import resolve_data_config

    model = getattr(checkpoint_or_model, "model", checkpoint_or_model)
    config = getattr(checkpoint_or_model, "config", None) or {}
    resolved = resolve_data_config({}, model=model)
    patch_embed = getattr(model, "patch_embed", None)
    in_chans = input_channels(model, default=int(resolved["input_size"][0]))
    img = getattr(patch_embed, "img_size", None) or resolved["input_size"][1:]
    data: Dict[str, Any] = {
        "dataset": None,
        "img_size": list(_as_pair(img)),
        "in_chans": in_chans,
        "mean": list(resolved["mean"]),
        "std": list(resolved["std"]),
        "class_names": None,
        "interpolation": str(resolved.get("interpolation", "bicubic")),
    }
    data.update({k: v for k, v in saved_data(config).items() if v is not None})
    data["img_size"] = list(_as_pair(data["img_size"]))
    try:
        from .model_geometry import model_patch_size
        data["patch_size"] = list(model_patch_size(model))
    except TypeError:
        data.setdefault("patch_size", [1, 1])
    return data


def _channel_stats(values: Sequence[float], in_chans: int, what: str) -> List[float]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:  # e.g. timm's RGB defaults on a grey model: the grey value is the mean of the channels
        return [float(np.mean(values))]
    raise ValueError(f"{what} has {len(values)} values for a model with {in_chans} input channels")


_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def fit_to_model(image: Image.Image, data: Mapping[str, Any]) -> Image.Image:
    """The picture exactly as the model sees it, before normalisation.

    Resizes the shorter side to the model's size and centre-crops the longer one (timm's evaluation
    transform with crop_pct 1), so a square model never sees a stretched image, and converts to "L" when the
    model has one input channel. The app draws attention over this image, so pixels and patches line up.

    Raises:
        ImageInputError: if the image is smaller than one patch.
    """
    height, width = _as_pair(data["img_size"])
    check_min_size(image, max(_as_pair(data.get("patch_size", 1))))
    image = image.convert("L" if int(data.get("in_chans", 3)) == 1 else "RGB")
    resample = _RESAMPLING.get(str(data.get("interpolation", "bicubic")), Image.Resampling.BICUBIC)
    return ImageOps.fit(image, (width, height), method=resample, centering=(0.5, 0.5))


def preprocess(image: Image.Image, data: Mapping[str, Any]) -> torch.Tensor:
    """Model input for one image.

    Args:
        image: an image from `load_image` (any size, RGB).
        data: the preprocessing dict (see `data_config_for`).

    Returns:
        (C, H, W) float32 tensor: `fit_to_model`, scaled to [0, 1], then ``(x - mean) / std`` per channel.
    """
    in_chans = int(data.get("in_chans", 3))
    fitted = fit_to_model(image, data)
    array = np.asarray(fitted, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    mean = np.asarray(_channel_stats(data.get("mean", [0.0]), in_chans, "mean"), dtype=np.float32)[:, None, None]
    std = np.asarray(_channel_stats(data.get("std", [1.0]), in_chans, "std"), dtype=np.float32)[:, None, None]
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {std.ravel().tolist()}")
    return torch.from_numpy(np.ascontiguousarray((array - mean) / std))
