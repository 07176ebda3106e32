"""The analysis pipeline at research scale: what one image costs per model, on the CPU or a GPU.

    python benchmarks/pipeline_scale.py                       # the three research-scale models, --device auto
    python benchmarks/pipeline_scale.py --device cuda --repeats 3
    python benchmarks/pipeline_scale.py --models "random:vit_base_patch16_224" --quick

Random weights of the exact architectures (shapes are what cost time and memory; nothing is downloaded):
``vit_base_patch16_224`` (N = 197), ``refiner_vit_l`` at 448 px (N = 785) and ``vit_large_patch14_dinov2`` at
518 px (N = 1370). Each model runs in its own process, so its peak memory is its own. Per model it prints:

- plain forward and forward with attention capture (`analysis.per_image.run_with_capture`, one kind of map
  and both), the ratio of the two, on the chosen device (maps always come back as fp32 numpy);
- the bytes of one image's maps (both kinds, fp32), which is what the app's map store holds per view;
- per-image metrics (`analysis.attention_metrics.compute_map_metrics`, fp32 on the CPU), and the head
  embedding (`analysis.head_diversity.head_embedding`) that ``refiner analyze`` adds per image;
- the peak resident memory of the process (and the device's peak allocation on a GPU).

Times are medians of ``--repeats`` runs after one warm-up, with the machine's load average beside them: on a
shared machine compare them with the load in mind. Results go to
``benchmarks/results/pipeline_scale_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/timing.py

from timing import interleaved_medians  # noqa: E402  (torch.utils.benchmark.Timer)

RESEARCH_MODELS = ["random:vit_base_patch16_224", "random:refiner_vit_l?img_size=448",
                   "random:vit_large_patch14_dinov2"]
QUICK_MODELS = ["random:vit_small_patch16_224?img_size=96"]


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds per call after one warm-up call (benchmarks/timing.py: torch.utils.benchmark.Timer)."""
    return interleaved_medians({"fn": fn}, repeats, warmup=1)["fn"]


def measure_one(source: str, device_text: str, repeats: int, threads: int) -> Dict[str, Any]:
    """Every figure of one model, in this process."""
    import numpy as np
    import torch
    from PIL import Image

    import refiner
    from analysis.attention_metrics import MetricSettings, compute_map_metrics
    from analysis.head_diversity import head_embedding
    from analysis.per_image import run_with_capture
    from refiner.device import resolve_device

    torch.set_num_threads(threads)
    device = resolve_device(device_text)
    start = time.perf_counter()
    loaded = refiner.load_model(source, device=device)
    load_s = time.perf_counter() - start
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    x = loaded.info.transform(picture)[None].to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def plain() -> None:
        with torch.no_grad(), autocast:
            loaded.model(x)
        sync()

    out: Dict[str, Any] = {"source": source, "device": str(device), "load_s": load_s}
    out["plain_s"] = _median_seconds(plain, repeats)
    out["capture_effective_s"] = _median_seconds(lambda: run_with_capture(loaded.model, x, kinds=("effective",)),
                                                 repeats)
    both = run_with_capture(loaded.model, x)
    out["capture_both_s"] = _median_seconds(lambda: run_with_capture(loaded.model, x), max(1, repeats // 2))
    out["capture_ratio"] = out["capture_effective_s"] / out["plain_s"]
    meta = both.meta
    maps = both.effective[0]
    out.update(tokens=int(maps.shape[-1]), depth=int(maps.shape[0]), heads=int(maps.shape[1]),
               view_bytes_fp32=int(both.map_bytes), view_bytes_fp16=int(both.map_bytes // 2))
    del both
    settings = MetricSettings()
    out["metrics_s"] = _median_seconds(
        lambda: compute_map_metrics(maps, meta.num_prefix_tokens, meta.grid_size, meta.patch_size, settings,
                                    class_token_index=meta.class_token_index), max(1, repeats // 2))
    out["head_embedding_s"] = _median_seconds(lambda: head_embedding({"m": maps}), max(1, repeats // 2))
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.type == "cuda":
        out["device_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["device_name"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(RESEARCH_MODELS), help="comma-separated model sources")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help=f"one small model ({QUICK_MODELS[0]}), one repeat")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: measure this source
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(args.one, args.device, args.repeats, args.threads)))
        return
    models = QUICK_MODELS if args.quick else [m for m in args.models.split(",") if m]
    repeats = 1 if args.quick else args.repeats
    print(f"pipeline_scale: device {args.device}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    print(f"{'model':<40} {'N':>5} {'plain s':>8} {'capture':>8} {'ratio':>6} {'view GB':>8} {'metrics s':>9} "
          f"{'embed s':>8} {'peak GB':>8}")
    results = []
    for source in models:
        child = subprocess.run([sys.executable, __file__, "--one", source, "--device", args.device, "--repeats",
                                str(repeats), "--threads", str(args.threads)], capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{source:<40} failed: {child.stderr.strip().splitlines()[-1] if child.stderr else child.returncode}")
            results.append({"source": source, "error": child.stderr[-2000:]})
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{source:<40} {r['tokens']:>5} {r['plain_s']:>8.2f} {r['capture_effective_s']:>8.2f} "
              f"{r['capture_ratio']:>6.2f} {r['view_bytes_fp32'] / 2**30:>8.2f} {r['metrics_s']:>9.2f} "
              f"{r['head_embedding_s']:>8.2f} {r['peak_rss_gb']:>8.2f}", flush=True)
    device_name = results[0].get("device", args.device) if results else args.device
    record = {"device": device_name, "threads": args.threads, "repeats": repeats,
              "load_average": list(os.getloadavg()), "results": results}
    path = args.out or ROOT / "benchmarks" / "results" / f"pipeline_scale_{str(device_name).split(':')[0]}.json"
    if not args.quick or args.out is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2))
        print(f"wrote {path}")
    if any("error" in r for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
