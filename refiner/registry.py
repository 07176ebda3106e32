"""Model names: refined counterparts of timm's ViT/DeiT and small CPU-sized vanilla/refined pairs.

Every name here is registered with timm, so ``timm.create_model(name, **overrides)`` and
``refiner.create_model(name, **overrides)`` both build it. ``refiner.create_model`` also accepts any timm
name, gives close matches for a typo, and records ``model.model_spec`` so a checkpoint can rebuild the model.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import timm
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .refine import refine

# Keyword arguments timm's factory passes to every entry point; they are not model options.
_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
# Options of the refined names that configure refine() rather than the ViT.
_REFINE_KWARGS = {"refine_ratio": "ratio", "refine_kernel": "kernel", "refine_layout": "layout",
                  "refine_blocks": "blocks", "zero_init": "zero_init"}


@dataclass(frozen=True)
class SmallViTConfig:
    """A ViT small enough to train and analyse on a laptop CPU.

    Attributes:
        img_size: input side in pixels (square by default; overrides may give (H, W)).
        patch_size: patch side in pixels; the grid is img_size / patch_size per side.
        embed_dim: token width D.
        depth: number of transformer blocks L.
        num_heads: attention heads H per block (D must be divisible by H).
        mlp_ratio: hidden width of the MLP as a multiple of D.
        num_classes: classifier outputs.
        in_chans: input channels (1 for digits, 3 for photos).
    """

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 2.0
    num_classes: int = 10
    in_chans: int = 3


SMALL_CONFIGS: Dict[str, SmallViTConfig] = {
    # Unit tests and quick experiments: 8x8 grid, 65 tokens.
    "vit_micro_patch4_32": SmallViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4),
    # The shipped cluttered-MNIST pair's size: 8x8 grid, depth 8.
    "vit_mini_patch6_48": SmallViTConfig(img_size=48, patch_size=6, embed_dim=96, depth=8, num_heads=4),
}
REFINED_TIMM_BASES = tuple(f"{family}_{size}_patch16_224" for family in ("vit", "deit")
                           for size in ("tiny", "small", "base"))


def _strip_factory_kwargs(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in _FACTORY_KWARGS}


def _split_refine_kwargs(kwargs: Dict[str, Any]) -> tuple[Dict[str, Any], Dict[str, Any]]:
    refine_options = {_REFINE_KWARGS[k]: kwargs.pop(k) for k in list(kwargs) if k in _REFINE_KWARGS}
    return kwargs, refine_options


def _build_small_vit(name: str, pretrained: bool, **overrides: Any) -> VisionTransformer:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; train it with `refiner train` or load a checkpoint")
    args = {**asdict(SMALL_CONFIGS[name]), **_strip_factory_kwargs(overrides)}
    model = VisionTransformer(class_token=True, global_pool="token", qkv_bias=True, **args)
    img = args["img_size"]
    height, width = (img, img) if isinstance(img, int) else img
    # resolve_data_config() reads this; digits and synthetic data are roughly centred at 0.5.
    model.pretrained_cfg = {"architecture": name, "input_size": (args["in_chans"], height, width),
                            "mean": (0.5,) * args["in_chans"], "std": (0.5,) * args["in_chans"],
                            "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": args["num_classes"]}
    return model


def _build_refined(name: str, base: str, pretrained: bool, overrides: Dict[str, Any]) -> nn.Module:
    kwargs, refine_options = _split_refine_kwargs(_strip_factory_kwargs(overrides))
    if base in SMALL_CONFIGS:
        model = _build_small_vit(base, pretrained, **kwargs)
    else:
        model = timm.create_model(base, pretrained=pretrained, **kwargs)
    # Refining trained weights starts from exactly what they computed unless told otherwise.
    refine_options.setdefault("zero_init", pretrained)
    refine(model, **refine_options)
    model.pretrained_cfg = {**dict(getattr(model, "pretrained_cfg", {}) or {}), "architecture": name}
    return model


def _register_small(name: str) -> None:
    def vanilla(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _build_small_vit(name, pretrained, **kwargs)

    def refined(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _build_refined(f"refined_{name}", name, pretrained, kwargs)

    for fn, fn_name in ((vanilla, name), (refined, f"refined_{name}")):
        fn.__name__ = fn.__qualname__ = fn_name
        fn.__doc__ = f"`{fn_name}`: {'refined ' if fn is refined else ''}{SMALL_CONFIGS[name]}"
        register_model(fn)


def _register_refined_timm(base: str) -> None:
    def refined(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _build_refined(f"refined_{base}", base, pretrained, kwargs)

    refined.__name__ = refined.__qualname__ = f"refined_{base}"
    refined.__doc__ = f"timm `{base}` with every block's attention refined (paper mode, r=3, k=3)."
    register_model(refined)


for _name in SMALL_CONFIGS:
    _register_small(_name)
for _base in REFINED_TIMM_BASES:
    _register_refined_timm(_base)


def list_models() -> List[str]:
    """Names this project registers (the official Refiner-ViT names included once imported)."""
    ours = [*SMALL_CONFIGS, *(f"refined_{n}" for n in SMALL_CONFIGS), *(f"refined_{b}" for b in REFINED_TIMM_BASES)]
    ours += [n for n in ("refiner_vit_s", "refiner_vit_m", "refiner_vit_l") if timm.is_model(n)]
    return ours


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a model by name with optional overrides (img_size, patch_size, embed_dim, depth, num_heads, ...).

    Args:
        name: any timm model name or one of `list_models()`.
        pretrained: load timm's released weights (needs a network; never used by tests or defaults).
        **overrides: keyword arguments for the model constructor.

    Returns:
        The model, with ``model.model_spec`` = {"name", "overrides", "refine"}.

    Raises:
        ValueError: unknown name (the message lists close matches).
    """
    if not timm.is_model(name):
        candidates = list(dict.fromkeys(list_models() + timm.list_models()))
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}{hint} (refiner.list_models() lists ours)")
    model = timm.create_model(name, pretrained=pretrained, **overrides)
    refine_record: Optional[Dict[str, Any]] = (getattr(model, "model_spec", None) or {}).get("refine")
    model.model_spec = {"name": name, "overrides": _jsonable(overrides), "refine": refine_record}
    return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"override value {value!r} cannot be recorded in a checkpoint config (use plain values)")
