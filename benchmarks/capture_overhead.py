"""Capture overhead per attention family: forward with `capture_attention` over a plain forward (DESIGN 9).

Goal: <= 1.05x for ViT-S/16 at 224 px (family "timm"). Every family is measured on a ViT-S-sized model at
224 px with random weights (the cost does not depend on the weights): plain and captured forwards are
interleaved (A, B, A, B, ...) in one run and the medians are compared, so background load affects both
sides alike. Also measured: capture of the CLS row only (``query_rows=[0]``) and without the check
(``verify=False``), to show where the time goes. Prints a table and writes benchmarks/results/capture_overhead.json.

    .venv/bin/python benchmarks/capture_overhead.py [--threads 2] [--repeats 7] [--batch 8] [--families timm,rotary]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable, Dict, Tuple

import timm
import torch
from torch import nn

import refiner
from timing import interleaved_wall_and_cpu  # benchmarks/timing.py (this script's folder is on sys.path)

RESULTS = Path(__file__).parent / "results"
SMALL = dict(embed_dim=384, depth=12, num_heads=6)  # ViT-S width and depth for families without a -S model


def _hf_vit_small() -> nn.Module:
    import transformers  # optional extra

    from refiner.hf_vit import wrap_hf_model
    config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, image_size=224, patch_size=16, num_labels=1000)
    return wrap_hf_model(transformers.ViTForImageClassification(config))


# family -> (model label, builder)
MODELS: Dict[str, Tuple[str, Callable[[], nn.Module]]] = {
    "timm": ("vit_small_patch16_224", lambda: timm.create_model("vit_small_patch16_224")),
    "own": ("refined_vit_small_patch16_224", lambda: refiner.create_model("refined_vit_small_patch16_224")),
    "rotary": ("eva02_small_patch14_224", lambda: timm.create_model("eva02_small_patch14_224")),
    "rotary-rope": ("vit_small_patch16_rope_224", lambda: timm.create_model("vit_small_patch16_rope_224")),
    "relative-position": ("beitv2 at ViT-S size", lambda: timm.create_model("beitv2_base_patch16_224", **SMALL)),
    "talking-heads": ("cait_xs24_384 at 224", lambda: timm.create_model("cait_xs24_384", img_size=224)),
    "transformers": ("transformers ViT at ViT-S size", _hf_vit_small),
}


def timed(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, Dict[str, float]]:
    """Per function, the median and the minimum wall time and the median process CPU time of a call, timed
    in rotating alternation (`timing.interleaved_wall_and_cpu`). Under other processes' load the minimum is the
    least disturbed run and the CPU time leaves out time this process was not running; all three are reported."""
    times = interleaved_wall_and_cpu(fns, repeats, warmup=2)
    return {k: {"median": statistics.median(v["wall"]), "min": min(v["wall"]), "cpu": statistics.median(v["cpu"])}
            for k, v in times.items()}


def measure(builder: Callable[[], nn.Module], batch: int, repeats: int) -> Dict[str, float]:
    """Median plain and captured forward times of one model, and their ratios."""
    torch.manual_seed(0)
    model = builder().eval()
    size = 224
    x = torch.randn(batch, 3, size, size)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def captured() -> None:
        with torch.no_grad(), refiner.capture_attention(model):
            model(x)

    def cls_row() -> None:
        with torch.no_grad(), refiner.capture_attention(model, query_rows=[0]):
            model(x)

    def unchecked() -> None:
        with torch.no_grad(), refiner.capture_attention(model, verify=False):
            model(x)

    t = timed({"plain": plain, "capture": captured, "cls_row": cls_row, "unchecked": unchecked}, repeats)
    base = t["plain"]
    out = {"plain_s": base["median"], "capture_s": t["capture"]["median"]}
    for key, label in (("capture", "ratio"), ("cls_row", "cls_row_ratio"), ("unchecked", "unchecked_ratio")):
        out[label] = t[key]["median"] / base["median"]
        out[label + "_min"] = t[key]["min"] / base["min"]
        out[label + "_cpu"] = t[key]["cpu"] / base["cpu"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--families", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: Dict[str, Dict[str, object]] = {}
    print("capture / plain forward: median wall time | minimum wall time | median CPU time")
    print(f"{'family':<18} {'model':<31} {'plain ms':>8}  {'capture':<23} {'CLS row only':<23} {'no check':<23}")
    for family in args.families.split(","):
        label, builder = MODELS[family]
        try:
            r = measure(builder, args.batch, args.repeats)
        except ImportError as error:  # the transformers extra is not installed
            print(f"{family:<18} skipped: {error}")
            continue
        results[family] = {"model": label, **r}
        cells = ["{:.2f} | {:.2f} | {:.2f}".format(r[k], r[k + "_min"], r[k + "_cpu"])
                 for k in ("ratio", "cls_row_ratio", "unchecked_ratio")]
        print(f"{family:<18} {label:<31} {r['plain_s'] * 1e3:8.0f}  {cells[0]:<23} {cells[1]:<23} {cells[2]:<23}",
              flush=True)
    load = os.getloadavg()
    print(f"batch {args.batch} at 224 px, {args.threads} threads, {args.repeats} interleaved repeats; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; goal for timm ViT-S/16: <= 1.05x")
    RESULTS.mkdir(exist_ok=True)
    out = {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "load_average": list(load),
           "torch": torch.__version__, "timm": timm.__version__, "machine": platform.machine(), "results": results}
    (RESULTS / "capture_overhead.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
