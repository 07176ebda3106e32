"""Core costs, measured side by side in one run (DESIGN section 9, issue 2).

1. Capture overhead: ViT-S/16, batch 8, forward with `capture_attention` over a plain forward (goal <= 1.15x).
2. Refined over vanilla at equal width and depth, train step and inference, for the small CPU pair and
   ViT-S/16 (goal <= 1.3x for a train step).

Runs are interleaved (A, B, A, B, ...) and the median is reported, so background load affects both sides alike.

    .venv/bin/python benchmarks/core_overhead.py [--threads 2] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

import refiner

RESULTS = Path(__file__).parent / "results"


def interleaved_medians(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per call of each function, timed in alternation."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


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
    return {"plain_s": t["plain"], "capture_s": t["capture"], "ratio": t["capture"] / t["plain"]}


def refined_over_vanilla(name: str, batch: int, img: int, repeats: int, in_chans: int = 3) -> Dict[str, float]:
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

    t = interleaved_medians({"train_vanilla": train_step(vanilla), "train_refined": train_step(refined),
                             "infer_vanilla": infer(vanilla), "infer_refined": infer(refined)}, repeats)
    return {**{f"{k}_s": v for k, v in t.items()},
            "train_ratio": t["train_refined"] / t["train_vanilla"],
            "infer_ratio": t["infer_refined"] / t["infer_vanilla"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, small batches (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 2 if args.quick else args.repeats
    results = {
        "capture_vit_s16_b8": capture_overhead(repeats, batch=2 if args.quick else 8),
        "pair_vit_mini_patch6_48_b64": refined_over_vanilla("vit_mini_patch6_48", 64, 48, repeats, in_chans=1),
        "pair_vit_small_patch16_224_b8": refined_over_vanilla("vit_small_patch16_224", 2 if args.quick else 8,
                                                              224, repeats),
        "env": {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                "repeats": repeats, "load_average_at_start": os.getloadavg()[0]},
    }
    c = results["capture_vit_s16_b8"]
    print(f"capture overhead, ViT-S/16 batch 8: {c['capture_s']*1e3:.0f} ms vs {c['plain_s']*1e3:.0f} ms "
          f"-> {c['ratio']:.3f}x (goal <= 1.15x)")
    for key in ("pair_vit_mini_patch6_48_b64", "pair_vit_small_patch16_224_b8"):
        r = results[key]
        print(f"{key}: train step refined/vanilla {r['train_ratio']:.3f}x "
              f"({r['train_refined_s']*1e3:.0f} / {r['train_vanilla_s']*1e3:.0f} ms, goal <= 1.3x); "
              f"inference {r['infer_ratio']:.3f}x ({r['infer_refined_s']*1e3:.0f} / {r['infer_vanilla_s']*1e3:.0f} ms)")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "core_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS / 'core_overhead.json'}")


if __name__ == "__main__":
    main()
