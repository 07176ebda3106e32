"""Side-by-side timing for the benchmarks: `torch.utils.benchmark.Timer`, interleaved.

Each round times every function once with its own Timer (which synchronises an accelerator around the call),
in an order that rotates per round, so background load and clock changes hit all functions alike. Timer
measures wall time only: benchmarks that also report process CPU time (analysis_latency.py,
capture_overhead.py, metrics_speed.py) use `interleaved_wall_and_cpu`, the same rotation with both clocks.
"""

from __future__ import annotations

import statistics
from typing import Callable, Dict, List

from torch.utils.benchmark import Timer


def interleaved_times(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, List[float]]:
    """Seconds per call of each function, ``repeats`` calls each, timed in rotating alternation.

    Args:
        fns: name -> function of no arguments.
        repeats: timed calls per function.
        warmup: untimed calls per function first (allocator, kernels, lazy imports, compilation).

    Returns:
        name -> list of ``repeats`` seconds.
    """
    import torch

    keys = list(fns)
    # num_threads: keep the caller's torch thread count (Timer would otherwise set 1 for the call).
    timers = {k: Timer(stmt="fn()", globals={"fn": fns[k]}, num_threads=torch.get_num_threads()) for k in keys}
    for _ in range(warmup):
        for key in keys:
            fns[key]()
    times: Dict[str, List[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            times[key].append(timers[key].timeit(1).mean)
    return times


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> Dict[str, float]:
    """Median seconds per call of each function (see `interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, warmup).items()}


def interleaved_wall_and_cpu(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                             ) -> Dict[str, Dict[str, List[float]]]:
    """Wall-clock and process CPU seconds per call of each function, in the rotating order of `interleaved_times`.

    On a shared (or virtual, CPU-stealing) machine the wall clock also counts time spent waiting for a core; the
    CPU time is what the computation itself costs (summed over its threads).

    Returns:
        name -> {"wall": [seconds] * repeats, "cpu": [seconds] * repeats}.
    """
    import time

    keys = list(fns)
    for _ in range(warmup):
        for key in keys:
            fns[key]()
    times: Dict[str, Dict[str, List[float]]] = {k: {"wall": [], "cpu": []} for k in keys}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[key]()
            times[key]["wall"].append(time.perf_counter() - start)
            times[key]["cpu"].append(time.process_time() - start_cpu)
    return times
