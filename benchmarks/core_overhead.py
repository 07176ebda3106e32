"""Core costs, measured side by side in one run (DESIGN section 9, issues 2 and 12).

1. Capture overhead: ViT-S/16, batch 8, forward with `capture_attention` over a plain forward (goal <= 1.05x).
2. Refined over vanilla at equal width and depth, train step and inference: the shipped-size pair
   (`vit_mini_patch6_48`, batch 64; goal <= 1.5x for a train step) and ViT-S/16 at 224, batch 8 (goal <= 1.25x).
3. The refined Body's roofline: the bytes one training step of the Body must move (counted from the shapes,
   `body_step_bytes`) divided by the time the step takes, against this machine's copy bandwidth measured in
   the same run, interleaved with it.

Everything is measured at each thread count of ``--threads`` (default 1 and 2). Runs are interleaved
(A, B, A, B, ...) and the median is reported, so background load affects both sides alike; the load average
is recorded before and after.

    .venv/bin/python benchmarks/core_overhead.py [--threads 1 2] [--repeats 7] [--quick]

Writes benchmarks/results/core_overhead.json (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import refiner  # noqa: E402
from refiner.attention_refinement import AttentionRefinement  # noqa: E402
from timing import interleaved_times  # noqa: E402  (benchmarks/timing.py: torch.utils.benchmark.Timer)

RESULTS = REPO / "benchmarks" / "results"
KERNELS_SWITCH = "REFINER_COMPILED_KERNELS"  # refiner.refinement_kernels.ENV_SWITCH


def interleaved_medians(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds of each function, plus ``NAME_min``: on a shared machine the least disturbed run."""
    times = interleaved_times(fns, repeats)
    return {**{k: statistics.median(v) for k, v in times.items()}, **{f"{k}_min": min(v) for k, v in times.items()}}


def with_kernels(fn: Callable[[], None], on: bool) -> Callable[[], None]:
    """``fn`` with the Body's compiled CPU kernels switched on or off (`refiner.refinement_kernels`)."""
    def run() -> None:
        previous = os.environ.get(KERNELS_SWITCH)
        os.environ[KERNELS_SWITCH] = "1" if on else "0"
        try:
            fn()
        finally:
            if previous is None:
                del os.environ[KERNELS_SWITCH]
            else:
                os.environ[KERNELS_SWITCH] = previous
    return run
GOALS = {"capture": 1.05, "pair_vit_mini_patch6_48": 1.5, "pair_vit_small_patch16_224": 1.25}


def capture_overhead(repeats: int, batch: int) -> Dict[str, float]:
    model = refiner.create_model("vit_small_patch16_224").eval()
    x = torch.randn(batch, 3, 224, 224)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured() -> None:
        with torch.no_grad(), refiner.capture_attention(model):
            model(x)

    t = interleaved_medians({"plain": plain, "capture": captured}, repeats)
    return {"plain_s": t["plain"], "capture_s": t["capture"], "ratio": t["capture"] / t["plain"],
            "ratio_of_minima": t["capture_min"] / t["plain_min"]}


def refined_over_vanilla(name: str, batch: int, img: int, repeats: int, in_chans: int = 3,
                         eager_too: bool = False) -> Dict[str, float]:
    """Train step and inference, refined over vanilla; with ``eager_too`` also the refined train step with the
    Body's compiled CPU kernels switched off (``train_refined_eager``), in the same interleaved run."""
    torch.manual_seed(0)
    vanilla = refiner.create_model(name, in_chans=in_chans)
    refined = refiner.create_model(f"refined_{name}", in_chans=in_chans)
    x = torch.randn(batch, in_chans, img, img)
    y = torch.randint(0, vanilla.num_classes, (batch,))
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (vanilla, refined)}

    def train_step(model: torch.nn.Module) -> Callable[[], None]:
        def step() -> None:
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizers[model].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[model].step()
        return step

    def infer(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            model.eval()
            with torch.no_grad():
                model(x)
        return run

    fns = {"train_vanilla": train_step(vanilla), "train_refined": with_kernels(train_step(refined), True),
           "infer_vanilla": infer(vanilla), "infer_refined": infer(refined)}
    if eager_too:
        fns["train_refined_eager"] = with_kernels(train_step(refined), False)
    t = interleaved_medians(fns, repeats)
    ratios = {"train_ratio": t["train_refined"] / t["train_vanilla"],
              "train_ratio_of_minima": t["train_refined_min"] / t["train_vanilla_min"],
              "infer_ratio": t["infer_refined"] / t["infer_vanilla"],
              "infer_ratio_of_minima": t["infer_refined_min"] / t["infer_vanilla_min"]}
    if eager_too:
        ratios["train_ratio_eager"] = t["train_refined_eager"] / t["train_vanilla"]
        ratios["train_ratio_eager_of_minima"] = t["train_refined_eager_min"] / t["train_vanilla_min"]
    return {**{f"{k}_s": v for k, v in t.items()}, **ratios}


def body_step_bytes(batch: int, heads: int, tokens: int, ratio: int = 3, itemsize: int = 4) -> int:
    """Bytes one training step (forward + backward) of the Body must move between memory and the CPU.

    The count assumes a stage-wise Body: every (B, C, N, N) tensor passed between stages (expansion, depthwise
    convolution, normalisation, reduction) is written once and read once per use, and each BatchNorm reads its
    input twice (statistics, then normalise) in each direction. With ``a`` the bytes of one (B, H, N, N) map
    and ``e = r * a`` of the expanded maps:

    - forward: expansion reads A (a), writes y1 (e); convolution reads y1, writes z (2e); BN + ReLU6 reads z
      twice, writes y2 (3e); reduction reads y2 (e), writes x (a); its BN reads x twice, writes out (3a);
    - backward: reduction BN reads its gradient and x twice each, writes the gradient of x (5a); the GEMMs read
      that twice (2a), read y2 (e) and write its gradient (e); BN + ReLU6 reads gradient, y2 and z twice each,
      writes the gradient of z (7e); the convolution reads that twice and y1 once, writes the gradient of y1
      (4e); the expansion reads gradient and y1 (2e), writes the masked gradient (e), reads it twice (2e) and
      A once (a), writes the gradient of A (a).

    Total ``25 e + 14 a``. A Body fused across stages (one kernel, recomputing instead of storing) could move
    less; this is the floor for the layer-by-layer design used on the CPU.
    """
    a = batch * heads * tokens * tokens * itemsize
    return 25 * ratio * a + 14 * a


def body_roofline(batch: int, heads: int, tokens: int, repeats: int, layout: str = "sequence") -> Dict[str, float]:
    """Time of one Body train step against its byte count and the measured copy bandwidth (interleaved)."""
    torch.manual_seed(0)
    body = AttentionRefinement(heads, layout=layout).train()
    attn = (3 * torch.randn(batch, heads, tokens, tokens)).softmax(-1).requires_grad_()
    grad = torch.randn(batch, heads, tokens, tokens)
    # Copy bandwidth on a tensor the size of the expanded maps: read + write, like the Body's passes.
    source = torch.randn(batch, 3 * heads, tokens, tokens)
    target = torch.empty_like(source)

    def step() -> None:
        attn.grad = None
        body(attn).backward(grad)

    def copy() -> None:
        target.copy_(source)

    t = interleaved_medians({"body": step, "copy": copy}, repeats)
    moved = body_step_bytes(batch, heads, tokens)
    copy_bandwidth = 2 * source.numel() * source.element_size() / t["copy"]
    achieved = moved / t["body"]
    return {"body_step_s": t["body"], "bytes_per_step": moved, "achieved_bytes_per_s": achieved,
            "copy_bytes_per_s": copy_bandwidth, "fraction_of_copy_bandwidth": achieved / copy_bandwidth,
            "time_at_copy_bandwidth_s": moved / copy_bandwidth}


def measure(threads: int, repeats: int, quick: bool) -> Dict[str, object]:
    torch.set_num_threads(threads)
    return {
        "capture_vit_s16_b8": capture_overhead(repeats, batch=2 if quick else 8),
        "pair_vit_mini_patch6_48_b64": refined_over_vanilla("vit_mini_patch6_48", 16 if quick else 64, 48, repeats,
                                                            in_chans=1, eager_too=True),
        "pair_vit_small_patch16_224_b8": refined_over_vanilla("vit_small_patch16_224", 2 if quick else 8, 224,
                                                              repeats),
        # The Body of one block of each pair at its shapes: mini (H 4, N 65), ViT-S/16 (H 6, N 197).
        "roofline_body_mini_b64": body_roofline(16 if quick else 64, 4, 65, repeats),
        "roofline_body_vit_s16_b8": body_roofline(2 if quick else 8, 6, 197, repeats),
    }


def report(threads: int, results: Dict[str, Dict[str, float]]) -> None:
    c = results["capture_vit_s16_b8"]
    print(f"[{threads} thread{'s' if threads > 1 else ''}]")
    print(f"  capture overhead, ViT-S/16: {c['capture_s']*1e3:.0f} / {c['plain_s']*1e3:.0f} ms "
          f"-> {c['ratio']:.3f}x, minima {c['ratio_of_minima']:.3f}x (goal <= {GOALS['capture']}x)")
    for key in ("pair_vit_mini_patch6_48_b64", "pair_vit_small_patch16_224_b8"):
        r = results[key]
        goal = GOALS[key.rsplit("_", 1)[0]]
        print(f"  {key}: train step refined/vanilla {r['train_ratio']:.3f}x, minima {r['train_ratio_of_minima']:.3f}x "
              f"({r['train_refined_s']*1e3:.0f} / {r['train_vanilla_s']*1e3:.0f} ms, goal <= {goal}x); "
              f"inference {r['infer_ratio']:.3f}x, minima {r['infer_ratio_of_minima']:.3f}x "
              f"({r['infer_refined_s']*1e3:.0f} / {r['infer_vanilla_s']*1e3:.0f} ms)")
        if "train_ratio_eager" in r:
            print(f"    compiled Body kernels off: train step {r['train_ratio_eager']:.3f}x, minima "
                  f"{r['train_ratio_eager_of_minima']:.3f}x ({r['train_refined_eager_s']*1e3:.0f} ms)")
    for key in ("roofline_body_mini_b64", "roofline_body_vit_s16_b8"):
        r = results[key]
        print(f"  {key}: {r['bytes_per_step']/1e6:.0f} MB per train step in {r['body_step_s']*1e3:.1f} ms "
              f"= {r['achieved_bytes_per_s']/1e9:.1f} GB/s; copy bandwidth {r['copy_bytes_per_s']/1e9:.1f} GB/s "
              f"-> {r['fraction_of_copy_bandwidth']:.0%} of it ({r['time_at_copy_bandwidth_s']*1e3:.1f} ms at copy speed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, small batches (smoke run)")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats
    load_before = os.getloadavg()
    results: Dict[str, object] = {}
    for threads in args.threads:
        results[f"threads_{threads}"] = measure(threads, repeats, args.quick)
        report(threads, results[f"threads_{threads}"])  # type: ignore[arg-type]
    results["env"] = {"torch": torch.__version__, "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "repeats": repeats, "load_average_1_5_15_before": load_before,
                      "load_average_1_5_15_after": os.getloadavg(),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} cores")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "core_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS / 'core_overhead.json'}")


if __name__ == "__main__":
    main()
