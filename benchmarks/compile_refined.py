"""Does `torch.compile` close the refined/vanilla gap? Train steps of the shipped-size pair, eager vs compiled.

The refinement adds many small memory-bound passes (BatchNorm, ReLU6, depthwise conv over (B, 3H, N, N)),
exactly what a fusing compiler could help with. This times one AdamW train step (forward, cross-entropy,
backward, step) of `vit_mini_patch6_48` and its refined twin, eager and `torch.compile`d, interleaved in
rounds so background load hits all four alike, and prints medians and the refined/vanilla ratios.

    .venv/bin/python benchmarks/compile_refined.py [--threads 1] [--batch 32] [--rounds 5] [--steps 3]

Writes benchmarks/results/compile_refined.json. The first compilation takes a minute or more on a CPU
(inductor builds C++ kernels; they are cached for later runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import refiner  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PAIR = ("vit_mini_patch6_48", "refined_vit_mini_patch6_48")


def make_step(name: str, compiled: bool, batch: int) -> Callable[[], None]:
    """A closure running one train step of a fresh seeded model on a fixed random batch (1 x 48 x 48)."""
    torch.manual_seed(0)
    model = refiner.create_model(name, in_chans=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compiled else model
    images, labels = torch.randn(batch, 1, 48, 48), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_refined.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    steps: Dict[str, Callable[[], None]] = {}
    compile_s: Dict[str, float] = {}
    for name in PAIR:
        for compiled in (False, True):
            key = f"{name} {'compiled' if compiled else 'eager'}"
            steps[key] = make_step(name, compiled, args.batch)
            start = time.perf_counter()
            for _ in range(2):  # compilation (forward and backward graphs) happens in the first steps
                steps[key]()
            compile_s[key] = time.perf_counter() - start
    times: Dict[str, List[float]] = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
    median_ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    for key in steps:
        print(f"{key:40s} {median_ms[key]:7.0f} ms/step   (first two steps {compile_s[key]:.1f} s)")
    ratios = {mode: median_ms[f"{PAIR[1]} {mode}"] / median_ms[f"{PAIR[0]} {mode}"] for mode in ("eager", "compiled")}
    gain = median_ms[f"{PAIR[1]} eager"] / median_ms[f"{PAIR[1]} compiled"]
    print(f"refined / vanilla train step: eager {ratios['eager']:.2f}x, compiled {ratios['compiled']:.2f}x; "
          f"compiling the refined model speeds it up {gain:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "threads": args.threads, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
        "median_ms": median_ms, "first_two_steps_s": compile_s, "refined_over_vanilla": ratios,
        "refined_compile_speedup": gain, "torch": torch.__version__, "machine": platform.processor() or "cpu",
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
