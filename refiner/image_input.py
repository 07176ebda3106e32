"""Reading user images safely and turning them into model inputs (DESIGN section 8).

Both the app (uploads) and the CLI (``refiner analyze --images DIR``) read images through this module, so
every bad input gets the same clear message:

    image = load_image(uploaded_bytes_or_path)          # RGB PIL image, or ImageInputError
    x = loaded.info.transform(image)                     # the model's own eval transform (refiner.preprocessing)

What `load_image` guarantees about the returned image:
    - it was one of JPEG, PNG, WebP, BMP, GIF, TIFF (other decoders are never tried: smaller attack surface);
    - the encoded file is at most ``max_bytes`` and the decoded image at most ``max_pixels``, checked from the
      header *before* decoding, so a decompression bomb costs nothing;
    - it is fully decoded (a truncated or corrupt file fails here, not later in the model); a file that starts
      like an accepted format but does not decode is called damaged, not "not an image";
    - decoding is bounded: pixels by ``max_pixels`` (our limit, also where Pillow's own bomb check fires first),
      progressive JPEG scans by `MAX_JPEG_SCANS` and scans x pixels by `MAX_JPEG_SCAN_PIXELS` (each scan costs
      a pass over the whole frame), huge JPEGs are decoded at a reduced DCT scale (``draft``), and every
      conversion runs after downscaling, so memory stays near one decoded frame (at most 4 bytes per pixel);
    - mode "RGB", 8 bits per channel: CMYK, palette, 1-bit, 16-bit and float images are converted; alpha is
      composited onto a plain background (white by default, the same for every image);
    - EXIF orientation (2-8) is applied, so the picture is upright as a viewer shows it;
    - animated GIF/WebP and multi-page TIFF: the first frame (a damaged later page only changes the note);
    - the longest side is at most ``max_side`` (larger images are downscaled, keeping the aspect ratio);
    - no other exception than `ImageInputError` comes out of any file (a seeded fuzz test checks it);
    - ``image.info["input_notes"]`` lists, in words, every such change, for the UI to show.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from typing import BinaryIO, Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

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
        data, name = bytes(source), "the file"  # the caller knows its name (e.g. "photo.png: ...")
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        name = os.path.basename(path) or path
        if not os.path.isfile(path):
            raise ImageInputError(f"{path}: no such file")
        try:
            size = os.path.getsize(path)
            if size > max_bytes:
                raise ImageInputError(f"{name} is {_human_bytes(size)}; the limit is {_human_bytes(max_bytes)}")
            with open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)  # the file may have grown since it was measured
        except OSError as error:  # no permission, a device, a file removed meanwhile
            raise ImageInputError(f"{path} cannot be read: {error.strerror or error}") from None
    elif hasattr(source, "read"):
        name = os.path.basename(str(getattr(source, "name", ""))) or "the file"
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


def _value_top(image: Image.Image) -> float:
    """The largest value of a high-bit-depth grey image, read before downscaling (resampling rings above it).

    Computed by Pillow in C (`getextrema`), so the full frame is never copied into a numpy array.
    """
    if image.mode.startswith("I;16"):
        return 65535.0
    low, high = image.getextrema()
    if image.mode == "F" and not (math.isfinite(low) and math.isfinite(high)):
        finite = np.asarray(image)
        finite = finite[np.isfinite(finite)]
        return float(finite.max()) if finite.size else 1.0
    return float(high)


def _to_8bit(image: Image.Image, top: float) -> Image.Image:
    """16-bit, 32-bit integer and float grey images -> 8-bit "L", scaling the full range instead of clipping.

    Args:
        image: a (downscaled) "I;16*", "I" or "F" image.
        top: its largest value before downscaling (`_value_top`), which decides the scale.
    """
    array = np.asarray(image, dtype=np.float32)
    if image.mode.startswith("I;16"):
        scale = 1.0 / 257.0                                   # 0..65535 -> 0..255 exactly
    elif image.mode == "F":
        # Float images are usually in [0, 1]; anything else is stretched to its own maximum.
        scale = 255.0 if top <= 1.0 else 255.0 / top
        array = np.nan_to_num(array, nan=0.0, posinf=top, neginf=0.0)
    else:  # "I": 32-bit ints; PNG/TIFF 16-bit greys often open in this mode
        scale = 1.0 if top <= 255 else 1.0 / 257.0 if top <= 65535 else 255.0 / top
    return Image.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")


HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _to_rgb(image: Image.Image, background: Tuple[int, int, int], notes: List[str],
            top: Optional[float] = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, alpha composited on ``background``.

    Args:
        top: for high-bit-depth grey images, the largest value before downscaling (`_value_top`).
    """
    if image.mode in HIGH_BIT_MODES:
        notes.append(f"converted {image.mode} (high bit depth) to 8 bits")
        image = _to_8bit(image, _value_top(image) if top is None else top)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        low, _high = rgba.getchannel("A").getextrema()
        if low < 255:
            name = next((k for k, v in BACKGROUNDS.items() if v == background), str(background))
            notes.append(f"transparent pixels composited on {name}")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode == "CMYK":
        notes.append("converted CMYK to RGB")
    elif image.mode not in ("RGB", "L", "1", "P"):
        notes.append(f"converted {image.mode} to RGB")
    return image.convert("RGB")


# Pillow's transposition for each EXIF orientation (2-8; 1 is upright, anything else is not a valid value).
ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def load_image(source: ImageSource, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               max_side: int = MAX_SIDE, min_side: int = 1, background: str = "white") -> Image.Image:
    """Read, check and normalise one image.

    Args:
        source: encoded bytes, a path, or a binary file object (e.g. a Streamlit upload).
        max_bytes: largest accepted encoded size.
        max_pixels: largest accepted width * height, checked from the header before decoding.
        max_side: longer images are downscaled to this longest side.
        min_side: smallest accepted width and height of the returned image, e.g. the model's patch size (see
            `check_min_size`).
        background: "white" or "black": what transparent pixels are composited on.

    Returns:
        A fully decoded, upright, 8-bit RGB image; ``image.info["input_notes"]`` lists what was changed.

    Raises:
        ImageInputError: for anything that is not a usable image, with the reason in words. No other exception
            comes out of a bad file (tested by a fuzz test over every accepted format).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
    data, name = _read_bytes(source, max_bytes)
    kind = _sniff_format(data)
    notes: List[str] = []
    image = _decode(data, name, kind, max_pixels, max_side, notes)

    orientation = _exif_orientation(image)
    top = _value_top(image) if image.mode in HIGH_BIT_MODES else None
    if max(image.size) > max_side:
        before = image.size
        image = _downscale(image, max_side)
        notes.append(f"downscaled from {before[0]}x{before[1]} to {image.size[0]}x{image.size[1]}")
    if orientation in ORIENTATIONS:
        # After downscaling (into a square box, so the size is the same either way): the rotation copies
        # the small image, not the full frame.
        image = image.transpose(ORIENTATIONS[orientation])
        notes.append(f"turned upright from its EXIF orientation ({orientation})")
    elif orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} is not a valid value: the picture is used as stored")
    image = _to_rgb(image, BACKGROUNDS[background], notes, top)
    image.info.pop("exif", None)  # its orientation has been applied (or ignored); it must not be applied twice
    check_min_size(image, min_side)
    image.info["input_notes"] = notes
    return image


def _decode(data: bytes, name: str, kind: Optional[str], max_pixels: int, max_side: int,
            notes: List[str]) -> Image.Image:
    """Open and fully decode ``data`` (first frame), within the pixel, scan and error rules of `load_image`."""
    what = f"{kind} file" if kind else "file"
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow's warnings about damaged metadata ("Corrupt EXIF data") mean nothing to the user.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(_too_large(name, max_pixels, f"{width}x{height} = "
                                                 f"{width * height / 1e6:.0f} megapixels"))
            if width < 1 or height < 1:
                raise ImageInputError(f"{name} has no pixels ({width}x{height})")
            if image.format in ("JPEG", "MPO"):
                _check_jpeg_scans(data, name, width * height)
            image = _first_frame(image, data, notes)
            # JPEG can decode directly at a reduced scale, which makes huge photos cheap.
            if image.format in ("JPEG", "MPO") and max(width, height) > 2 * max_side:
                image.draft("RGB", (max_side, max_side))
            image.load()
            return image
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ImageInputError(_too_large(name, max_pixels, size)) from None
    except UnidentifiedImageError:
        if kind == "PNG" and data[12:16] == b"IHDR" and 0 in struct.unpack(">II", data[16:24]):
            raise ImageInputError(f"{name} has no pixels: its header says "
                                  f"{'x'.join(map(str, struct.unpack('>II', data[16:24])))}") from None
        if kind is None:
            raise ImageInputError(f"{name} is not an image in a supported format "
                                  f"({', '.join(e.upper() for e in ACCEPTED_EXTENSIONS[1:])})") from None
        raise ImageInputError(f"{name} is a corrupt or truncated {what}: its header cannot be read") from None
    except MemoryError:
        raise ImageInputError(f"{name} needs more memory to decode than is available") from None
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many types for damaged data
        # OSError, SyntaxError, ValueError, EOFError, struct.error are the usual; fuzzing also finds TypeError,
        # KeyError, IndexError and ZeroDivisionError from damaged headers. All mean the same to the user.
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ImageInputError(f"{name} is a corrupt or truncated {what} and cannot be decoded ({detail})") from None


def _too_large(name: str, max_pixels: int, size: str) -> str:
    return (f"{name} is {size}; the limit is {max_pixels / 1e6:.0f} megapixels (very large images, or "
            "decompression bombs, are refused)")


def _first_frame(image: Image.Image, data: bytes, notes: List[str]) -> Image.Image:
    """The first frame or page, with a note when there are more; later frames are never decoded.

    Counting frames reads every frame's header (a TIFF's page directories): a damaged later page must not make
    the first one unusable, so it only changes the note.
    """
    pages = "pages" if image.format == "TIFF" else "frames"
    try:
        frames = int(getattr(image, "n_frames", 1) or 1)
        if frames > 1:
            image.seek(0)
    except Exception:  # noqa: BLE001 - a later frame's header is damaged; Pillow raises many types
        notes.append(f"a later one of its {pages} cannot be read: using the first")
        return Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    if frames > 1:
        what = "multi-page image" if pages == "pages" else "animated image"
        notes.append(f"{what} with {frames} {pages}: using the first {pages[:-1]}")
    return image


def _downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Fit ``image`` into ``max_side`` x ``max_side`` (aspect kept) in its own mode where Pillow resamples it
    properly, so that conversions to 8-bit RGB run on the small image, not the full frame."""
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode in ("P", "PA"):  # palette indices cannot be interpolated
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    ratio = max_side / max(image.size)
    size = (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio)))
    # reduce() first (a box filter by an integer factor) makes huge images cheap; Pillow has none for I;16.
    gap = None if image.mode.startswith("I;16") else 3.0
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=gap)


# Leading bytes of the accepted formats: a file that starts like one of them but does not decode is damaged,
# not "not an image".
SIGNATURES: Tuple[Tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"))


def _sniff_format(data: bytes) -> Optional[str]:
    """The accepted format ``data`` claims by its first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in SIGNATURES if data.startswith(magic)), None)


# Progressive JPEGs are decoded scan by scan over the whole frame, so their cost is scans x pixels: a small file
# that repeats a scan thousands of times takes minutes. Encoders write 1 (baseline) to about 12 scans.
MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 1_500_000_000   # scans x pixels: e.g. 30 scans of a 50-megapixel photo
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker; 0xFF00 is stuffing, RSTn sit in scan data


def jpeg_scan_count(data: bytes) -> int:
    """Number of scans (SOS segments) of a JPEG's main image.

    Walks the segments by their lengths, so the EXIF thumbnail (inside APP1) is not counted, and each scan's
    entropy-coded data is skipped to the next marker.
    """
    position, scans = 2, 0
    while True:
        found = _JPEG_MARKER.search(data, position)
        if found is None or data[found.start() + 1] == 0xD9 or found.start() + 4 > len(data):  # EOI / end
            return scans
        length = int.from_bytes(data[found.start() + 2:found.start() + 4], "big")
        if data[found.start() + 1] == 0xDA:
            scans += 1
        position = max(found.start() + 2 + length, found.end())


def _check_jpeg_scans(data: bytes, name: str, pixels: int) -> None:
    scans = jpeg_scan_count(data)
    if scans > MAX_JPEG_SCANS or scans * pixels > MAX_JPEG_SCAN_PIXELS:
        limit = min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_PIXELS // max(pixels, 1))
        raise ImageInputError(f"{name} is a progressive JPEG with {scans} scans; at its size the limit is "
                              f"{limit} (decoding it would take too long; re-save it as a normal JPEG or PNG)")


def _exif_orientation(image: Image.Image) -> Optional[int]:
    try:
        value = image.getexif().get(0x0112)
        return int(value) if value is not None else None
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good picture unusable
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
