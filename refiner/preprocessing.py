"""A model's evaluation preprocessing: one typed description and the transform it makes.

For timm models this is exactly timm's evaluation transform (`timm.data.create_transform` of
`timm.data.resolve_data_config`): resize the shorter side to ``size / crop_pct``, centre-crop ``size``
(or timm's "squash" / "border" crop modes), scale to [0, 1], normalise. For our checkpoints it is the
preprocessing the trainer recorded (crop_pct 1: the whole image, shorter side fitted). The same geometric
steps give `Preprocessing.view`, the picture the model sees before normalisation, so attention overlays line
up with the pixels the model was given.

    prep = Preprocessing.from_model(model)          # or from_mapping(recorded dict)
    x = prep.transform(pil_image)                   # (C, H, W) float32
    picture = prep.view(pil_image)                  # PIL image of size (W, H), "L" or "RGB"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[-2], values[-1])


def _channel_values(values: Sequence[float], in_chans: int, what: str) -> Tuple[float, ...]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return tuple(values)
    if len(values) == 1:
        return tuple(values * in_chans)
    if in_chans == 1:  # RGB statistics on a grey model: the grey value is the mean of the channels
        return (float(np.mean(values)),)
    raise ValueError(f"{what} has {len(values)} values for a model with {in_chans} input channels")


def _first_conv(model: nn.Module) -> Optional[nn.Conv2d]:
    """The convolution that sees the image: the one timm's ``pretrained_cfg["first_conv"]`` names, else the
    first Conv2d registered in ``patch_embed`` (a conv stem registers its input conv before ``proj``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(name, str):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if isinstance(module, nn.Conv2d):
            return module
    patch_embed = getattr(model, "patch_embed", None)
    if isinstance(patch_embed, nn.Module):
        return next((m for m in patch_embed.modules() if isinstance(m, nn.Conv2d)), None)
    return None


def input_channels(model: nn.Module, default: int = 3) -> int:
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


def built_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """(H, W) the model's patch embedding was built for (``patch_embed.img_size``), or None if it does not say."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        size = getattr(model, "img_size", None)
    return None if size is None else _pair(size)


@dataclass(frozen=True)
class Preprocessing:
    """How one model's input is made from a picture (timm's data-config fields, typed).

    Attributes:
        input_size: (C, H, W) of the model input.
        interpolation: resampling filter name ("bicubic", "bilinear", ...).
        mean: per-channel mean subtracted after scaling to [0, 1] (length C).
        std: per-channel std divided by (length C, all positive).
        crop_pct: the centre crop covers this fraction of the resized image (1.0: no border is lost; above 1,
            as Refiner-ViT-L's 1.13, the image is resized smaller than the input and timm's crop pads it).
        crop_mode: "center" (keep aspect, crop), "squash" (stretch, crop) or "border" (pad), as timm.
    """

    input_size: Tuple[int, int, int]
    interpolation: str = "bicubic"
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        c, h, w = self.input_size
        if c < 1 or h < 1 or w < 1:
            raise ValueError(f"input_size must be positive (C, H, W), got {self.input_size}")
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean and std need {c} values each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {list(self.std)}")
        if not 0 < self.crop_pct < 4:  # timm takes any positive value; above 1 its centre crop pads
            raise ValueError(f"crop_pct must be in (0, 4), got {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, not {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}")

    # -------------------------------------------------------------------------------------------- building
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Preprocessing":
        """From a recorded dict: timm's data config (``input_size``, ...) or our checkpoints' ``extra["data"]``
        (``img_size``, ``in_chans``, ``mean``, ``std``, ``interpolation``; crop_pct 1 unless recorded).

        Raises:
            ValueError: a field of the wrong type or range (the message names it).
        """
        try:
            if data.get("input_size") is not None:
                c, h, w = (int(v) for v in data["input_size"])
            else:
                c = int(data.get("in_chans", 3))
                h, w = _pair(data.get("img_size", 224))
            mean = _channel_values(data.get("mean", (0.0,)), c, "mean")
            std = _channel_values(data.get("std", (1.0,)), c, "std")
            return cls(input_size=(c, h, w), interpolation=str(data.get("interpolation") or "bicubic"),
                       mean=mean, std=std, crop_pct=float(data.get("crop_pct") or 1.0),
                       crop_mode=str(data.get("crop_mode") or "center"))
        except (TypeError, ValueError) as error:
            raise ValueError(f"preprocessing record is not usable: {error}") from None

    @classmethod
    def from_model(cls, model: nn.Module, input_size: Optional[Tuple[int, int, int]] = None) -> "Preprocessing":
        """timm's evaluation data config of ``model`` (its ``pretrained_cfg``), at the size it was built for.

        ``resolve_data_config`` reads the input size from the pretrained config; a model built at another size
        (``img_size=448`` on a 224 architecture) takes its own size, which is what its patch embedding expects.
        """
        from timm.data import resolve_data_config

        resolved = resolve_data_config({}, model=model)
        c = input_channels(model, default=int(resolved["input_size"][0]))
        if input_size is None:
            built = built_input_size(model)
            h, w = built if built is not None else (int(resolved["input_size"][1]), int(resolved["input_size"][2]))
        else:
            c, h, w = input_size
        return cls(input_size=(c, h, w), interpolation=str(resolved.get("interpolation") or "bicubic"),
                   mean=_channel_values(resolved["mean"], c, "mean"), std=_channel_values(resolved["std"], c, "std"),
                   crop_pct=float(resolved.get("crop_pct") or 1.0),
                   crop_mode=str(resolved.get("crop_mode") or "center"))

    def as_dict(self) -> Dict[str, Any]:
        """timm's data-config keys plus ``img_size``/``in_chans`` (JSON-ready, for manifests and cards)."""
        c, h, w = self.input_size
        return {"input_size": [c, h, w], "img_size": [h, w], "in_chans": c, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "crop_pct": self.crop_pct, "crop_mode": self.crop_mode}

    # ------------------------------------------------------------------------------------------ transforms
    @property
    def img_size(self) -> Tuple[int, int]:
        """(H, W) of the model input."""
        return self.input_size[1], self.input_size[2]

    @property
    def in_chans(self) -> int:
        """C of the model input."""
        return self.input_size[0]

    def _geometric(self) -> Callable[[Image.Image], Image.Image]:
        """timm's resize + crop steps, without its tensor conversion (``use_prefetcher`` drops the normalise)."""
        from timm.data.transforms_factory import transforms_imagenet_eval

        steps = transforms_imagenet_eval(img_size=self.img_size, crop_pct=self.crop_pct, crop_mode=self.crop_mode,
                                         interpolation=self.interpolation, mean=self.mean, std=self.std,
                                         use_prefetcher=True)
        geometric = steps.transforms[:-1]  # the last step is timm's MaybePILToTensor

        def apply(image: Image.Image) -> Image.Image:
            for step in geometric:
                image = step(image)
            return image

        return apply

    def view(self, image: Image.Image) -> Image.Image:
        """The picture exactly as the model sees it before normalisation: (W, H) pixels, "L" for one channel."""
        image = image.convert("L" if self.in_chans == 1 else "RGB")
        return self._geometric()(image)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """Model input (C, H, W) float32 of one picture, equal to timm's ``create_transform`` output."""
        array = np.asarray(self.view(image), dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return torch.from_numpy(np.ascontiguousarray((array - mean) / std))

    def resized_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """(W, H) an image of ``size`` = (W, H) has after timm's resize step, before the crop."""
        import math

        width, height = size
        target_h, target_w = self.img_size
        scale_h, scale_w = math.floor(target_h / self.crop_pct), math.floor(target_w / self.crop_pct)
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if self.crop_mode == "center" and scale_h == scale_w:  # torchvision's shorter-side Resize(int)
            short, long = min(width, height), max(width, height)
            new_long = int(scale_h * long / short)
            return (scale_h, new_long) if width <= height else (new_long, scale_h)
        ratios = (height / scale_h, width / scale_w)  # timm's ResizeKeepRatio
        ratio = max(ratios) if self.crop_mode == "border" else min(ratios)
        return round(width / ratio), round(height / ratio)

    def map_box(self, box: Sequence[float], size: Tuple[int, int]) -> Tuple[float, float, float, float]:
        """A box (x0, y0, x1, y1) in the pixels of an image of ``size`` = (W, H), in model-input pixels (clipped)."""
        new_w, new_h = self.resized_size(size)
        target_h, target_w = self.img_size
        sx, sy = new_w / size[0], new_h / size[1]
        left, top = int(round((new_w - target_w) / 2.0)), int(round((new_h - target_h) / 2.0))
        x0, y0, x1, y1 = (float(v) for v in box)
        return (min(max(x0 * sx - left, 0.0), target_w), min(max(y0 * sy - top, 0.0), target_h),
                min(max(x1 * sx - left, 0.0), target_w), min(max(y1 * sy - top, 0.0), target_h))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)
