"""Per-image metrics before and after the layer-by-layer rewrite (issue 10): time, CPU time, peak memory, agreement.

    python benchmarks/metrics_speed.py        # ViT-B/16 (N = 197) and Refiner-ViT-L at 448 px (N = 785)
    python benchmarks/metrics_speed.py --models "random:vit_base_patch16_224" --repeats 5

"Before" is `analysis.attention_metrics.compute_map_metrics` as it was at ``--before`` (default: the last commit
before the rewrite), read from git into a temporary package ``analysis_before`` and imported beside the current
code, so both run on the same maps in one process. Per model (random weights of the exact architecture,
effective maps of one 600 x 800 random picture, the app's default `MetricSettings` and a box):

- wall and process CPU seconds of both, timed in rotating alternation (`timing.interleaved_wall_and_cpu`),
  medians, with the load average before and after: on this shared 2-core VM the wall clock includes time
  spent waiting for a core, the CPU time (summed over threads) is what the computation costs;
- peak working memory of one call of each: the largest numpy allocation total above the maps themselves
  (``tracemalloc``, which numpy reports its buffers to);
- the largest absolute and relative difference of every metric between the two.

Results go to ``benchmarks/results/metrics_speed.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py

from timing import interleaved_wall_and_cpu  # noqa: E402

BEFORE = "49f9865abd70ac439a298442e8ccaebd49ba4104"  # main before the layer-by-layer metrics
MODELS = ["random:vit_base_patch16_224", "random:refiner_vit_l?img_size=448"]
BOX = (40.0, 40.0, 200.0, 200.0)


def load_before(commit: str) -> Any:
    """``analysis_before.attention_metrics`` from ``commit``: the module and every sibling it imports."""
    folder = Path(tempfile.mkdtemp(prefix="metrics_before_")) / "analysis_before"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    pending, seen = ["attention_metrics"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:analysis/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        (folder / f"{name}.py").write_text(text)
        pending += re.findall(r"^from \.(\w+) import", text, flags=re.MULTILINE)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("analysis_before.attention_metrics")


def capture(source: str) -> Dict[str, Any]:
    """Effective float32 maps (L, H, N, N) of one random picture and the geometry the metrics need."""
    import torch
    from PIL import Image

    import refiner
    from analysis.per_image import run_with_capture

    loaded = refiner.load_model(source, device=torch.device("cpu"))
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    batch = run_with_capture(loaded.model, loaded.info.transform(picture)[None], kinds=("effective",))
    meta = batch.meta
    return {"maps": batch.effective[0], "args": (meta.num_prefix_tokens, meta.grid_size, meta.patch_size),
            "class_token_index": meta.class_token_index}


def peak_working_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes numpy (and Python) allocated during one call, above what was allocated before it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del result
    return peak - base


def differences(before: Dict[str, np.ndarray], after: Dict[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """Per metric key: the largest absolute difference and the largest relative one (over |before| > 1e-6)."""
    if set(before) != set(after):
        raise SystemExit(f"the two implementations return different keys: {sorted(set(before) ^ set(after))}")
    out = {}
    for key in sorted(before):
        a, b = np.asarray(after[key], dtype=np.float64), np.asarray(before[key], dtype=np.float64)
        diff = np.abs(a - b)
        big = np.abs(b) > 1e-6
        out[key] = {"abs": float(diff.max()) if diff.size else 0.0,
                    "rel": float((diff[big] / np.abs(b[big])).max()) if big.any() else 0.0}
    return out


def measure(source: str, before: Any, repeats: int, warmup: int) -> Dict[str, Any]:
    from analysis.attention_metrics import MetricSettings, compute_map_metrics
    from analysis.blas_threads import metric_threads

    captured = capture(source)
    maps, args, cls = captured["maps"], captured["args"], captured["class_token_index"]
    fns = {"before": lambda: before.compute_map_metrics(maps, *args, before.MetricSettings(), BOX,
                                                        class_token_index=cls),
           "after": lambda: compute_map_metrics(maps, *args, MetricSettings(), BOX, class_token_index=cls)}
    agreement = differences(fns["before"](), fns["after"]())
    peaks = {name: peak_working_bytes(fn) for name, fn in fns.items()}
    load_before = os.getloadavg()
    times = interleaved_wall_and_cpu(fns, repeats, warmup)
    load_after = os.getloadavg()
    medians = {name: {kind: statistics.median(values) for kind, values in t.items()} for name, t in times.items()}
    return {"source": source, "shape": list(maps.shape), "maps_bytes": int(maps.nbytes), "threads": metric_threads(),
            "times": times, "medians": medians, "peak_working_bytes": peaks, "agreement": agreement,
            "load_average_before": list(load_before), "load_average_after": list(load_after)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model sources")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--before", default=BEFORE, help="git commit of the implementation to compare with")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "metrics_speed.json")
    args = parser.parse_args()
    before = load_before(args.before)
    print(f"metrics_speed: before = {args.before[:10]}, load {os.getloadavg()[0]:.2f}")
    print(f"{'model':<36} {'N':>5} {'before s':>9} {'after s':>8} {'ratio':>6} {'CPU before':>10} {'CPU after':>9} "
          f"{'ratio':>6} {'peak before':>11} {'peak after':>10} {'worst rel diff':>15} {'load':>10}")
    results = []
    for source in [m for m in args.models.split(",") if m]:
        r = measure(source, before, args.repeats, args.warmup)
        results.append(r)
        m, peak = r["medians"], r["peak_working_bytes"]
        worst = max(r["agreement"].items(), key=lambda item: item[1]["rel"])
        print(f"{source:<36} {r['shape'][-1]:>5} {m['before']['wall']:>9.2f} {m['after']['wall']:>8.2f} "
              f"{m['before']['wall'] / m['after']['wall']:>6.1f} {m['before']['cpu']:>10.2f} {m['after']['cpu']:>9.2f} "
              f"{m['before']['cpu'] / m['after']['cpu']:>6.1f} {peak['before'] / 2**30:>9.2f}GB "
              f"{peak['after'] / 2**30:>8.2f}GB {worst[1]['rel']:>9.1e} {worst[0][:5]} "
              f"{r['load_average_before'][0]:>4.1f}-{r['load_average_after'][0]:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"before": args.before, "repeats": args.repeats, "warmup": args.warmup,
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
