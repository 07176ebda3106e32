"""Run small dense linear algebra on one BLAS thread.

Per-image metrics multiply many small matrices (197 x 197 for ViT-S/16). A multithreaded OpenBLAS spins up
all its threads for each of them; on a shared 2-core machine that was measured 20-60x slower than a single
thread (a 197 x 197 float32 product: 24 ms with the default pool under load, 0.4 ms with one thread).
`single_blas_thread` limits the pool only inside the ``with`` block and restores it afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator


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
