"""One figure of test accuracy per epoch for every run of a seed study (model card figure):

    .venv/bin/python scripts/plot_seed_runs.py --out docs/model_card/seed_runs.png \
        runs/cm12_vanilla_seed0 runs/cm12_vanilla_seed1 ... runs/cm12_refined_seed2

Each run directory holds the trainer's ``metrics.jsonl``; the model kind (vanilla or refined) is read from its
name and sets the colour (Okabe-Ito blue and vermillion, as in the app), the seed sets the line style.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

COLOURS = {"vanilla": "#0072B2", "refined": "#D55E00"}
STYLES = ("-", "--", ":", "-.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with metrics.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="cluttered-mnist, fixed 1,000-canvas test set")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
    for run in args.runs:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        records = [r for r in records if "test_accuracy" in r]
        kind = "refined" if "refined" in run.name else "vanilla"
        seed_match = re.search(r"seed(\d+)", run.name)
        seed = int(seed_match.group(1)) if seed_match else 0
        ax.plot([r["epoch"] for r in records], [100 * r["test_accuracy"] for r in records],
                color=COLOURS[kind], linestyle=STYLES[seed % len(STYLES)], marker="o", markersize=3,
                label=f"{kind} seed {seed} ({100 * records[-1]['test_accuracy']:.1f}%)")
    ax.axhline(90, color="0.6", linewidth=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (8,000 fresh canvases each)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(args.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
