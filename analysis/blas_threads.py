"""How the per-image metrics use the CPU: one BLAS thread per product, independent layers in parallel threads.

Per-image metrics multiply many small matrices (197 x 197 for ViT-S/16). A multithreaded OpenBLAS spins up
all its threads for each of them; on a shared 2-core machine that was measured 20-60x slower than a single
thread (a 197 x 197 float32 product: 24 ms with the default pool under load, 0.4 ms with one thread).
`single_blas_thread` limits the pool only inside the ``with`` block and restores it afterwards.

The cores are used one level up instead: `map_in_threads` runs independent pieces of work (the layers, or the
heads, of one image's maps) in a few Python threads. numpy releases the GIL inside its loops and BLAS calls,
so each thread keeps one core busy with large, cache-sized operations and no per-product thread start-up.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Dict, Iterator, List, Tuple, TypeVar

import numpy as np

T = TypeVar("T")

# Each worker of the per-image metrics holds about two maps' worth of one layer (a float64 copy and a float32
# transpose of one head's layers: 0.16 GB at N = 785, 0.5 GB at N = 1370), so more threads cost that memory each
# (measured: 0.28 GB in all with two threads at N = 785, `benchmarks/metrics_speed.py`).
MAX_METRIC_THREADS = 4


@lru_cache(maxsize=1)
def _controller() -> object:
    # Building the controller scans loaded libraries (milliseconds); do it once per process.
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Context manager: numpy's BLAS uses one thread inside the block."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def metric_threads() -> int:
    """Threads for `map_in_threads`: the CPUs this process may run on, at most `MAX_METRIC_THREADS`."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, MAX_METRIC_THREADS))


class Workspace:
    """Arrays one worker reuses from one item to the next (e.g. the float64 copy of each layer).

    Fresh large arrays cost page faults on every first touch (the app server hands every array over 1 MB back
    to the system when it is freed), so a worker keeps one of each and overwrites it. An array from `array` is
    valid until the same name is asked for again; the workspace is dropped when `map_in_threads` returns.
    """

    def __init__(self) -> None:
        self._arrays: Dict[str, np.ndarray] = {}

    def array(self, name: str, shape: Tuple[int, ...], dtype: np.dtype = np.float64) -> np.ndarray:
        """An uninitialised ``shape`` array of ``dtype``, the same memory on every call with this name."""
        dtype, size = np.dtype(dtype), int(np.prod(shape))
        flat = self._arrays.get(name)
        if flat is None or flat.dtype != dtype or flat.size < size:
            flat = self._arrays[name] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)


def map_in_threads(fn: Callable[[int, Workspace], T], count: int) -> List[T]:
    """``[fn(0, w), ..., fn(count - 1, w)]`` in up to `metric_threads` threads, each thread with its own workspace.

    Args:
        fn: work on item i (e.g. one layer) with the calling thread's `Workspace`; it must not write what
            another item reads, and its result must not be an array of the workspace.
        count: number of items.

    Returns:
        The results in item order (an exception in any item is raised).
    """
    workers = min(metric_threads(), count)
    if workers <= 1:
        work = Workspace()
        return [fn(index, work) for index in range(count)]
    local = threading.local()

    def run(index: int) -> T:
        if not hasattr(local, "work"):
            local.work = Workspace()
        return fn(index, local.work)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(count)))
