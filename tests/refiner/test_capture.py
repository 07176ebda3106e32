"""Attention capture: correctness against the model's own computation, geometry, and clean-up."""

import pytest
import timm
import torch

import refiner
from refiner.capture import CaptureMismatchError


def all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name, kwargs, prefix", [
    ("vit_small_patch16_224", dict(img_size=64, depth=2), 1),
    ("deit_tiny_distilled_patch16_224", dict(img_size=64, depth=2), 2),
    ("vit_base_patch16_224", dict(img_size=48, depth=1, embed_dim=96, num_heads=4), 1),
    ("refined_deit_tiny_patch16_224", dict(img_size=64, depth=2), 1),
    ("vit_micro_patch4_32", {}, 1),
    ("refined_vit_micro_patch4_32", {}, 1),
])
def test_capture_reproduces_every_block_with_fused_attention_on(name, kwargs, prefix) -> None:
    model = refiner.create_model(name, **kwargs).eval()
    fused_before = [getattr(b.attn, "fused_attn", None) for b in model.blocks]
    size = kwargs.get("img_size", 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        with refiner.capture_attention(model) as rec:
            logits = model(x)
    torch.testing.assert_close(logits, expected)  # capture does not change what the model computes
    meta = rec.meta
    assert meta.num_prefix_tokens == prefix and meta.depth == len(model.blocks)
    n = meta.num_tokens
    for i in range(meta.depth):
        assert rec.effective[i].shape == (2, model.blocks[i].attn.num_heads, n, n)
        assert rec.effective[i].dtype == torch.float32
        rows = rec.softmax[i].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
        assert rec.max_abs_error[i] < 1e-4
    assert all_hooks(model) == 0
    assert [getattr(b.attn, "fused_attn", None) for b in model.blocks] == fused_before
    assert meta.refined == [name.startswith("refined_")] * meta.depth


def test_capture_at_other_and_non_square_image_sizes() -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, dynamic_img_size=True).eval()
    model.model_spec = {"name": "vit_tiny_patch16_224"}
    with refiner.capture_attention(model) as rec:
        model(torch.randn(1, 3, 48, 80))
    assert rec.meta.grid_size == (3, 5) and rec.meta.img_size == (48, 80) and rec.meta.patch_size == (16, 16)
    assert rec.effective[0].shape == (1, 3, 16, 16)

    refined = refiner.create_model("refined_vit_micro_patch4_32", img_size=(24, 40), refine_layout="spatial").eval()
    with refiner.capture_attention(refined) as rec:
        refined(torch.randn(2, 3, 24, 40))
    assert rec.meta.grid_size == (6, 10) and rec.effective[3].shape == (2, 4, 61, 61)


def test_capture_some_blocks_and_some_query_rows() -> None:
    model = refiner.create_model("refined_vit_micro_patch4_32").eval()
    x = torch.randn(2, 3, 32, 32)
    with refiner.capture_attention(model) as full:
        model(x)
    with refiner.capture_attention(model, blocks=[1, 3], query_rows=[0, 5]) as part:
        model(x)
    assert part.effective[0] is None and part.softmax[2] is None
    assert part.effective[1].shape == (2, 4, 2, 65)
    torch.testing.assert_close(part.effective[3], full.effective[3][:, :, [0, 5]])
    torch.testing.assert_close(part.softmax[1], full.softmax[1][:, :, [0, 5]])

    vanilla = refiner.create_model("vit_micro_patch4_32").eval()
    with refiner.capture_attention(vanilla, query_rows=[0]) as cls_only:
        vanilla(x)
    assert cls_only.effective[0].shape == (2, 4, 1, 65)


def test_hooks_removed_and_flags_restored_when_the_forward_pass_raises() -> None:
    model = refiner.create_model("refined_vit_micro_patch4_32").eval()
    vanilla = refiner.create_model("vit_micro_patch4_32").eval()
    for m in (model, vanilla):
        def fail(*_):
            raise RuntimeError("out of memory in block 2")
        failing = m.blocks[2].mlp.register_forward_hook(fail)  # after blocks 0-1 were captured
        with pytest.raises(RuntimeError, match="block 2"):
            with refiner.capture_attention(m):
                m(torch.randn(2, 3, 32, 32))
        failing.remove()
        assert all_hooks(m) == 0
    assert all(b.attn.attention_hook is None for b in model.blocks)
    assert all(b.attn.fused_attn for b in vanilla.blocks)


def test_capture_refuses_a_map_that_does_not_explain_the_output() -> None:
    model = refiner.create_model("vit_micro_patch4_32").eval()
    # Something else rewrites the attention output before the projection: the recomputed map no longer explains it.
    model.blocks[1].attn.norm.register_forward_pre_hook(lambda _m, args: (args[0] * 1.5,))
    with pytest.raises(CaptureMismatchError, match="block 1"):
        with refiner.capture_attention(model):
            model(torch.randn(1, 3, 32, 32))


def test_unsupported_attention_layer_is_a_clear_error_and_installs_nothing() -> None:
    model = refiner.create_model("vit_micro_patch4_32")
    model.blocks[0].attn = torch.nn.Identity()
    with pytest.raises(TypeError, match="cannot capture attention from Identity"):
        with refiner.capture_attention(model):
            pass
    assert all_hooks(model) == 0


def test_stacked_maps() -> None:
    model = refiner.create_model("vit_micro_patch4_32").eval()
    with refiner.capture_attention(model) as rec:
        model(torch.randn(2, 3, 32, 32))
    assert rec.stacked().shape == (2, 4, 4, 65, 65)


@pytest.mark.parametrize("name", refiner.list_models())
def test_capture_works_for_every_registered_name(name: str) -> None:
    official = name.startswith("refiner_vit_")
    size = 32
    kwargs = dict(img_size=size, depth=2 if not official else 4, embed_dim=32, num_heads=2, num_classes=3)
    if not official:
        kwargs["patch_size"] = 16 if "patch16" in name else 8
    model = refiner.create_model(name, **kwargs).eval()
    with torch.no_grad(), refiner.capture_attention(model) as rec:
        model(torch.randn(2, 3, size, size))
    n = rec.meta.num_tokens
    assert all(e.shape == (2, 2, n, n) for e in rec.effective)
    assert all(err < 1e-4 for err in rec.max_abs_error.values())
    for soft in rec.softmax:
        if soft is not None:
            torch.testing.assert_close(soft.sum(-1), torch.ones(2, 2, n))
    assert all_hooks(model) == 0


@pytest.mark.parametrize("name, kwargs", [
    ("vit_small_patch16_224", dict(img_size=64, depth=2)),
    ("vit_small_patch16_224", dict(img_size=64, depth=2, qk_norm=True)),
    ("refined_vit_micro_patch4_32", {}),
])
def test_capture_under_bf16_autocast_gives_fp32_maps(name: str, kwargs: dict) -> None:
    # The GPU path (bf16 training, analysis under autocast), exercised with CPU autocast. A bug found here:
    # the hooks ran inside the caller's autocast region, so the "fp32" recompute of a timm block came out in
    # bf16 (rows summing to 1 only within ~1e-2).
    torch.manual_seed(0)
    model = refiner.create_model(name, **kwargs).eval()
    images = torch.randn(2, 3, *model.patch_embed.img_size)
    with torch.no_grad(), refiner.capture_attention(model) as plain:
        model(images)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), refiner.capture_attention(model) as rec:
        model(images)  # verify=True: effective @ v checked against the block's bf16 output
    for index, (maps, reference) in enumerate(zip(rec.effective, plain.effective)):
        assert maps.dtype == torch.float32 and maps.shape == reference.shape
        # bf16 q and k move the map a little; the map must still be the model's, not another one.
        assert torch.allclose(maps, reference, atol=3e-2), (index, float((maps - reference).abs().max()))
    for index, maps in enumerate(rec.softmax):
        # A timm block's map is recomputed by the capture in fp32: rows sum to 1 at fp32 precision. A refined
        # block reports the map it computed itself, in whatever precision autocast gave it.
        tolerance = 1e-2 if rec.meta.refined[index] else 1e-5
        torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=tolerance, rtol=0)


def test_verify_all_compares_every_row_and_the_default_a_spread_including_prefix_and_last_rows() -> None:
    from refiner.capture_adapters.slot import CHECKED_LEADING_ROWS, CHECKED_ROWS, checked_rows
    rows = checked_rows(197, torch.device("cpu"))
    assert rows.numel() == CHECKED_ROWS and rows[:CHECKED_LEADING_ROWS].tolist() == list(range(CHECKED_LEADING_ROWS))
    assert rows[-1].item() == 196 and len(set(rows.tolist())) == CHECKED_ROWS
    assert checked_rows(CHECKED_ROWS, torch.device("cpu")) is None  # small maps: every row

    model = refiner.create_model("vit_micro_patch4_32").eval()
    unchecked_row = next(i for i in range(65) if i not in checked_rows(65, torch.device("cpu")).tolist())

    def corrupt_one_row(_module, args):
        x = args[0].clone()
        x[:, unchecked_row] += 1.0
        return (x,)
    model.blocks[1].attn.norm.register_forward_pre_hook(corrupt_one_row)
    with torch.no_grad(), refiner.capture_attention(model):  # the spread does not include that row
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(CaptureMismatchError, match="block 1"):
        with torch.no_grad(), refiner.capture_attention(model, verify="all"):
            model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="verify"):
        with refiner.capture_attention(model, verify="some"):
            pass
