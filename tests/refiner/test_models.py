"""Registered models: build, forward, backward, overrides, names, refine() semantics."""

import copy

import pytest
import timm
import torch

import refiner
from refiner.refined_attention import RefinedAttention

TINY = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5)
OURS = [n for n in refiner.list_models() if not n.startswith("refiner_vit_")]


def tiny_overrides(name: str) -> dict:
    # the 224-px timm families keep patch 16 -> a 2x2 grid at 32 px; the CPU configs get patch 8
    return {**TINY, "patch_size": 16 if "patch16" in name else 8}


@pytest.mark.parametrize("name", OURS)
def test_every_registered_name_builds_runs_and_trains(name: str) -> None:
    model = refiner.create_model(name, **tiny_overrides(name))
    assert model.model_spec["name"] == name
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not no_grad, no_grad
    refined_blocks = sum(isinstance(b.attn, RefinedAttention) for b in model.blocks)
    assert refined_blocks == (len(model.blocks) if name.startswith("refined_") else 0)


@pytest.mark.parametrize("name", ["refined_vit_micro_patch4_32", "vit_mini_patch6_48"])
def test_timm_create_model_builds_our_names_with_overrides(name: str) -> None:
    model = timm.create_model(name, depth=3, embed_dim=48, num_heads=3, mlp_ratio=3.0, num_classes=7,
                              img_size=24, patch_size=4)
    assert len(model.blocks) == 3 and model.embed_dim == 48 and model.blocks[0].attn.num_heads == 3
    assert model.blocks[0].mlp.fc1.out_features == 144
    assert model(torch.randn(1, 3, 24, 24)).shape == (1, 7)


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(ValueError, match="refined_vit_small_patch16_224"):
        refiner.create_model("refined_vit_smal_patch16_224")


def test_fused_equals_unfused() -> None:
    model = refiner.create_model("vit_micro_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    for block in model.blocks:
        block.attn.fused_attn = True
    fused = model(x)
    for block in model.blocks:
        block.attn.fused_attn = False
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
def test_zero_init_refinement_computes_exactly_what_the_vanilla_model_computed(layout: str) -> None:
    vanilla = refiner.create_model("vit_micro_patch4_32")
    refined = refiner.refine(copy.deepcopy(vanilla), zero_init=True, layout=layout)
    x = torch.randn(3, 3, 32, 32)
    for mode in ("eval", "train"):  # BN in train mode uses batch statistics: still exactly zero
        getattr(vanilla, mode)()
        getattr(refined, mode)()
        torch.testing.assert_close(refined(x), vanilla(x), atol=1e-5, rtol=1e-5)


def test_refine_chosen_blocks_only_and_records_options() -> None:
    model = refiner.refine(refiner.create_model("vit_micro_patch4_32"), blocks=[0, -1], ratio=2, kernel=5)
    kinds = [isinstance(b.attn, RefinedAttention) for b in model.blocks]
    assert kinds == [True, False, False, True]
    assert model.blocks[0].attn.refinement.expand.out_channels == 8
    assert model.blocks[0].attn.refinement.local.kernel_size == (5, 5)
    assert model.model_spec["refine"] == {"blocks": [0, 3], "ratio": 2, "kernel": 5, "layout": "sequence",
                                          "zero_init": False}
    with pytest.raises(ValueError, match="already refined"):
        refiner.refine(model, blocks=[0])
    with pytest.raises(ValueError, match="out of range"):
        refiner.refine(refiner.create_model("vit_micro_patch4_32"), blocks=[9])


def test_refine_keeps_the_pretrained_attention_weights() -> None:
    vanilla = refiner.create_model("deit_tiny_patch16_224", img_size=64, depth=2)
    refined = refiner.refine(copy.deepcopy(vanilla))
    for a, b in zip(vanilla.blocks, refined.blocks):
        torch.testing.assert_close(a.attn.qkv.weight, b.attn.qkv.weight)
        torch.testing.assert_close(a.attn.proj.bias, b.attn.proj.bias)


def test_refined_effective_map_differs_from_softmax_and_is_not_stochastic() -> None:
    model = refiner.create_model("refined_vit_micro_patch4_32").eval()
    with torch.no_grad():  # make the refinement visible: non-trivial BN affine parameters
        for block in model.blocks:
            block.attn.refinement.reduce_norm.weight.fill_(0.5)
            block.attn.refinement.reduce_norm.bias.fill_(-0.01)
    with refiner.capture_attention(model) as rec:
        model(torch.randn(1, 3, 32, 32))
    eff, soft = rec.effective[1], rec.softmax[1]
    assert not torch.allclose(eff, soft)
    assert not torch.allclose(eff.sum(-1), torch.ones_like(eff.sum(-1)))


@pytest.mark.parametrize("name, word", [("eva02_tiny_patch14_224", "rotary"), ("beit_base_patch16_224", "relative"),
                                        ("vit_relpos_small_patch16_224", "relative")])
def test_refine_refuses_other_attention_families_clearly_and_changes_nothing(name: str, word: str) -> None:
    model = timm.create_model(name, pretrained=False, depth=2)
    before = [type(b.attn) for b in model.blocks]
    with pytest.raises(TypeError, match=word) as error:
        refiner.refine(model)
    assert "Nothing was changed" in str(error.value) and "blocks [0, 1]" in str(error.value)
    assert [type(b.attn) for b in model.blocks] == before and getattr(model, "model_spec", None) is None
