"""Official-mode Refiner-ViT: parameter counts, a block-by-block reference forward, the converter and the CLI.

The reference forward below is written from DESIGN section 3 with plain tensor ops on the model's weights; it
never calls the model's modules, so it checks what they compute rather than repeating it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import refiner
from refiner.convert_official import (
    convert_official_state_dict, infer_official_spec, load_official_checkpoint, ours_to_official,
)
from refiner.official_refiner_vit import OfficialRefinerViT, refiner_vit_l, refiner_vit_m, refiner_vit_s
from refiner_cli import main as cli_main

TINY = dict(img_size=48, depth=5, embed_dim=32, num_heads=2, num_classes=7, aux_head=True)


def tiny_model(**overrides) -> OfficialRefinerViT:
    """A 3x3-grid (N = 10), depth-5 model (blocks N S N S N) with randomised norms, gains and BN statistics."""
    model = refiner_vit_s(**{**TINY, **overrides})
    generator = torch.Generator().manual_seed(1)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator, dtype=t.dtype) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.3, 0.3)
            if isinstance(module, nn.BatchNorm2d):
                uniform(module.running_mean, -0.5, 0.5)
                uniform(module.running_var, 0.5, 2.0)
        for name, param in model.named_parameters():
            if name.endswith("mlp.gain"):
                uniform(param, 0.5, 1.5)  # the 1e-5 init would hide the MLP branch from the comparison
            elif name in ("cls_token", "pos_embed") or name.endswith(".bias") and "norm" not in name:
                uniform(param, -0.5, 0.5)
    return model


# ----------------------------------------------------------------------------------------------------------
# (1) parameter counts (DESIGN section 3), built on the meta device so nothing is allocated


@pytest.mark.parametrize("factory, without_aux, with_aux", [
    (refiner_vit_s, 25_023_656, 25_408_656),
    (refiner_vit_m, 55_029_932, 55_450_932),
    (refiner_vit_l, 80_637_192, 81_150_192),
])
def test_parameter_counts(factory, without_aux: int, with_aux: int) -> None:
    with torch.device("meta"):
        plain, aux = factory(), factory(aux_head=True)
    assert sum(p.numel() for p in plain.parameters()) == without_aux
    assert sum(p.numel() for p in aux.parameters()) == with_aux


def test_registration_overrides_and_errors() -> None:
    model = timm.create_model("refiner_vit_s", **TINY)
    assert isinstance(model, OfficialRefinerViT)
    assert model.model_spec == {"name": "refiner_vit_s", "overrides": TINY, "refine": None}
    assert model.patch_embed.patch_size == (16, 16) and model.num_prefix_tokens == 1
    assert [b.attn.num_heads for b in model.blocks] == [2] * 5
    assert refiner.create_model("refiner_vit_l", img_size=448, depth=2, embed_dim=32, num_heads=2).pos_embed.shape \
        == (1, 1 + 28 * 28, 32)
    with pytest.raises(ValueError, match="convert-official"):
        refiner_vit_l(pretrained=True)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        refiner_vit_s(img_size=40)
    with pytest.raises(ValueError, match="does not take"):
        refiner_vit_s(qkv_bias=False)


# ----------------------------------------------------------------------------------------------------------
# (2) the tiny model's eval forward, block by block, against DESIGN section 3 written out in tensor ops


def _bn(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], training=False, eps=1e-5)


def _ln(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-6)


def _linear(x: torch.Tensor, sd: Dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return x @ sd[prefix + "weight"].T + sd[prefix + "bias"]


def reference_tokens(sd: Dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Conv stem, CLS token, position embedding: (B, 3, H, W) -> (B, 1 + P, D)."""
    x = F.relu(_bn(F.conv2d(images, sd["patch_embed.conv1.weight"], stride=2, padding=3), sd, "patch_embed.bn1."))
    x = F.relu(_bn(F.conv2d(x, sd["patch_embed.conv2.weight"], padding=1), sd, "patch_embed.bn2."))
    x = F.relu(_bn(F.conv2d(x, sd["patch_embed.conv3.weight"], padding=1), sd, "patch_embed.bn3."))
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=8)  # p/2 = 8
    x = x.flatten(2).transpose(1, 2)
    cls = sd["cls_token"].expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + sd["pos_embed"]


def reference_body(sd: Dict[str, torch.Tensor], prefix: str, attn: torch.Tensor) -> torch.Tensor:
    """Body: 1x1 H->3H, BN, ReLU6, depthwise 3x3 ('same' zeros), BN, ReLU6, 1x1 3H->H, BN."""
    x = F.relu6(_bn(F.conv2d(attn, sd[prefix + "expand.weight"]), sd, prefix + "expand_norm."))
    x = F.conv2d(x, sd[prefix + "local.weight"], padding=1, groups=x.shape[1])
    x = F.relu6(_bn(x, sd, prefix + "local_norm."))
    return _bn(F.conv2d(x, sd[prefix + "reduce.weight"]), sd, prefix + "reduce_norm.")


def reference_block(sd: Dict[str, torch.Tensor], index: int, x: torch.Tensor, prev: Optional[torch.Tensor],
                    heads: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """One block. Returns (tokens out, map passed on, softmax A or None, effective E)."""
    p = f"blocks.{index}."
    b, n, dim = x.shape
    d = dim // heads
    s = d ** -0.5
    h = _ln(x * 0.5, sd, p + "norm1.")
    if index % 2 == 0:  # normal block
        qkv = _linear(h, sd, p + "attn.qkv.").reshape(b, n, 3, heads, d)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        softmax = torch.softmax(q @ k.transpose(-2, -1) * s, dim=-1)
        effective = softmax if prev is None else softmax + s * prev
        passed = effective
    else:  # shared block
        v = _linear(h, sd, p + "attn.v.").reshape(b, n, heads, d).transpose(1, 2)
        softmax = None
        effective = s * _bn(prev + reference_body(sd, p + "attn.refinement.", prev), sd, p + "attn.adapt_norm.")
        passed = prev
    out = (effective @ v).transpose(1, 2).reshape(b, n, dim)
    x = x + _linear(out, sd, p + "attn.proj.") / 0.5
    h = _ln(x * 0.5, sd, p + "norm2.")
    mlp = _linear(F.gelu(_linear(h, sd, p + "mlp.fc1.")), sd, p + "mlp.fc2.") * sd[p + "mlp.gain"]
    return x + mlp / 0.5, passed, softmax, effective


def test_eval_forward_matches_reference_block_by_block() -> None:
    model = tiny_model().double().eval()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    images = torch.randn(2, 3, 48, 48, dtype=torch.float64)

    block_outputs: List[Tuple[torch.Tensor, torch.Tensor]] = []
    recorded: List[Tuple[Optional[torch.Tensor], torch.Tensor]] = []
    handles = [blk.register_forward_hook(lambda _m, _a, out: block_outputs.append(out)) for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.attention_hook = lambda softmax, effective, v: recorded.append((softmax, effective))
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
        for blk in model.blocks:
            blk.attn.attention_hook = None

    x, prev = reference_tokens(sd, images), None
    assert x.shape == (2, 10, 32)
    for index in range(len(model.blocks)):
        x, prev, softmax, effective = reference_block(sd, index, x, prev, heads=2)
        got_x, got_passed = block_outputs[index]
        torch.testing.assert_close(got_x, x, msg=f"block {index} tokens")
        torch.testing.assert_close(got_passed, prev, msg=f"block {index} map passed on")
        got_softmax, got_effective = recorded[index]
        torch.testing.assert_close(got_effective, effective, msg=f"block {index} effective map")
        if softmax is None:
            assert got_softmax is None
        else:
            torch.testing.assert_close(got_softmax, softmax, msg=f"block {index} softmax map")
    assert recorded[0][0] is recorded[0][1]  # block 0 has no map before it: E is A itself
    tokens = _ln(x, sd, "norm.")
    expected = _linear(tokens[:, 0], sd, "head.") + 0.5 * _linear(tokens[:, 1:], sd, "aux_head.").amax(dim=1)
    torch.testing.assert_close(logits, expected)
    # The reference is not trivially close to the plain head: the auxiliary term matters.
    assert (logits - _linear(tokens[:, 0], sd, "head.")).abs().max() > 1e-3


def test_capture_sees_softmax_and_effective_maps() -> None:
    model = tiny_model().eval()
    images = torch.randn(1, 3, 48, 64)  # non-square, other than the built size: position embedding resampled
    with refiner.capture_attention(model) as rec:
        model(images)
    assert rec.meta.patch_size == (16, 16) and rec.meta.grid_size == (3, 4) and rec.meta.num_prefix_tokens == 1
    assert [m is None for m in rec.softmax] == [False, True, False, True, False]
    assert all(m.shape == (1, 2, 13, 13) for m in rec.effective)
    assert rec.meta.refined == [False, True, True, True, True]
    torch.testing.assert_close(rec.softmax[2].sum(-1), torch.ones(1, 2, 13))


# ----------------------------------------------------------------------------------------------------------
# (3) converter: released names -> ours, strict loading, error listings, the CLI

# Module paths inside an odd (shared) block that the released code names differently, written out by hand.
_RELEASED_SHARED = {
    "attn.v": "attn.qkv", "attn.refinement.expand": "attn.DLA.conv_exp",
    "attn.refinement.expand_norm": "attn.DLA.bn1", "attn.refinement.local": "attn.DLA.depth_sep_conv",
    "attn.refinement.local_norm": "attn.DLA.bn2", "attn.refinement.reduce": "attn.DLA.conv_pro",
    "attn.refinement.reduce_norm": "attn.DLA.bn3", "attn.adapt_norm": "attn.adapt_bn",
}


def to_released_name(key: str) -> str:
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.([a-z_]+)", key)
    if match is None:
        return key
    index, module, leaf = int(match.group(1)), match.group(2), match.group(3)
    if module == "mlp" and leaf == "gain":
        return f"blocks.{index}.mlp.scale_channel"
    if index % 2 == 1:
        module = _RELEASED_SHARED.get(module, module)
    return f"blocks.{index}.{module}.{leaf}"


def released_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {to_released_name(k): v.clone() for k, v in model.state_dict().items()}


def test_converter_round_trip_strict_and_same_outputs() -> None:
    model = tiny_model().eval()
    released = released_state(model)
    assert "blocks.1.attn.DLA.conv_exp.weight" in released and "blocks.3.attn.adapt_bn.running_var" in released
    assert "blocks.1.attn.qkv.weight" in released and "blocks.0.mlp.scale_channel" in released
    # DDP prefix and a training-script wrapper are stripped; BN counters may be absent.
    wrapped = {"model": {f"module.{k}": v for k, v in released.items() if not k.endswith("num_batches_tracked")},
               "epoch": 299}
    converted = convert_official_state_dict(wrapped)
    fresh = refiner_vit_s(**TINY).eval()
    fresh.load_state_dict(converted, strict=True)
    images = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)
    assert all(ours_to_official(k) == to_released_name(k) for k in converted)


def test_converter_lists_every_unknown_and_missing_key_sorted() -> None:
    released = released_state(tiny_model())
    del released["blocks.3.attn.DLA.bn2.weight"], released["aux_head.bias"], released["blocks.0.attn.proj.weight"]
    released["blocks.2.attn.DLA.conv_exp.weight"] = torch.zeros(1)  # a DLA in a normal block is not this model
    released["zz_extra"] = torch.zeros(1)
    released["blocks.1.attn.qkv_bias"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        convert_official_state_dict({"state_dict": released})
    message = str(info.value)
    assert ("unknown keys (3): blocks.1.attn.qkv_bias, blocks.2.attn.DLA.conv_exp.weight, zz_extra"
            in message)
    assert "missing keys (3): aux_head.bias, blocks.0.attn.proj.weight, blocks.3.attn.DLA.bn2.weight" in message
    with pytest.raises(ValueError, match="not tensors: epoch"):
        convert_official_state_dict({"epoch": 3, "blocks.0.x": torch.zeros(1)})


def test_infer_released_l_at_448_from_shapes() -> None:
    with torch.device("meta"):
        large = refiner_vit_l(img_size=448, aux_head=True)
        converted = convert_official_state_dict(released_state(large))
    assert len(converted) == len(large.state_dict())
    assert infer_official_spec(converted) == ("refiner_vit_l", {"img_size": 448, "aux_head": True})
    with torch.device("meta"):
        medium = refiner_vit_m(num_classes=10)
    assert infer_official_spec(medium.state_dict()) == ("refiner_vit_m", {"num_classes": 10})


def test_load_official_checkpoint_from_pth(tmp_path: Path) -> None:
    model = tiny_model().eval()
    path = tmp_path / "refiner_tiny.pth"
    torch.save({"model": released_state(model)}, path)
    loaded = load_official_checkpoint(path, variant="s")
    assert not loaded.training
    assert loaded.model_spec["overrides"] == TINY
    images = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(loaded(images), model(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="match none of"):
        load_official_checkpoint(path)  # tiny sizes are no released size
    resized = load_official_checkpoint(path, variant="s", img_size=64)
    assert resized.pos_embed.shape == (1, 17, 32) and resized(torch.randn(1, 3, 64, 64)).isfinite().all()
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_official_checkpoint(tmp_path / "broken.pth", variant="s")


def test_cli_convert_official(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tiny_model().eval()
    path = tmp_path / "tiny.pth"
    torch.save(released_state(model), path)
    out = tmp_path / "converted"
    assert cli_main(["convert-official", str(path), "--out", str(out), "--variant", "s"]) == 0
    checkpoint = refiner.load_checkpoint(out)
    images = torch.randn(1, 3, 48, 48)
    torch.testing.assert_close(checkpoint.model(images), model(images), rtol=0, atol=0)
    assert checkpoint.config["extra"]["data"]["mean"] == [0.5, 0.5, 0.5]
    assert checkpoint.config["extra"]["source"]["file"] == "tiny.pth"
    # An existing checkpoint is only replaced with --force; a directory that is not one is never touched.
    assert cli_main(["convert-official", str(path), "--out", str(out), "--variant", "s"]) == 2
    assert cli_main(["convert-official", str(path), "--out", str(out), "--variant", "s", "--force"]) == 0
    assert cli_main(["convert-official", str(path), "--out", str(tmp_path), "--variant", "s"]) == 2
    assert path.is_file()
    assert cli_main(["convert-official", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# (4) training mode: every parameter learns, the train-mode logits are the CLS head's


def test_train_mode_gradients_reach_every_parameter() -> None:
    model = refiner_vit_s(**TINY, drop_path_rate=0.1).train()
    images = torch.randn(3, 3, 48, 48)
    cls_logits, aux_logits = model.forward_train(images)
    assert cls_logits.shape == (3, 7) and aux_logits.shape == (3, 9, 7)
    (cls_logits.logsumexp(-1).sum() + aux_logits.logsumexp(-1).mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert param.grad.isfinite().all(), name
        assert param.grad.abs().sum() > 0, name
    model = refiner_vit_s(**TINY).train()  # no stochastic depth, so two passes compute the same
    torch.testing.assert_close(model(images), model.forward_train(images)[0])
