"""Capture of Hugging Face transformers ViT, DeiT, DINOv2 and DINOv2-with-registers (random configs, no download).

The reference maps are transformers' own eager attention (``output_attentions=True`` with the eager
implementation), computed in the test; the capture runs on the default sdpa implementation.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Tuple

import pytest
import torch

import refiner
from refiner.capture_adapters import attention_layers

transformers = pytest.importorskip("transformers")

from refiner.hf_vit import HFVisionTransformer, wrap_hf_model  # noqa: E402  (after the optional import)


class HFCase(NamedTuple):
    """One randomly initialised transformers model and what capture must report for it."""

    name: str
    make: Callable[[], torch.nn.Module]
    image: Tuple[int, int]
    prefix: int
    registers: int
    grid: Tuple[int, int]
    stride: Tuple[int, int]


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=5)


def _vit() -> torch.nn.Module:
    return transformers.ViTForImageClassification(transformers.ViTConfig(image_size=(48, 64), patch_size=16, **SMALL))


def _deit() -> torch.nn.Module:
    return transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(image_size=(48, 64), patch_size=16, **SMALL))


def _dinov2() -> torch.nn.Module:  # transformers' DINOv2 needs a square configured size; the input need not be
    return transformers.Dinov2Model(transformers.Dinov2Config(image_size=32, patch_size=8, **SMALL))


def _dinov2_registers() -> torch.nn.Module:
    if not hasattr(transformers, "Dinov2WithRegistersConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no DINOv2 with registers (4.47+)")
    return transformers.Dinov2WithRegistersForImageClassification(
        transformers.Dinov2WithRegistersConfig(image_size=32, patch_size=8, num_register_tokens=4, **SMALL))


HF_CASES: List[HFCase] = [
    HFCase("ViTForImageClassification", _vit, (48, 64), 1, 0, (3, 4), (16, 16)),
    HFCase("DeiTForImageClassificationWithTeacher", _deit, (48, 64), 2, 0, (3, 4), (16, 16)),
    HFCase("Dinov2Model", _dinov2, (48, 64), 1, 0, (6, 8), (8, 8)),
    HFCase("Dinov2WithRegistersForImageClassification", _dinov2_registers, (48, 64), 5, 4, (6, 8), (8, 8)),
]


def all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def eager_attentions(hf_model: torch.nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """transformers' own eager attention maps, one (B, H, N, N) per layer (x at the configured size for ViT and
    DeiT, any size for DINOv2, which always interpolates)."""
    config = hf_model.config
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return hf_model(pixel_values=x, output_attentions=True).attentions
    finally:
        config._attn_implementation = before


@pytest.mark.parametrize("case", HF_CASES, ids=lambda c: c.name)
def test_hf_maps_equal_transformers_eager_attention(case: HFCase) -> None:
    torch.manual_seed(0)
    hf_model = case.make().eval()
    assert hf_model.config._attn_implementation == "sdpa"  # capture runs on the fused path
    model = wrap_hf_model(hf_model)
    x = torch.randn(2, 3, *case.image)
    with torch.no_grad():
        plain = model(x)
        with refiner.capture_attention(model, verify="all") as rec:
            captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=0, atol=0)
    assert all_hooks(model) == 0 and hf_model.config._attn_implementation == "sdpa"
    reference = eager_attentions(hf_model, x)
    meta = rec.meta
    assert (meta.num_prefix_tokens, meta.class_token_index, meta.num_reg_tokens) == (case.prefix, 0, case.registers)
    assert meta.grid_size == case.grid and meta.patch_size == case.stride and meta.img_size == case.image
    assert meta.depth == 2 and meta.families == ("transformers",) * 2 and meta.refined == [False, False]
    for i, ref in enumerate(reference):
        assert rec.effective[i].shape == ref.shape == (2, 2, meta.num_tokens, meta.num_tokens)
        assert float((rec.effective[i] - ref).abs().max()) <= 1e-5
        assert rec.max_abs_error[i] < 1e-4


def test_hf_query_rows_and_unsupported_model_type() -> None:
    torch.manual_seed(0)
    model = wrap_hf_model(_dinov2_registers().eval())
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad(), refiner.capture_attention(model) as full:
        model(x)
    with torch.no_grad(), refiner.capture_attention(model, blocks=[1], query_rows=[0, 7]) as part:
        model(x)
    assert part.effective[0] is None
    torch.testing.assert_close(part.effective[1], full.effective[1][:, :, [0, 7]])
    assert all_hooks(model) == 0

    other = transformers.SwinModel(transformers.SwinConfig(embed_dim=16, depths=[1], num_heads=[1], image_size=32))
    with pytest.raises(TypeError, match="'swin'.*vit, deit, dinov2, dinov2_with_registers"):
        wrap_hf_model(other)


def test_wrapper_exposes_what_loading_needs() -> None:
    hf_model = _vit().eval()
    processor = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_center_crop": True,
                 "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "resample": 3}
    model = wrap_hf_model(hf_model, processor)
    assert isinstance(model, HFVisionTransformer) and model.hf_model is hf_model
    cfg = model.pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 224 / 256 and cfg["interpolation"] == "bicubic"
    assert cfg["num_classes"] == 5 == model.num_classes and len(cfg["label_names"]) == 5
    assert model.patch_size == (16, 16) and model.img_size == (48, 64) and model.num_prefix_tokens == 1
    assert len(attention_layers(model)[0]) == 2 and len(model.blocks) == 2
    # parameters are the HF model's, under hf_model.
    assert set(model.state_dict()) == {f"hf_model.{k}" for k in hf_model.state_dict()}
    base = wrap_hf_model(_dinov2().eval())
    assert base.num_classes == 0 and base(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    assert base.pretrained_cfg["source"].startswith("defaults of transformers.")
