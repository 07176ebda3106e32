"""The refined Body on a GPU: exactness of the fused (compiled) path, its speed, its roofline (issue 12).

Run by benchmarks/gpu_suite.sh. On a CUDA device it

1. checks that the fused training step (`refiner.refinement_fused`, torch.compile -> Triton) gives the eager
   Body's outputs, gradients and running statistics, for both layouts (TF32 off while checking); exits 1 if not;
2. times one Body train step (forward + backward) eager vs fused at the shapes of the shipped mini pair and of
   ViT-S/16, and sets the bytes it must move (`core_overhead.body_step_bytes`) against the device's measured
   copy bandwidth;
3. times a refined/vanilla train step of both pairs, fused path on and off.

Without a GPU it runs the same code on the CPU at small shapes, eager only (``--compile-cpu`` adds the compiled
path, a minute of compilation), so the suite's CPU path stays quick and is tested.

    .venv/bin/python benchmarks/gpu_body.py [--quick] [--compile-cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import refiner  # noqa: E402
import timing  # noqa: E402  (benchmarks/timing.py)
from core_overhead import body_step_bytes  # noqa: E402
from refiner import refinement_fused  # noqa: E402
from refiner.attention_refinement import AttentionRefinement  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: Dict[str, Callable[[], None]], repeats: int, device: torch.device,
                        warmup: int = 2) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternation (benchmarks/timing.py: Timer
    synchronises the accelerator around each call; ``device`` is kept for the callers)."""
    return timing.interleaved_medians(fns, repeats, warmup)


def body_step(body: AttentionRefinement, attn: torch.Tensor, grad: torch.Tensor, fused: bool,
              grid=None) -> torch.Tensor:
    """One training step of the Body on fixed maps; returns the output (input gradient in ``attn.grad``)."""
    attn.grad = None
    body.zero_grad(set_to_none=True)
    prefix = 1 if grid is not None else 0
    out = (refinement_fused.fused_body_step(body, attn, prefix, grid) if fused
           else body._forward_train(attn, prefix, grid))
    out.backward(grad)
    return out


def check_exactness(device: torch.device) -> Dict[str, float]:
    """Largest relative difference, fused vs eager, over outputs, gradients and running statistics."""
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    worst: Dict[str, float] = {}
    for layout, tokens, grid in (("sequence", 65, None), ("spatial", 65, (8, 8))):
        torch.manual_seed(0)
        eager = AttentionRefinement(4, layout=layout).to(device).train()
        fused = copy.deepcopy(eager)
        attn = (3 * torch.randn(8, 4, tokens, tokens, device=device)).softmax(-1)
        grad = torch.randn_like(attn)
        a_eager, a_fused = attn.clone().requires_grad_(), attn.clone().requires_grad_()
        pairs = []
        for _ in range(2):
            out_e = body_step(eager, a_eager, grad, False, grid)
            out_f = body_step(fused, a_fused, grad, True, grid)
        pairs.append((out_f, out_e))
        pairs.append((a_fused.grad, a_eager.grad))
        pairs += [(pf.grad, pe.grad) for pf, pe in zip(fused.parameters(), eager.parameters())]
        pairs += [(bf.float(), be.float()) for bf, be in zip(fused.buffers(), eager.buffers())]
        worst[layout] = max(float((f - e).abs().max()) / (float(e.abs().max()) + 1e-6) for f, e in pairs)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return worst


def body_timing(device: torch.device, batch: int, heads: int, tokens: int, repeats: int,
                compiled: bool) -> Dict[str, float]:
    torch.manual_seed(0)
    body = AttentionRefinement(heads).to(device).train()
    attn = (3 * torch.randn(batch, heads, tokens, tokens, device=device)).softmax(-1).requires_grad_()
    grad = torch.randn_like(attn)
    source = torch.randn(batch, 3 * heads, tokens, tokens, device=device)
    target = torch.empty_like(source)
    fns: Dict[str, Callable[[], None]] = {"eager": lambda: body_step(body, attn, grad, False),
                                          "copy": lambda: target.copy_(source)}
    if compiled:
        fns["fused"] = lambda: body_step(body, attn, grad, True)
    t = interleaved_medians(fns, repeats, device)
    moved = body_step_bytes(batch, heads, tokens)
    bandwidth = 2 * source.numel() * source.element_size() / t["copy"]
    result = {"bytes_per_step": moved, "copy_bytes_per_s": bandwidth, "time_at_copy_bandwidth_s": moved / bandwidth}
    for key in ("eager", "fused"):
        if key in t:
            result[f"{key}_step_s"] = t[key]
            result[f"{key}_fraction_of_copy_bandwidth"] = moved / t[key] / bandwidth
    return result


def pair_timing(device: torch.device, name: str, batch: int, img: int, in_chans: int, repeats: int,
                compiled: bool) -> Dict[str, float]:
    torch.manual_seed(0)
    models = {"vanilla": refiner.create_model(name, in_chans=in_chans).to(device),
              "refined": refiner.create_model(f"refined_{name}", in_chans=in_chans).to(device)}
    x = torch.randn(batch, in_chans, img, img, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(key: str, fused: bool) -> Callable[[], None]:
        def run() -> None:
            os.environ[refinement_fused.ENV_SWITCH] = "1" if fused else "0"
            model = models[key].train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizers[key].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[key].step()
        return run

    fns = {"vanilla": step("vanilla", False), "refined_eager": step("refined", False)}
    if compiled:
        fns["refined_fused"] = step("refined", True)
    t = interleaved_medians(fns, repeats, device)
    os.environ.pop(refinement_fused.ENV_SWITCH, None)
    result = {f"{k}_s": v for k, v in t.items()}
    for key in ("refined_eager", "refined_fused"):
        if key in t:
            result[f"{key}_over_vanilla"] = t[key] / t["vanilla"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--compile-cpu", action="store_true", help="also time the compiled path on a CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    compiled = cuda or args.compile_cpu
    repeats = 2 if args.quick else (20 if cuda else 5)
    result: Dict[str, object] = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                                 "torch": torch.__version__, "compiled": compiled}
    if compiled:
        result["exactness_fused_vs_eager_max_rel_diff"] = worst = check_exactness(device)
        print(f"fused vs eager, largest relative difference: {worst}")
        if max(worst.values()) > 1e-4:
            print("FAILED: the fused Body does not match the eager one")
            json.dump(result, sys.stdout, indent=2)
            return 1
    small = args.quick or not cuda
    shapes = {"mini_h4_n65": (8 if small else 256, 4, 65), "vit_s16_h6_n197": (2 if small else 64, 6, 197)}
    result["body"] = {}
    for key, (batch, heads, tokens) in shapes.items():
        r = body_timing(device, batch, heads, tokens, repeats, compiled)
        result["body"][key] = {"batch": batch, **r}  # type: ignore[index]
        line = ", ".join(f"{k} {r[f'{k}_step_s']*1e3:.2f} ms ({r[f'{k}_fraction_of_copy_bandwidth']:.0%} of copy "
                         f"bandwidth)" for k in ("eager", "fused") if f"{k}_step_s" in r)
        print(f"Body train step {key} batch {batch}: {line}; {r['bytes_per_step']/1e6:.0f} MB, copy "
              f"{r['copy_bytes_per_s']/1e9:.0f} GB/s")
    pairs = {"vit_mini_patch6_48": (8 if small else 256, 48, 1), "vit_small_patch16_224": (1 if small else 64, 224, 3)}
    result["pairs"] = {}
    for name, (batch, img, chans) in pairs.items():
        r = pair_timing(device, name, batch, img, chans, repeats, compiled)
        result["pairs"][name] = {"batch": batch, **r}  # type: ignore[index]
        ratios = ", ".join(f"{k} {r[f'{k}_over_vanilla']:.2f}x" for k in ("refined_eager", "refined_fused")
                           if f"{k}_over_vanilla" in r)
        print(f"train step {name} batch {batch}: refined / vanilla {ratios} (vanilla {r['vanilla_s']*1e3:.1f} ms)")
    result["load_average_1_5_15"] = os.getloadavg()
    out = args.out or RESULTS / ("gpu_body.json" if cuda else "gpu_body_cpu_smoke.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
