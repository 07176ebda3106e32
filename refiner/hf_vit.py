"""Hugging Face ``transformers`` ViT-family models (ViT, DeiT, DINOv2, DINOv2 with registers) as plain ViTs.

`wrap_hf_model` puts a thin `nn.Module` around a transformers model so the rest of the project can treat it
like a timm ViT: ``forward(x)`` takes an image batch (B, C, H, W) and returns logits (B, classes) (pooled
features (B, D) for a base model), and the wrapper says what capture and geometry need: the encoder
layers (``blocks``), each layer's attention module (``attention_modules``), ``num_prefix_tokens``
(CLS, DeiT's distillation token, DINOv2 registers), ``patch_size``, the size the position embedding was
made for (``img_size``) and a timm-like ``pretrained_cfg`` (mean, std, input size, interpolation, crop_pct)
taken from the model's image-processor settings.

Only this file imports ``transformers``, and only when a wrapper is made: the package is an optional extra.
Supported layouts: transformers 5 (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``layers`` or
``encoder.layer``) and transformers 4.45+ (``attention.attention.query`` ..., ``attention.output.dense``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

# model_type -> (image processor class used for defaults, whether it interpolates position embeddings always)
_FAMILIES: Dict[str, Tuple[str, bool]] = {
    "vit": ("ViTImageProcessor", False),
    "deit": ("DeiTImageProcessor", False),
    "dinov2": ("BitImageProcessor", True),
    "dinov2_with_registers": ("BitImageProcessor", True),
}
SUPPORTED_MODEL_TYPES: Tuple[str, ...] = tuple(_FAMILIES)

# PIL resample codes, as transformers image processors store them, -> timm interpolation names.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class HFVisionTransformer(nn.Module):
    """A transformers ViT-family model seen as a ViT taking (B, C, H, W) images.

    Attributes:
        hf_model: the wrapped transformers model (its parameters are this module's, under ``hf_model.``).
        model_type: ``config.model_type`` ("vit", "deit", "dinov2", "dinov2_with_registers").
        num_prefix_tokens: K = 1 (CLS) + 1 (DeiT distillation token) + registers.
        has_class_token: always True for these families (the CLS token is token 0).
        num_reg_tokens: DINOv2 register tokens (0 otherwise).
        num_distill_tokens: 1 for DeiT (token 1), else 0.
        patch_size: (ph, pw) in pixels.
        img_size: (H, W) the position embedding was made for.
        num_classes: classifier outputs (0 for a base model, which returns pooled features).
        num_features: hidden size D.
        pretrained_cfg: timm-like preprocessing: ``mean``, ``std``, ``input_size`` (C, H, W),
            ``interpolation``, ``crop_pct``, ``crop_mode``, ``num_classes``, ``label_names`` and ``source``
            (where the numbers came from).
    """

    def __init__(self, hf_model: nn.Module, processor: Optional[Any] = None) -> None:
        super().__init__()
        config = hf_model.config
        model_type = str(getattr(config, "model_type", ""))
        if model_type not in _FAMILIES:
            raise TypeError(f"wrap_hf_model: model type {model_type!r} ({type(hf_model).__name__}) is not "
                            f"supported; supported are {', '.join(SUPPORTED_MODEL_TYPES)}")
        self.hf_model = hf_model
        self.model_type = model_type
        self._is_classifier = _base_model(hf_model) is not hf_model
        self.num_reg_tokens = int(getattr(config, "num_register_tokens", 0) or 0) \
            if model_type == "dinov2_with_registers" else 0
        self.num_distill_tokens = 1 if model_type == "deit" else 0
        self.has_class_token = True
        self.num_prefix_tokens = 1 + self.num_distill_tokens + self.num_reg_tokens
        self.patch_size = _pair(config.patch_size)
        self.img_size = _pair(config.image_size)
        self.num_features = int(config.hidden_size)
        self.num_classes = int(getattr(config, "num_labels", 0)) if self._is_classifier else 0
        self._always_interpolates = _FAMILIES[model_type][1]
        self.pretrained_cfg = _pretrained_cfg(config, model_type, processor, self.num_classes)

    @property
    def base_model(self) -> nn.Module:
        """The ViTModel/DeiTModel/Dinov2Model inside (not a registered submodule: its parameters are listed
        once, under ``hf_model.``)."""
        return _base_model(self.hf_model)

    @property
    def blocks(self) -> nn.ModuleList:
        """The encoder layers (each returns its (B, N, D) tokens)."""
        base = self.base_model
        layers = getattr(base, "layers", None)
        return layers if layers is not None else base.encoder.layer

    def attention_modules(self) -> List[nn.Module]:
        """Each layer's attention module (``layer.attention``), in order."""
        return [layer.attention for layer in self.blocks]

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """(Gh, Gw) patch grid for an (H, W) input (the patch embedding is a stride-p convolution)."""
        return int(img_size[0]) // self.patch_size[0], int(img_size[1]) // self.patch_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) for an image batch (B, C, H, W); pooled features (B, D) for a base model.

        Inputs of another size than ``img_size`` get interpolated position embeddings (DINOv2 always
        interpolates; ViT and DeiT are asked to).
        """
        kwargs: Dict[str, Any] = {}
        if not self._always_interpolates and tuple(x.shape[-2:]) != self.img_size:
            kwargs["interpolate_pos_encoding"] = True
        out = self.hf_model(pixel_values=x, **kwargs)
        if self._is_classifier:
            return out.logits
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


def wrap_hf_model(hf_model: nn.Module, processor: Optional[Any] = None) -> HFVisionTransformer:
    """Wrap a transformers ViT / DeiT / DINOv2 (with registers) model, classifier or base model.

    Args:
        hf_model: e.g. ``ViTForImageClassification``, ``DeiTForImageClassificationWithTeacher``,
            ``Dinov2Model``; in eval mode or not (the wrapper does not change modes).
        processor: the model's image-processor settings: an image processor object or the dict of its
            ``preprocessor_config.json``. None: the defaults of the family's processor class (say so in
            ``pretrained_cfg["source"]``; checkpoints usually override them, so pass the real one).

    Returns:
        An `HFVisionTransformer` sharing ``hf_model``'s parameters.

    Raises:
        TypeError: the model is not of a supported type.
    """
    return HFVisionTransformer(hf_model, processor)


def _base_model(hf_model: nn.Module) -> nn.Module:
    """The ViTModel/DeiTModel/Dinov2Model inside a classifier (the model itself for a base model)."""
    prefix = getattr(hf_model, "base_model_prefix", "")
    inner = getattr(hf_model, prefix, None) if prefix else None
    return inner if isinstance(inner, nn.Module) else hf_model


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _setting(processor: Any, name: str) -> Any:
    if isinstance(processor, Mapping):
        return processor.get(name)
    return getattr(processor, name, None)


def _size_field(size: Any) -> Dict[str, Optional[int]]:
    """A processor's ``size``/``crop_size`` (dict, SizeDict or int) as a dict of optional ints."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    keys = ("height", "width", "shortest_edge")
    if isinstance(size, Mapping):
        return {k: size.get(k) for k in keys}
    return {k: getattr(size, k, None) for k in keys}


def _pretrained_cfg(config: Any, model_type: str, processor: Optional[Any], num_classes: int) -> Dict[str, Any]:
    """timm-like preprocessing from image-processor settings (see `HFVisionTransformer.pretrained_cfg`)."""
    source = "processor settings"
    if processor is None:
        import transformers  # optional extra: imported only here

        name = _FAMILIES[model_type][0]
        processor = getattr(transformers, name)()
        source = f"defaults of transformers.{name}"
    mean = tuple(float(m) for m in _setting(processor, "image_mean"))
    std = tuple(float(s) for s in _setting(processor, "image_std"))
    resample = _setting(processor, "resample")
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample)), "bilinear") \
        if resample is not None else "bilinear"
    size = _size_field(_setting(processor, "size"))
    crop = _size_field(_setting(processor, "crop_size")) if _setting(processor, "do_center_crop") else {}
    channels = int(getattr(config, "num_channels", 3))
    crop_mode = "center"
    if crop.get("height"):
        crop_hw = (int(crop["height"]), int(crop["width"] or crop["height"]))
        resized = size.get("shortest_edge") or size.get("height") or crop_hw[0]
        crop_pct = crop_hw[0] / float(resized)
    else:
        crop_hw = (int(size.get("height") or size.get("shortest_edge") or _pair(config.image_size)[0]),
                   int(size.get("width") or size.get("shortest_edge") or _pair(config.image_size)[1]))
        crop_pct = 1.0
        if size.get("height"):  # resized to exactly (height, width), aspect not kept: timm's "squash"
            crop_mode = "squash"
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label[i]) for i in sorted(id2label)] if len(id2label) == num_classes else None
    return {"mean": mean, "std": std, "input_size": (channels, *crop_hw), "interpolation": interpolation,
            "crop_pct": crop_pct, "crop_mode": crop_mode, "num_classes": num_classes, "label_names": labels,
            "source": source}
