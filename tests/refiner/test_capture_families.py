"""Capture across attention families, on random weights at non-square input sizes.

For every family: the captured maps equal an independent reference (the library's own unfused code path,
run in the test with fused attention off and read by a test-side hook at the block's attention dropout,
where the eager path passes its map), the model's output is unchanged by capture, every hook is removed and
every flag restored, the geometry (prefix tokens, CLS or not, registers, grid, stride) is right, and
``query_rows`` keeps exactly those rows. ``FAMILY_CASES`` is also read by scripts/supported_families.py.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest
import timm
import torch

import refiner
from refiner.capture_adapters import SUPPORTED_FAMILIES, UnsupportedAttentionError, attention_layers

TINY = dict(depth=2, embed_dim=64, num_heads=2, num_classes=5)


class Case(NamedTuple):
    """One model of one family: how to build it and what capture must report."""

    family: str
    name: str
    kwargs: Dict[str, object]
    image: Tuple[int, int]
    prefix: int
    cls_index: Optional[int]
    registers: int
    grid: Tuple[int, int]
    stride: Tuple[int, int]
    note: str = ""

    @property
    def id(self) -> str:
        """Test id: family-model[-note] (read by scripts/supported_families.py)."""
        return f"{self.family}-{self.name}" + (f"-{self.note}" if self.note else "")


FAMILY_CASES: List[Case] = [
    Case("timm", "vit_small_patch16_224", dict(TINY, img_size=(48, 64)), (48, 64), 1, 0, 0, (3, 4), (16, 16)),
    Case("timm", "vit_small_patch16_224", dict(TINY, img_size=(48, 64), qk_norm=True), (48, 64), 1, 0, 0,
         (3, 4), (16, 16), "qk_norm"),
    Case("timm", "deit_tiny_distilled_patch16_224", dict(TINY, img_size=(48, 64)), (48, 64), 2, 0, 0, (3, 4),
         (16, 16)),
    Case("timm", "vit_betwixt_patch16_reg4_gap_256", dict(TINY, img_size=(48, 64)), (48, 64), 4, None, 4,
         (3, 4), (16, 16), "registers_no_cls"),
    Case("timm", "vit_small_r26_s32_224", dict(TINY, img_size=(64, 96)), (64, 96), 1, 0, 0, (2, 3), (32, 32),
         "hybrid_stride32"),
    Case("rotary", "eva02_tiny_patch14_224", dict(TINY, img_size=(42, 56)), (42, 56), 1, 0, 0, (3, 4),
         (14, 14)),
    Case("rotary", "vit_small_patch16_rope_224", dict(TINY, img_size=(48, 64)), (48, 64), 1, 0, 0, (3, 4),
         (16, 16)),
    Case("rotary", "vit_small_patch16_dinov3", dict(TINY, img_size=(48, 64)), (48, 64), 5, 0, 4, (3, 4),
         (16, 16), "registers"),
    Case("relative-position", "beitv2_base_patch16_224", dict(TINY, img_size=(48, 64)), (48, 64), 1, 0, 0,
         (3, 4), (16, 16)),
    Case("relative-position", "beit_base_patch16_224",
         dict(TINY, img_size=(48, 64), use_rel_pos_bias=False, use_shared_rel_pos_bias=True), (48, 64), 1, 0, 0,
         (3, 4), (16, 16), "shared_bias"),
    Case("relative-position", "vit_relpos_small_patch16_224", dict(TINY, img_size=(48, 64)), (48, 64), 0, None,
         0, (3, 4), (16, 16), "no_cls"),
    Case("talking-heads", "cait_xxs24_224", dict(TINY, img_size=(48, 64), depth_token_only=2), (48, 64), 0,
         None, 0, (3, 4), (16, 16)),
]


def all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def fused_flags(model: torch.nn.Module) -> List[object]:
    return [getattr(m, "fused_attn", None) for m in model.modules()]


def build(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(case.name, pretrained=False, **case.kwargs).eval()


def eager_reference(model: torch.nn.Module, x: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Each layer's map as the library's own unfused code computes it (read at ``attn_drop``'s input).

    For talking heads that is the head-mixed matrix that multiplies V (the effective map)."""
    layers, _ = attention_layers(model)
    maps: List[Optional[torch.Tensor]] = [None] * len(layers)
    handles = []
    for i, attn in enumerate(layers):
        def keep(_module, args, i=i):
            maps[i] = args[0].detach().clone()
        handles.append(attn.attn_drop.register_forward_pre_hook(keep))
    fused = {attn: getattr(attn, "fused_attn", None) for attn in layers}
    for attn in layers:
        if fused[attn] is not None:
            attn.fused_attn = False
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in fused.items():
            if flag is not None:
                attn.fused_attn = flag
    return maps, out


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.id)
def test_family_maps_equal_the_eager_reference_and_leave_the_model_as_it_was(case: Case) -> None:
    model = build(case)
    for m in model.modules():  # capture must work with the fast path on
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    x = torch.randn(2, 3, *case.image)
    reference, eager_out = eager_reference(model, x)
    flags = fused_flags(model)
    with torch.no_grad():
        plain = model(x)
        with refiner.capture_attention(model, verify="all") as rec:
            captured = model(x)
    torch.testing.assert_close(captured, plain, rtol=0, atol=0)  # capture does not change what the model computes
    torch.testing.assert_close(plain, eager_out, rtol=1e-4, atol=1e-4)
    assert all_hooks(model) == 0 and fused_flags(model) == flags
    meta = rec.meta
    assert (meta.num_prefix_tokens, meta.class_token_index, meta.num_reg_tokens) == \
        (case.prefix, case.cls_index, case.registers)
    assert meta.grid_size == case.grid and meta.patch_size == case.stride and meta.img_size == case.image
    assert meta.has_class_token == (case.cls_index is not None)
    layers, class_layers = attention_layers(model)
    assert meta.depth == len(layers) and list(meta.class_attention_layers) == class_layers
    n = meta.num_tokens
    for i, ref in enumerate(reference):
        effective = rec.effective[i]
        assert effective.dtype == torch.float32
        expected_shape = (2, 2, 1, n + 1) if i in class_layers else (2, 2, n, n)
        assert effective.shape == expected_shape == ref.shape, (i, effective.shape, ref.shape)
        assert float((effective - ref).abs().max()) <= 1e-5, (i, float((effective - ref).abs().max()))
        rows = rec.softmax[i].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
        assert rec.max_abs_error[i] < 1e-4
        family = "class-attention" if i in class_layers else case.family
        assert meta.families[i] == family and family in SUPPORTED_FAMILIES
    assert meta.refined == [case.family == "talking-heads" and i not in class_layers for i in range(meta.depth)]


ROW_CASES = list({c.name: c for c in reversed(FAMILY_CASES) if c.name in (
    "vit_small_patch16_224", "eva02_tiny_patch14_224", "vit_small_patch16_dinov3", "beitv2_base_patch16_224",
    "vit_relpos_small_patch16_224", "cait_xxs24_224")}.values())


@pytest.mark.parametrize("case", ROW_CASES, ids=lambda c: c.id)
def test_family_query_rows_keep_exactly_those_rows(case: Case) -> None:
    model = build(case)
    x = torch.randn(1, 3, *case.image)
    with torch.no_grad(), refiner.capture_attention(model) as full:
        model(x)
    with torch.no_grad(), refiner.capture_attention(model, blocks=[0, -1], query_rows=[0, 3]) as part:
        model(x)
    torch.testing.assert_close(part.effective[0], full.effective[0][:, :, [0, 3]])
    last = part.meta.depth - 1
    if last in part.meta.class_attention_layers:  # one CLS query row: query_rows does not apply
        torch.testing.assert_close(part.effective[last], full.effective[last])
    else:
        torch.testing.assert_close(part.softmax[last], full.softmax[last][:, :, [0, 3]])


def test_hybrid_geometry_comes_from_the_backbone_stride_also_at_other_sizes() -> None:
    model = timm.create_model("vit_small_r26_s32_224", pretrained=False, dynamic_img_size=True,
                              **dict(TINY, img_size=(64, 96))).eval()
    # A bug fixed here: the stride was read from patch_embed.patch_size, (1, 1) for a hybrid.
    assert refiner.model_geometry.model_patch_size(model) == (32, 32)
    with torch.no_grad(), refiner.capture_attention(model) as rec:
        model(torch.randn(1, 3, 96, 64))
    assert rec.meta.patch_size == (32, 32) and rec.meta.grid_size == (3, 2)
    assert rec.effective[0].shape == (1, 2, 7, 7)


def test_registers_without_class_token_are_not_called_cls() -> None:
    model = build(FAMILY_CASES[3])
    assert not model.has_class_token and model.num_reg_tokens == 4
    with torch.no_grad(), refiner.capture_attention(model) as rec:
        model(torch.randn(1, 3, 48, 64))
    assert rec.meta.class_token_index is None and not rec.meta.has_class_token
    assert rec.meta.num_prefix_tokens == 4 and rec.meta.num_tokens == 16


def test_hooks_and_flags_restored_when_a_family_forward_raises() -> None:
    model = build(FAMILY_CASES[5])  # eva02: rotary
    flags = fused_flags(model)

    def fail(*_):
        raise RuntimeError("out of memory in block 1")
    failing = model.blocks[1].mlp.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="block 1"):
        with refiner.capture_attention(model):
            model(torch.randn(1, 3, 42, 56))
    failing.remove()
    assert all_hooks(model) == 0 and fused_flags(model) == flags


def test_a_rotary_map_without_its_rotation_is_refused() -> None:
    model = build(FAMILY_CASES[5])
    # Something rotates the keys differently from what the block is given: the check must catch it.
    original = model.blocks[0].attn.forward

    def forward_without_rope(x, rope=None, attn_mask=None, is_causal=False):
        return original(x, rope=None, attn_mask=attn_mask, is_causal=is_causal)
    model.blocks[0].attn.forward = forward_without_rope  # the block ignores rope; capture still gets it
    with pytest.raises(refiner.CaptureMismatchError, match="block 0"):
        with torch.no_grad(), refiner.capture_attention(model):
            model(torch.randn(1, 3, 42, 56))
    assert all_hooks(model) == 0


@pytest.mark.parametrize("name, layer", [
    ("swin_tiny_patch4_window7_224", None),
    ("xcit_nano_12_p16_224", "XCA"),
])
def test_unsupported_family_is_one_clear_error_listing_the_supported_ones(name: str, layer: Optional[str]) -> None:
    kwargs = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)) if name.startswith("swin") \
        else dict(depth=1, embed_dim=32, num_heads=2)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(UnsupportedAttentionError) as info:
        with refiner.capture_attention(model):
            pass
    message = str(info.value)
    assert (layer or type(model).__name__) in message
    assert all(family in message for family in SUPPORTED_FAMILIES)
    assert isinstance(info.value, TypeError) and all_hooks(model) == 0


def test_eva_values_are_read_from_the_blocks_projection_not_recomputed(monkeypatch) -> None:
    from refiner.capture_adapters import projections
    found: List[bool] = []
    original = projections._values_beside

    def spy(*args):
        v = original(*args)
        found.append(v is not None)
        return v
    monkeypatch.setattr(projections, "_values_beside", spy)
    model = build(FAMILY_CASES[5])  # eva02: fused qkv weight with q_bias/v_bias, applied by F.linear
    assert model.blocks[0].attn.q_bias is not None
    with torch.no_grad(), refiner.capture_attention(model, verify="all") as rec:
        model(torch.randn(2, 3, 42, 56))
    assert found == [True, True] and all(err < 1e-4 for err in rec.max_abs_error.values())
    monkeypatch.setattr(projections, "_values_beside", lambda *a: None)  # the fallback recomputes, also right
    with torch.no_grad(), refiner.capture_attention(model, verify="all") as again:
        model(torch.randn(2, 3, 42, 56))
    assert all(err < 1e-4 for err in again.max_abs_error.values())


@pytest.mark.parametrize("index", [5, 8, 11])  # rotary, relative position, talking heads
def test_family_capture_under_bf16_autocast_gives_fp32_maps(index: int) -> None:
    case = FAMILY_CASES[index]
    model = build(case)
    x = torch.randn(2, 3, *case.image)
    with torch.no_grad(), refiner.capture_attention(model) as plain:
        model(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), refiner.capture_attention(model) as rec:
        model(x)  # checked against the block's bf16 output
    for maps, reference in zip(rec.effective, plain.effective):
        assert maps.dtype == torch.float32 and maps.shape == reference.shape
        assert torch.allclose(maps, reference, atol=5e-2)
    for maps in rec.softmax:
        torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-5, rtol=0)
