"""Training throughput of the shipped vanilla/refined pair, refined over vanilla measured in one run.

Both trainers are built from the shipped configs (same recipe, same data pipeline) and their real training
step (`Trainer._train_step`: schedule, normalisation, forward, loss, backward, clipping, AdamW) is timed in
alternating chunks, so background load on a shared machine slows both sides alike. Reported per model: median
images/s over the chunks, with and without drawing the batches (cluttered-mnist canvases are generated on the
fly); and the ratio refined / vanilla of images/s (below 1: refinement costs throughput). On a shared machine
the best chunk and images per second of process CPU time are reported too (load average before and after).
On a GPU the FLOPs of one step are counted (torch.utils.flop_counter) and model FLOP utilisation is reported
against ``--peak-tflops`` (default: the dense bf16 peak of a known GPU).

    .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--chunks 7] [--steps 10]

Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refiner.training import Trainer, load_config  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; pass --peak-tflops for other GPUs.
KNOWN_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def gpu_peak_tflops() -> Optional[float]:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in KNOWN_PEAKS.items() if key in name), None)


def step_flops(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer._train_step(images, labels)
    return int(counter.get_total_flops())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vanilla", default=str(REPO / "configs" / "cluttered_mnist_vanilla.yaml"))
    parser.add_argument("--refined", default=str(REPO / "configs" / "cluttered_mnist_refined.yaml"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--chunks", type=int, default=7, help="alternating timed chunks per model")
    parser.add_argument("--steps", type=int, default=10, help="training steps per chunk")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU peak for model FLOP utilisation")
    parser.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    trainers: Dict[str, Trainer] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, path in (("vanilla", args.vanilla), ("refined", args.refined)):
            config = load_config(path, [f"output_dir={scratch}/{name}", "progress=false",
                                        f"threads={torch.get_num_threads()}"])
            trainers[name] = Trainer(config)
        batch_size = trainers["vanilla"].config.batch_size
        iterators = {name: iter(t._loader()) for name, t in trainers.items()}

        def next_batch(name: str):
            try:
                batch = next(iterators[name])
            except StopIteration:
                iterators[name] = iter(trainers[name]._loader())
                batch = next(iterators[name])
            device = trainers[name].context.device
            return batch[0].to(device), batch[1].to(device)

        def sync() -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        fixed = {name: next_batch(name) for name in trainers}
        for name, trainer in trainers.items():  # warm-up: allocator, oneDNN/cuBLAS kernel choice
            for _ in range(3):
                trainer._train_step(*fixed[name])
        compute: Dict[str, List[float]] = {name: [] for name in trainers}
        # Images per second of process CPU time: on a shared machine it leaves out the time this process
        # was not running (with several threads it counts all of their time, so it is a cost, not a speed).
        compute_cpu: Dict[str, List[float]] = {name: [] for name in trainers}
        load_before = os.getloadavg()
        end_to_end: Dict[str, List[float]] = {name: [] for name in trainers}
        for _ in range(args.chunks):
            for name, trainer in trainers.items():
                sync()
                start, start_cpu = time.perf_counter(), time.process_time()
                for _ in range(args.steps):
                    trainer._train_step(*fixed[name])
                sync()
                compute[name].append(args.steps * batch_size / (time.perf_counter() - start))
                compute_cpu[name].append(args.steps * batch_size / (time.process_time() - start_cpu))
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer._train_step(*next_batch(name))
                sync()
                end_to_end[name].append(args.steps * batch_size / (time.perf_counter() - start))

        result: Dict[str, object] = {
            "benchmark": "train_throughput",
            "models": {name: {"model": t.config.model, "parameters": sum(p.numel() for p in t.model.parameters()),
                              "batch_size": batch_size,
                              "images_per_s_compute": statistics.median(compute[name]),
                              "images_per_s_with_data": statistics.median(end_to_end[name]),
                              "images_per_s_best_chunk": max(compute[name]),
                              "images_per_cpu_s": statistics.median(compute_cpu[name]),
                              "chunks_compute": compute[name], "chunks_with_data": end_to_end[name]}
                       for name, t in trainers.items()},
            "ratio_refined_over_vanilla_images_per_s": statistics.median(compute["refined"]) /
            statistics.median(compute["vanilla"]),
            "ratio_refined_over_vanilla_images_per_s_with_data": statistics.median(end_to_end["refined"]) /
            statistics.median(end_to_end["vanilla"]),
            "ratio_refined_over_vanilla_best_chunk": max(compute["refined"]) / max(compute["vanilla"]),
            "ratio_refined_over_vanilla_images_per_cpu_s": statistics.median(compute_cpu["refined"]) /
            statistics.median(compute_cpu["vanilla"]),
            "load_average_1_5_15_before": load_before, "load_average_1_5_15_after": os.getloadavg(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "chunks": args.chunks, "steps_per_chunk": args.steps,
            "torch": torch.__version__, "platform": platform.platform(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if torch.cuda.is_available():
            peak = args.peak_tflops or gpu_peak_tflops()
            for name, trainer in trainers.items():
                flops = step_flops(trainer, *fixed[name])
                entry = result["models"][name]  # type: ignore[index]
                entry["flops_per_step"] = flops
                if peak:
                    achieved = flops * entry["images_per_s_compute"] / batch_size
                    entry["mfu"] = achieved / (peak * 1e12)
            result["peak_tflops"] = peak
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name in ("vanilla", "refined"):
        entry = result["models"][name]  # type: ignore[index]
        print(f"{name:8s} {entry['images_per_s_compute']:8.1f} img/s compute (best chunk "
              f"{entry['images_per_s_best_chunk']:.1f}, {entry['images_per_cpu_s']:.1f} per CPU second), "
              f"{entry['images_per_s_with_data']:8.1f} img/s with data")
    print(f"refined / vanilla images/s: {result['ratio_refined_over_vanilla_images_per_s']:.3f} (compute), "
          f"{result['ratio_refined_over_vanilla_best_chunk']:.3f} (best chunks), "
          f"{result['ratio_refined_over_vanilla_images_per_cpu_s']:.3f} (per CPU second), "
          f"{result['ratio_refined_over_vanilla_images_per_s_with_data']:.3f} (with data); "
          f"load average {result['load_average_1_5_15_before'][0]:.2f} before, "
          f"{result['load_average_1_5_15_after'][0]:.2f} after; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
