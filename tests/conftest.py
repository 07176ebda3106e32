"""Shared test setup: deterministic seeds and one thread per test process.

The suite runs in two pytest-xdist workers on CI's 2 cores; a second OpenMP thread per worker would only
compete for the same cores (measured: a test file took 2x longer with 2 threads on a loaded machine).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
