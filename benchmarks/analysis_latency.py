"""Per-image analysis latency for ViT-S/16-sized maps (DESIGN section 9, issue 4 section 5).

Maps: 12 layers x 6 heads x 197 x 197 captured from ViT-S/16 (vanilla softmax maps) and from its refined
counterpart (effective maps, not row-stochastic) on one 224 x 224 input. The timed call is
`analysis.attention_metrics.compute_map_metrics` with a localisation box: every DESIGN section 5 metric that
is defined per image on maps (cross-layer similarity, head cosine / JS / effective heads, all locality
statistics, rollout, localisation). Head embedding (PCA across both models) is timed separately because it is
a per-image *figure* input shared by the two models, not a per-model metric. The two map kinds are timed in
alternation and the median is reported. Goal: <= 100 ms per model and image.

    .venv/bin/python benchmarks/analysis_latency.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

import refiner
from analysis.attention_metrics import MetricSettings, compute_map_metrics
from analysis.blas_threads import single_blas_thread
from analysis.head_diversity import head_embedding
from timing import interleaved_wall_and_cpu  # benchmarks/timing.py (this script's folder is on sys.path)

RESULTS = Path(__file__).parent / "results"
GOAL_MS = 100.0


def capture_maps(name: str) -> tuple[np.ndarray, refiner.AttentionMeta]:
    """(12, 6, 197, 197) float32 effective maps of ``name`` on one random 224 x 224 input."""
    torch.manual_seed(0)
    model = refiner.create_model(name).eval()
    with torch.no_grad(), refiner.capture_attention(model) as rec:
        model(torch.randn(1, 3, 224, 224))
    return rec.stacked("effective")[0].numpy(), rec.meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the capture (not timed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vanilla, meta = capture_maps("vit_small_patch16_224")
    refined, _ = capture_maps("refined_vit_small_patch16_224")
    assert vanilla.shape == (12, 6, 197, 197), vanilla.shape
    settings = MetricSettings()
    box = (48.0, 48.0, 176.0, 176.0)
    geometry = (meta.num_prefix_tokens, meta.grid_size, meta.patch_size)

    def embed() -> None:
        with single_blas_thread():
            head_embedding({"vanilla": vanilla, "refined": refined})

    fns = {
        "vanilla_softmax": lambda: compute_map_metrics(vanilla, *geometry, settings=settings, box=box),
        "refined_effective": lambda: compute_map_metrics(refined, *geometry, settings=settings, box=box),
    }
    load_before = os.getloadavg()
    measured = interleaved_wall_and_cpu(fns, args.repeats, warmup=2)
    # Timed on its own: interleaved, its 45 MB of float64 features are returned to the OS after every call
    # and the next metric call pays the page faults again.
    measured.update(interleaved_wall_and_cpu({"head_embedding_pca_both_models": embed}, args.repeats, warmup=2))
    times = {k: v["wall"] for k, v in measured.items()}
    cpu_times = {k: v["cpu"] for k, v in measured.items()}
    medians_ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    cpu_ms = {k: 1000 * statistics.median(v) for k, v in cpu_times.items()}
    worst_model_ms = max(medians_ms["vanilla_softmax"], medians_ms["refined_effective"])
    worst_cpu_ms = max(cpu_ms["vanilla_softmax"], cpu_ms["refined_effective"])
    result = {
        "benchmark": "analysis_latency",
        "maps_shape": list(vanilla.shape),
        "metric_keys": sorted(compute_map_metrics(vanilla, *geometry, settings=settings, box=box)),
        "settings": settings.to_dict(),
        "repeats": args.repeats,
        "median_ms": medians_ms,
        "min_ms": {k: 1000 * min(v) for k, v in times.items()},
        "median_cpu_ms": cpu_ms,
        "per_model_goal_ms": GOAL_MS,
        "meets_goal_wall_median": worst_model_ms <= GOAL_MS,
        "meets_goal_cpu_median": worst_cpu_ms <= GOAL_MS,
        "load_average_before": list(load_before),
        "negative_fraction_refined": float(np.mean(compute_map_metrics(refined, *geometry)["negative_fraction"])),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg()), "numpy": np.__version__, "torch": torch.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "analysis_latency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in medians_ms.items():
        print(f"{key:34s} wall median {value:7.1f} ms   min {result['min_ms'][key]:7.1f} ms   "
              f"CPU median {cpu_ms[key]:7.1f} ms")
    print(f"all per-image metrics, ViT-S/16 maps {tuple(vanilla.shape)}, slower model: wall median "
          f"{worst_model_ms:.1f} ms, CPU {worst_cpu_ms:.1f} ms (goal <= {GOAL_MS:.0f} ms; load average "
          f"{load_before[0]:.1f} on {os.cpu_count()} CPUs); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
