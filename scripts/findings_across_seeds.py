"""Markdown table of the main attention metrics for several vanilla/refined seed pairs.

Reads the ``*_dataset_metrics.csv`` that ``refiner analyze`` writes for each pair and prints, per metric,
the layer-averaged mean of each model and the paired refined - vanilla difference (overall, with its 95%
bootstrap interval) for every seed, so one can see whether a difference holds across training seeds:

    .venv/bin/python scripts/findings_across_seeds.py out/findings_seed0/effective_dataset_metrics.csv \
        out/findings_seed1/effective_dataset_metrics.csv out/findings_seed2/effective_dataset_metrics.csv
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("similarity", "cross-layer similarity", "{:.3f}"),
    ("head_diversity", "head diversity", "{:.3f}"),
    ("head_js", "Jensen-Shannon between heads", "{:.3f}"),
    ("distance_px", "mean attention distance (px)", "{:.1f}"),
    ("cls_entropy", "CLS-query entropy / log N", "{:.3f}"),
    ("grid_mass", "grid-neighbourhood mass", "{:.3f}"),
    ("negative_fraction", "negative-mass fraction", "{:.3f}"),
    ("cls_in_box", "CLS attention inside the box", "{:.3f}"),
    ("rollout_in_box", "rollout mass inside the box", "{:.3f}"),
)


def read(path: Path) -> Tuple[Dict[Tuple[str, str], float], Dict[str, Tuple[float, float, float]], Dict[str, float]]:
    """(model, metric) -> mean over layers; metric -> overall (diff, low, high); model -> accuracy."""
    per_layer: Dict[Tuple[str, str], List[float]] = defaultdict(list)
    overall: Dict[str, Tuple[float, float, float]] = {}
    accuracy: Dict[str, float] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            model, metric = row["model"], row["metric"]
            if metric == "accuracy":
                accuracy[model] = float(row["mean"])
            elif model == "refined - vanilla":
                if row["scope"] == "overall" or (not row["layer"] and row["scope"] != "per layer"):
                    overall[metric] = (float(row["mean"]), float(row["ci_low"]), float(row["ci_high"]))
            else:
                per_layer[(model, metric)].append(float(row["mean"]))
    means = {key: sum(values) / len(values) for key, values in per_layer.items()}
    return means, overall, accuracy


def main(paths: List[str]) -> int:
    runs = [read(Path(p)) for p in paths]
    seeds = " | ".join(f"seed {i}" for i in range(len(runs)))
    print(f"| metric | {seeds} | same sign |")
    print("|---|" + "---|" * len(runs) + "---|")
    accuracy = " | ".join(f"{100 * a.get('vanilla', float('nan')):.1f}% / {100 * a.get('refined', float('nan')):.1f}%"
                          for _, _, a in runs)
    print(f"| test accuracy (vanilla / refined) | {accuracy} | |")
    for key, label, fmt in METRICS:
        cells, signs = [], set()
        for means, overall, _ in runs:
            vanilla, refined = means.get(("vanilla", key)), means.get(("refined", key))
            diff = overall.get(key)
            if vanilla is None or refined is None or diff is None:
                cells.append("n/a")
                continue
            signs.add((diff[1] > 0) - (diff[2] < 0))  # +1 / -1 when the interval excludes 0, else 0
            interval = f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]"
            cells.append(f"{fmt.format(vanilla)} -> {fmt.format(refined)} ({interval})")
        same = "yes" if len(signs) == 1 and 0 not in signs else "no"
        print(f"| {label} | {' | '.join(cells)} | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
