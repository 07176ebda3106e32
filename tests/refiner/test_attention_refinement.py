"""The Body of refined attention: layers, shapes, and the spatial 4-D convolution against a brute-force loop."""

import pytest
import torch
import torch.nn.functional as F

from refiner.attention_refinement import AttentionRefinement


def test_sequence_layout_is_the_documented_stack() -> None:
    body = AttentionRefinement(num_heads=2, ratio=3, kernel=3).eval()
    for norm in (body.expand_norm, body.local_norm, body.reduce_norm):
        norm.running_mean.uniform_(-0.1, 0.1)
        norm.running_var.uniform_(0.5, 1.5)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.1, 0.1)
    attn = torch.rand(2, 2, 7, 7).softmax(-1)

    def bn(x, m):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    x = F.relu6(bn(F.conv2d(attn, body.expand.weight), body.expand_norm))
    x = F.relu6(bn(F.conv2d(x, body.local.weight, padding=1, groups=6), body.local_norm))
    expected = bn(F.conv2d(x, body.reduce.weight), body.reduce_norm)
    torch.testing.assert_close(body(attn), expected)
    assert body.expand.weight.shape == (6, 2, 1, 1) and body.local.weight.shape == (6, 1, 3, 3)


def brute_force_spatial_local(x: torch.Tensor, weight: torch.Tensor, k: int, prefix: int, gh: int,
                              gw: int) -> torch.Tensor:
    """out[c, (qy,qx), (ky,kx)] = sum over offsets of w[c, (a,b), e, f] * x[c, (qy+a-p, qx+b-p), (ky+e-p, kx+f-p)]."""
    b, c, n, _ = x.shape
    pad = k // 2
    out = x.clone()
    w = weight.reshape(c, k, k, k, k)  # (channel, query dy, query dx, key dy, key dx)
    grid = x[:, :, prefix:, prefix:].reshape(b, c, gh, gw, gh, gw)
    result = torch.zeros_like(grid)
    for qy in range(gh):
        for qx in range(gw):
            for ky in range(gh):
                for kx in range(gw):
                    total = torch.zeros(b, c)
                    for a in range(k):
                        for bb in range(k):
                            for e in range(k):
                                for f in range(k):
                                    sy, sx, ty, tx = qy + a - pad, qx + bb - pad, ky + e - pad, kx + f - pad
                                    if 0 <= sy < gh and 0 <= sx < gw and 0 <= ty < gh and 0 <= tx < gw:
                                        total += w[:, a, bb, e, f] * grid[:, :, sy, sx, ty, tx]
                    result[:, :, qy, qx, ky, kx] = total
    out[:, :, prefix:, prefix:] = result.reshape(b, c, gh * gw, gh * gw)
    return out


def test_spatial_layout_is_a_4d_depthwise_conv_on_the_patch_grid() -> None:
    body = AttentionRefinement(num_heads=1, ratio=2, kernel=3, layout="spatial")
    prefix, gh, gw = 1, 3, 4
    x = torch.randn(2, 2, prefix + gh * gw, prefix + gh * gw)
    expected = brute_force_spatial_local(x, body.local.weight.detach(), 3, prefix, gh, gw)
    torch.testing.assert_close(body._local_spatial(x, prefix, (gh, gw)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
def test_eval_mode_folding_equals_batchnorm_with_running_statistics(layout: str) -> None:
    body = AttentionRefinement(num_heads=2, ratio=2, kernel=3, layout=layout)
    for norm in (body.expand_norm, body.local_norm, body.reduce_norm):
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 1.5)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.1, 0.1)
    body.eval()
    attn = torch.rand(2, 2, 10, 10).softmax(-1)

    def bn(x, m):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    x = F.relu6(bn(F.conv2d(attn, body.expand.weight), body.expand_norm))
    x = body._local_spatial(x, 1, (3, 3)) if layout == "spatial" else body.local(x)
    x = F.relu6(bn(x, body.local_norm))
    expected = bn(F.conv2d(x, body.reduce.weight), body.reduce_norm)
    torch.testing.assert_close(body(attn, 1, (3, 3)), expected, atol=1e-5, rtol=1e-5)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="layout"):
        AttentionRefinement(2, layout="diagonal")
    with pytest.raises(ValueError, match="odd"):
        AttentionRefinement(2, kernel=4)
    with pytest.raises(ValueError, match="grid"):
        AttentionRefinement(2, layout="spatial")(torch.rand(1, 2, 10, 10), 1, (2, 2))


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
def test_refined_model_trains_under_bf16_autocast(layout: str) -> None:
    # The trainer's GPU path (amp: bf16 autocast) exercised with CPU autocast: mixed bf16/fp32 tensors must
    # flow through the channels-last Body (linear over heads, depthwise conv, BatchNorm, in-place ReLU6) in
    # training and eval mode, and every parameter must get a finite gradient.
    import refiner

    torch.manual_seed(0)
    model = refiner.create_model("vit_micro_patch4_32", in_chans=1)
    refiner.refine(model, layout=layout)
    images, labels = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        full = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images)  # eval mode folds BatchNorm into the convs; bf16 must give nearly the same logits
    assert torch.allclose(low.float(), full, atol=0.1 * float(full.abs().max()) + 1e-3)
