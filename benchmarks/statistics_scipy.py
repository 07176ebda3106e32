"""Dataset statistics on scipy against the project's former numpy code (issue 14).

Times, side by side in one run, for per-image curves of n images x c metric columns:
- ``interval``: `analysis.dataset.bootstrap_interval` (`scipy.stats.bootstrap`, percentile, resampling image
  indices with a counts-times-values statistic) against the former multinomial bootstrap (kept below as the
  baseline) and against the plain ``scipy.stats.bootstrap((values,), np.mean)`` call;
- ``paired test``: `analysis.dataset.sign_flip_p_value` (scipy's permutation-test conventions, one matrix
  product per batch of sign patterns) against the former sign-flip loop and against the plain
  ``scipy.stats.permutation_test(..., permutation_type="samples")`` call (skipped above 1,000 images, where
  it takes minutes).
The plain scipy calls run in batches of about 32 MB (unbatched, they copy the data once per resample: 10 GB
at 50,000 images).

Each round times every variant once with `torch.utils.benchmark.Timer` (benchmarks/timing.py: rotated
order, so background load hits all alike); medians over rounds are reported with ratios to the former code (< 1 = faster). BLAS runs
on one thread, as in the app. Writes benchmarks/results/statistics_scipy.json.

    .venv/bin/python benchmarks/statistics_scipy.py [--rounds 5] [--sizes 1000x8,5000x12,50000x12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Tuple

import numpy as np
import scipy
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis.blas_threads import single_blas_thread  # noqa: E402
from analysis.dataset import bootstrap_interval, sign_flip_p_value  # noqa: E402
from timing import interleaved_medians  # noqa: E402  (torch.utils.benchmark.Timer, rotated order)

RESULTS = Path(__file__).parent / "results"
N_BOOT = 2000          # analysis.dataset defaults
N_PERMUTATIONS = 5000
PLAIN_PERMUTATION_MAX_IMAGES = 1000  # a Python loop over the images per batch: minutes beyond


# ------------------------------------------------------------------ the former code (baseline, not used elsewhere)
def former_bootstrap_interval(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0, chunk: int = 250,
                              level: float = 0.95) -> Tuple[np.ndarray, np.ndarray]:
    """The multinomial percentile bootstrap analysis.dataset used before scipy (low, high)."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, values.shape[1]))
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        out[start:stop] = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start) @ values / n
    return tuple(np.quantile(out, [(1 - level) / 2, (1 + level) / 2], axis=0))


def former_sign_flip_p_value(differences: np.ndarray, n_permutations: int = N_PERMUTATIONS, seed: int = 0,
                             chunk: int = 500) -> np.ndarray:
    """The sign-flip test analysis.dataset used before scipy's conventions (|mean| reaching the observed)."""
    n = differences.shape[0]
    observed = np.abs(differences.mean(axis=0))
    rng = np.random.default_rng(seed)
    reached = np.zeros(differences.shape[1])
    for start in range(0, n_permutations, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, n_permutations - start), n))
        reached += (np.abs(signs @ differences / n) >= observed - 1e-12).sum(axis=0)
    return (1.0 + reached) / (1.0 + n_permutations)


def _plain_batch(values: np.ndarray, copies: int) -> int:
    """Resamples per batch of a plain scipy call: its (batch, n, c) copies stay near 32 MB."""
    return max(1, 4_000_000 // (copies * values.size))


def plain_scipy_bootstrap(values: np.ndarray) -> object:
    return stats.bootstrap((values,), np.mean, n_resamples=N_BOOT, method="percentile", axis=0,
                           batch=_plain_batch(values, 1), rng=np.random.default_rng(0)).confidence_interval


def plain_scipy_permutation_test(values: np.ndarray) -> object:
    return stats.permutation_test((values,), np.mean, permutation_type="samples", n_resamples=N_PERMUTATIONS,
                                  axis=0, vectorized=True, batch=_plain_batch(values, 2),
                                  rng=np.random.default_rng(0)).pvalue


# ---------------------------------------------------------------------------------------------- timing
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="1000x8,5000x12,50000x12", help="n_images x columns, comma separated")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    rows = []
    with single_blas_thread():
        for n, c in sizes:
            rng = np.random.default_rng(0)
            values = rng.normal(0.0, 1.0, (n, c)) + np.linspace(0.0, 0.1, c)
            fns = {"interval_scipy": lambda: bootstrap_interval(values, n_boot=N_BOOT),
                   "interval_former": lambda: former_bootstrap_interval(values),
                   "interval_plain_scipy": lambda: plain_scipy_bootstrap(values),
                   "test_ours_scipy_conventions": lambda: sign_flip_p_value(values, N_PERMUTATIONS),
                   "test_former": lambda: former_sign_flip_p_value(values)}
            if n <= PLAIN_PERMUTATION_MAX_IMAGES:
                fns["test_plain_scipy_permutation_test"] = lambda: plain_scipy_permutation_test(values)
            medians = interleaved_medians(fns, args.rounds, warmup=1)
            interval = bootstrap_interval(values, n_boot=N_BOOT)
            former_low, former_high = former_bootstrap_interval(values)
            row = {"n_images": n, "columns": c, "median_ms": {k: 1000 * v for k, v in medians.items()},
                   "ratio_to_former": {
                       "interval_scipy": medians["interval_scipy"] / medians["interval_former"],
                       "interval_plain_scipy": medians["interval_plain_scipy"] / medians["interval_former"],
                       "test_ours_scipy_conventions": medians["test_ours_scipy_conventions"] / medians["test_former"],
                       **({"test_plain_scipy_permutation_test": medians["test_plain_scipy_permutation_test"]
                           / medians["test_former"]} if "test_plain_scipy_permutation_test" in medians else {})},
                   "max_interval_end_difference_in_se": float(np.max(np.maximum(
                       np.abs(interval.low - former_low), np.abs(interval.high - former_high))
                       / (values.std(axis=0, ddof=1) / np.sqrt(n))))}
            rows.append(row)
            ms = row["median_ms"]
            print(f"n={n:6d} c={c:3d}  interval: scipy {ms['interval_scipy']:8.1f} ms  former "
                  f"{ms['interval_former']:8.1f} ms  ratio {row['ratio_to_former']['interval_scipy']:.2f}x  "
                  f"(plain scipy call {ms['interval_plain_scipy']:8.1f} ms, "
                  f"{row['ratio_to_former']['interval_plain_scipy']:.2f}x)")
            plain = (f"(plain permutation_test {ms['test_plain_scipy_permutation_test']:8.1f} ms, "
                     f"{row['ratio_to_former']['test_plain_scipy_permutation_test']:.2f}x)"
                     if "test_plain_scipy_permutation_test" in ms else "(plain permutation_test: skipped)")
            print(f"n={n:6d} c={c:3d}  paired test: ours {ms['test_ours_scipy_conventions']:8.1f} ms  former "
                  f"{ms['test_former']:8.1f} ms  ratio {row['ratio_to_former']['test_ours_scipy_conventions']:.2f}x "
                  f"{plain}")
    result = {"benchmark": "statistics_scipy", "n_boot": N_BOOT, "n_permutations": N_PERMUTATIONS,
              "rounds": args.rounds, "rows": rows, "load_average_before": list(load_before),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": list(os.getloadavg()), "numpy": np.__version__,
                          "scipy": scipy.__version__}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "statistics_scipy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
