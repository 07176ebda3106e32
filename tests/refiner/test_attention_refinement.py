"""The Body of refined attention: layers, shapes, the spatial 4-D convolution against a brute-force loop, and
the hand-written training-mode autograd (issue 12) against the Body as it was built from ``nn`` layers."""

import copy
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from refiner.attention_refinement import AttentionRefinement


def reference_body(body: AttentionRefinement, attn: torch.Tensor, num_prefix_tokens: int = 0,
                   grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The Body as it was before issue 12: the ``nn`` layers in order, in train or eval mode (kept as the oracle).

    The 1x1 convolutions run as F.linear over the channels-last head axis, the depthwise convolution and the
    BatchNorm modules as themselves (so their running statistics update in training mode).
    """
    heads, channels = body.num_heads, body.expand.out_channels
    x = F.linear(attn.permute(0, 2, 3, 1), body.expand.weight.view(channels, heads))
    x = F.relu6(body.expand_norm(x.permute(0, 3, 1, 2)), inplace=True)
    if body.layout == "sequence":
        x = body.local(x)
    else:
        x = body._local_spatial(x, num_prefix_tokens, grid_size)
    x = F.relu6(body.local_norm(x), inplace=True)
    x = F.linear(x.permute(0, 2, 3, 1), body.reduce.weight.view(heads, channels))
    return body.reduce_norm(x.permute(0, 3, 1, 2))


def _randomised_body(layout: str, zero_init: bool, dtype: torch.dtype, heads: int = 3,
                     momentum: Optional[float] = 0.1) -> AttentionRefinement:
    torch.manual_seed(1)
    body = AttentionRefinement(num_heads=heads, ratio=2, kernel=3, layout=layout)
    for norm in (body.expand_norm, body.local_norm, body.reduce_norm):
        norm.momentum = momentum
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 1.5)
        # Scales up to 5 standard deviations: a good share of the values land beyond both ReLU6 bounds.
        norm.weight.data.uniform_(0.5, 5.0)
        norm.bias.data.uniform_(-0.3, 0.3)
    if zero_init:
        body.zero_init_()
    return body.to(dtype)


def _attention(dtype: torch.dtype, batch: int = 3, heads: int = 3, tokens: int = 10) -> torch.Tensor:
    torch.manual_seed(2)
    return (3 * torch.randn(batch, heads, tokens, tokens)).softmax(-1).to(dtype)


def _run(body: AttentionRefinement, fn, attn: torch.Tensor, grad: torch.Tensor, steps: int = 2):
    """Output and gradients (input and every parameter) of the last of ``steps`` training steps."""
    for _ in range(steps):
        body.zero_grad(set_to_none=True)
        x = attn.detach().clone().requires_grad_()
        out = fn(body, x, 1, (3, 3))
        out.backward(grad)
    grads = {name: p.grad.clone() for name, p in body.named_parameters()}
    return out.detach(), x.grad, grads


def _training_step_matches_the_nn_layer_body(layout: str, zero_init: bool, dtype: torch.dtype, tol: float
                                             ) -> Tuple[AttentionRefinement, torch.Tensor]:
    """Two training steps of a Body and of `reference_body` on a copy: outputs, input and parameter gradients
    within ``tol * (max |reference| + 1)``, running statistics within ``tol``. Returns (the Body, its input)."""
    new = _randomised_body(layout, zero_init, dtype).train()
    old = copy.deepcopy(new)
    attn = _attention(dtype)
    torch.manual_seed(3)
    grad = torch.randn(attn.shape, dtype=dtype)
    out_new, dx_new, grads_new = _run(new, AttentionRefinement.forward, attn, grad)
    out_old, dx_old, grads_old = _run(old, reference_body, attn, grad)
    torch.testing.assert_close(out_new, out_old, atol=tol * (float(out_old.abs().max()) + 1.0), rtol=tol)
    torch.testing.assert_close(dx_new, dx_old, atol=tol * (float(dx_old.abs().max()) + 1.0), rtol=tol)
    for name, ref in grads_old.items():
        torch.testing.assert_close(grads_new[name], ref, atol=tol * (float(ref.abs().max()) + 1.0), rtol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for (name, a), (_, b) in zip(new.named_buffers(), old.named_buffers()):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")
    return new, attn


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
@pytest.mark.parametrize("zero_init", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_training_step_equals_the_nn_layer_body(layout: str, zero_init: bool, dtype: torch.dtype,
                                                tol: float) -> None:
    # Outputs, gradients of the input and of every parameter, and the running statistics after two steps.
    new, attn = _training_step_matches_the_nn_layer_body(layout, zero_init, dtype, tol)
    assert int(new.expand_norm.num_batches_tracked) == 2
    # The batch must reach both ReLU6 bounds, or the masks would go untested.
    with torch.no_grad():
        norm = new.expand_norm
        expanded = F.batch_norm(F.conv2d(attn, new.expand.weight), None, None, norm.weight, norm.bias, True)
        assert (expanded < 0).any() and (expanded > 6).any()


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
def test_cumulative_running_statistics_equal_the_nn_layer_body(layout: str) -> None:
    # momentum=None: BatchNorm keeps a cumulative average of the batch statistics.
    new = _randomised_body(layout, False, torch.float64, momentum=None).train()
    old = copy.deepcopy(new)
    for step in range(3):
        attn = _attention(torch.float64, tokens=10) ** (1 + step)
        new(attn, 1, (3, 3))
        reference_body(old, attn, 1, (3, 3))
    for (name, a), (_, b) in zip(new.named_buffers(), old.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
@pytest.mark.parametrize("zero_init", [False, True])
def test_eval_mode_equals_the_nn_layer_body(layout: str, zero_init: bool) -> None:
    new = _randomised_body(layout, zero_init, torch.float32).eval()
    old = copy.deepcopy(new)
    attn = _attention(torch.float32)
    with torch.no_grad():
        expected = reference_body(old, attn, 1, (3, 3))
        torch.testing.assert_close(new(attn, 1, (3, 3)), expected, atol=2e-5 * float(expected.abs().max()) + 1e-6,
                                   rtol=2e-5)
        if zero_init:
            assert float(new(attn, 1, (3, 3)).abs().max()) == 0.0


def test_training_step_of_a_large_batch_is_closer_to_float64_than_the_nn_layer_body() -> None:
    # 100k values per channel in fp32. Both fp32 Bodies differ from the float64 one where a value rounds to the
    # other side of a ReLU6 bound (the gradient is discontinuous there), but the rest is rounding: the new
    # statistics (fp32 sums, second moments by GEMM) must be at least as close as BatchNorm's.
    body = _randomised_body("sequence", False, torch.float64, heads=4).train()
    attn = _attention(torch.float64, batch=16, heads=4, tokens=80)
    torch.manual_seed(4)
    grad = torch.randn(attn.shape, dtype=torch.float64)
    exact = _run(copy.deepcopy(body), reference_body, attn, grad, steps=1)
    old = _run(copy.deepcopy(body).float(), reference_body, attn.float(), grad.float(), steps=1)
    new = _run(body.float(), AttentionRefinement.forward, attn.float(), grad.float(), steps=1)

    def flat(result):
        return [result[0], result[1], *result[2].values()]

    for got, before, want in zip(flat(new), flat(old), flat(exact)):
        error, error_before = (got.double() - want).norm(), (before.double() - want).norm()
        assert error <= error_before * 1.01 + 1e-12 and error <= 1e-2 * want.norm()


def _inductor_cpu_available() -> bool:
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _inductor_cpu_available(), reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("layout", ["sequence", "spatial"])
def test_fused_gpu_path_compiled_for_the_cpu_equals_the_nn_layer_body(layout: str) -> None:
    # The compiled path that CUDA training takes, compiled here with inductor's C++ backend (the same graph
    # Triton gets on a GPU): values, gradients and running statistics of two steps as the layer stack.
    from refiner import refinement_fused

    new = _randomised_body(layout, False, torch.float32).train()
    old = copy.deepcopy(new)
    attn = _attention(torch.float32)
    torch.manual_seed(3)
    grad = torch.randn(attn.shape)
    out_new, dx_new, grads_new = _run(new, refinement_fused.fused_body_step, attn, grad)
    out_old, dx_old, grads_old = _run(old, reference_body, attn, grad)
    torch.testing.assert_close(out_new, out_old, atol=2e-5 * float(out_old.abs().max()), rtol=2e-5)
    torch.testing.assert_close(dx_new, dx_old, atol=2e-5 * float(dx_old.abs().max()), rtol=2e-5)
    for name, ref in grads_old.items():
        torch.testing.assert_close(grads_new[name], ref, atol=2e-5 * float(ref.abs().max()) + 1e-6, rtol=2e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    for (name, a), (_, b) in zip(new.named_buffers(), old.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_path_is_taken_only_for_cuda_maps_and_can_be_switched_off(monkeypatch) -> None:
    from refiner import refinement_fused

    cpu_maps = torch.rand(1, 2, 4, 4)
    assert not refinement_fused.fused_wanted(cpu_maps)
    meta_cuda = torch.empty(1, 2, 4, 4, device="meta")
    monkeypatch.setattr(type(meta_cuda), "is_cuda", property(lambda self: True))
    assert refinement_fused.fused_wanted(meta_cuda)
    monkeypatch.setenv(refinement_fused.ENV_SWITCH, "0")
    assert not refinement_fused.fused_wanted(meta_cuda)


def test_a_failed_compilation_warns_once_and_falls_back_to_the_eager_body(monkeypatch) -> None:
    from refiner import refinement_fused

    def broken(*args, **kwargs):
        raise RuntimeError("no triton here")

    monkeypatch.setattr(refinement_fused, "_failed", False)
    monkeypatch.setattr(refinement_fused, "fused_body_step", broken)
    monkeypatch.setattr(refinement_fused, "fused_wanted", lambda attn: not refinement_fused._failed)
    body = _randomised_body("sequence", False, torch.float64).train()
    old = copy.deepcopy(body)
    attn = _attention(torch.float64)
    with pytest.warns(RuntimeWarning, match="no triton here"):
        out = body(attn)
    torch.testing.assert_close(out, reference_body(old, attn))
    assert refinement_fused._failed and int(body.expand_norm.num_batches_tracked) == 1


def test_fused_path_under_autocast_gets_fp32_maps_outside_autocast(monkeypatch) -> None:
    # bf16 training on a GPU: the compiled Body must see what the eager one sees (fp32 maps, autocast off), or
    # its convolutions would run in bf16 and its BatchNorm statistics would differ from the eager path's.
    from refiner import refinement_fused

    seen = {}

    def recording(body, attn, num_prefix_tokens=0, grid_size=None):
        seen["dtype"], seen["autocast"] = attn.dtype, torch.is_autocast_enabled("cpu")
        return body._forward_train(attn, num_prefix_tokens, grid_size)

    monkeypatch.setattr(refinement_fused, "fused_wanted", lambda attn: True)
    monkeypatch.setattr(refinement_fused, "fused_body_step", recording)
    body = _randomised_body("sequence", False, torch.float32).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = body(_attention(torch.bfloat16))
    assert seen == {"dtype": torch.float32, "autocast": False} and out.dtype == torch.float32


@pytest.mark.parametrize("layout", ["sequence", "spatial"])
@pytest.mark.parametrize("zero_init", [False, True])
def test_training_step_with_the_compiled_kernels_switched_off_equals_the_nn_layer_body(
        layout: str, zero_init: bool, monkeypatch) -> None:
    # The eager twins of the fused CPU kernels (what runs without a C++ compiler) in float32.
    from refiner import refinement_kernels

    monkeypatch.setenv(refinement_kernels.ENV_SWITCH, "0")
    _training_step_matches_the_nn_layer_body(layout, zero_init, torch.float32, 2e-5)


def _kernel_inputs(rows: int = 5000, channels: int = 7):
    """(grad_y, y, z, per-channel a, b, c): y is ReLU6 of z, with values exactly on and beyond both bounds."""
    torch.manual_seed(5)
    z = 4 * torch.randn(rows, channels) + 3
    z[:50] = 0.0
    z[50:100] = 6.0
    y = z.clamp(0.0, 6.0)
    grad_y = torch.randn(rows, channels)
    a, b, c = torch.randn(3, channels).unbind(0)
    return grad_y, y, z, a, b, c


@pytest.mark.skipif(not _inductor_cpu_available(), reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_cpu_kernels_equal_their_eager_twins_and_the_plain_formulas() -> None:
    from refiner import refinement_kernels as kernels

    grad_y, y, z, a, b, c = _kernel_inputs()
    inside = (z > 0) & (z < 6)  # ReLU6 passes the gradient strictly inside its bounds
    masked = torch.where(inside, grad_y, 0.0)
    expected = {
        "norm_stats": ((z.double().mean(0), z.double().var(0, unbiased=False)), (z,)),
        "scale_shift_relu6": ((z.double() * a + b).clamp(0, 6), (z, a, b)),
        "relu6_norm_grad_sums": ((masked.double().sum(0), (masked.double() * z).sum(0)), (grad_y, y, z)),
        "relu6_norm_grad": (masked.double() * a + z.double() * b + c, (grad_y, y, z, a, b, c)),
        "relu6_grad_with_sums": ((masked.double(), masked.double().sum(0)), (grad_y, y)),
    }
    assert set(expected) == set(kernels._KERNELS)
    for name, (want, args) in expected.items():
        fused, eager = kernels._KERNELS[name]
        compiled = kernels._run(name, *args)
        assert name in kernels._compiled and not kernels._failed, name
        for got in (compiled, eager(*args)):
            for g, w in zip(*(torch.utils._pytree.tree_leaves(t) for t in (got, want))):
                assert g.dtype == torch.float32, name
                torch.testing.assert_close(g.double(), w, atol=1e-5 * float(w.abs().max()), rtol=1e-5,
                                           msg=lambda m, name=name: f"{name}: {m}")


def test_compiled_kernels_only_for_float32_cpu_values_and_can_be_switched_off(monkeypatch) -> None:
    from refiner import refinement_kernels as kernels

    monkeypatch.setattr(kernels, "_failed", False)
    assert kernels.compiled_wanted(torch.zeros(2, 3))
    assert not kernels.compiled_wanted(torch.zeros(2, 3, dtype=torch.float64))
    assert not kernels.compiled_wanted(torch.zeros(2, 3, device="meta"))
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert not kernels.compiled_wanted(torch.zeros(2, 3))


def test_a_failed_kernel_compilation_warns_once_and_falls_back_to_the_eager_twins(monkeypatch) -> None:
    from refiner import refinement_kernels as kernels

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels.torch, "compile", no_compiler)
    body = _randomised_body("sequence", False, torch.float32).train()
    old = copy.deepcopy(body)
    attn = _attention(torch.float32)
    torch.manual_seed(3)
    grad = torch.randn(attn.shape)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here") as caught:
        out_new, dx_new, _ = _run(body, AttentionRefinement.forward, attn, grad)
    assert len([w for w in caught if "compiled CPU kernels" in str(w.message)]) == 1
    out_old, dx_old, _ = _run(old, reference_body, attn, grad)
    torch.testing.assert_close(out_new, out_old, atol=2e-5 * (float(out_old.abs().max()) + 1), rtol=2e-5)
    torch.testing.assert_close(dx_new, dx_old, atol=2e-5 * (float(dx_old.abs().max()) + 1), rtol=2e-5)
    assert kernels._failed and not kernels.compiled_wanted(attn)
