"""Dataset-level analysis throughput and peak memory (DESIGN section 9, issue 4 section 5).

Runs `analysis.dataset.analyze_dataset` for the vanilla/refined pair over the cluttered-MNIST test set:
images per second, and peak memory for 250 and 1,000 images, each size in a fresh process so the peaks
are comparable. Streaming statistics keep only small per-image curves, so the peak should stay flat.

The pair is the shipped checkpoints when ``checkpoints/vanilla`` and ``checkpoints/refined`` exist (or the
directories given with --vanilla/--refined); otherwise the same architecture (``vit_mini_patch6_48`` and its
refined twin, 1 input channel, 48 px canvases) with seeded random weights, which costs the same to analyse.

    .venv/bin/python benchmarks/dataset_analysis.py [--sizes 250 1000] [--batch-size 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def _load_pair(vanilla: str, refined: str):
    import torch

    import refiner
    from analysis.model_records import load_model

    if Path(vanilla).exists() and Path(refined).exists():
        return [load_model(f"vanilla={vanilla}"), load_model(f"refined={refined}")], "checkpoints"
    torch.manual_seed(0)
    pair = []
    for label, name in (("vanilla", "vit_mini_patch6_48"), ("refined", "refined_vit_mini_patch6_48")):
        model = refiner.create_model(name, in_chans=1).eval()
        pair.append((label, model))
    return pair, "random-weights vit_mini_patch6_48 pair (no shipped checkpoints found)"


def child(args: argparse.Namespace) -> Dict[str, object]:
    """One measurement in this process: analyse ``args.images`` images, report time and peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    from analysis.attention_metrics import MetricSettings
    from analysis.inputs import build_eval_dataset, dataset_preprocess
    from refiner import LoadedModel
    from analysis.dataset import analyze_dataset

    pair, source = _load_pair(args.vanilla, args.refined)
    if isinstance(pair[0], LoadedModel):
        models = {m.label: m.model for m in pair}
        dataset, _info, _options = build_eval_dataset("cluttered-mnist", "test", None, pair)
        preprocess = {m.label: dataset_preprocess(m, tuple(dataset[0][0].shape)) for m in pair}
    else:
        from refiner.data import build_dataset, canvas_options_for

        models = dict(pair)
        preprocess = None
        dataset = build_dataset("cluttered-mnist", "test", **canvas_options_for({"img_size": 48}))
    count = min(args.images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    # Canvases are rendered up front so the timing is the analysis, not the data generator.
    batches = list(torch.utils.data.DataLoader(subset, batch_size=args.batch_size, shuffle=False))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = analyze_dataset(models, batches, MetricSettings(), preprocess=preprocess)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    curve_bytes = sum(store.nbytes for acc in result.accumulators.values() for store in acc.curves.values())
    return {"images": result.images, "seconds": seconds, "images_per_s": result.images / seconds,
            "peak_rss_mib": peak_kib / 1024, "rss_before_analysis_mib": rss_before / 1024,
            "per_image_curves_kib": curve_bytes / 1024, "models": source,
            "accuracy": {n: result.accuracy(n) for n in models}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vanilla", default=str(ROOT / "checkpoints" / "vanilla"))
    parser.add_argument("--refined", default=str(ROOT / "checkpoints" / "refined"))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        args.images = args.child
        print(json.dumps(child(args)))
        return 0
    runs: List[Dict[str, object]] = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", str(size), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--vanilla", args.vanilla, "--refined", args.refined]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"{r['images']:5d} images: {r['images_per_s']:6.1f} img/s (both models), peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (before analysis {r['rss_before_analysis_mib']:.0f} MiB), "
              f"per-image curves {r['per_image_curves_kib']:.0f} KiB")
    growth = runs[-1]["peak_rss_mib"] - runs[0]["peak_rss_mib"] if len(runs) > 1 else 0.0
    result = {"benchmark": "dataset_analysis", "batch_size": args.batch_size, "threads": args.threads,
              "runs": runs, "peak_growth_mib": growth,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "dataset_analysis.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak memory from {args.sizes[0]} to {args.sizes[-1]} images: {growth:+.1f} MiB; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
