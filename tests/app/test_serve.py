"""The server process (app.serve): freed map buffers go back to the system, startup objects leave the cycle
collector, large tensors lie on huge pages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Six threads each hold up to nine ~20 MB arrays (below glibc's dynamic mmap threshold cap of 32 MB), then free
# them all; prints the resident size afterwards in MB.
SCRIPT = """
import sys, threading, numpy as np
sys.path.insert(0, {repo!r})
from app.serve import return_freed_buffers
if {fix}:
    assert return_freed_buffers()
def work():
    keep = []
    for i in range(40):
        keep.append(np.ones(5_000_000 + i * 1000, np.float32) * 2)
        if len(keep) > 8:
            keep.pop(0)
    keep.clear()
threads = [threading.Thread(target=work) for _ in range(6)]
[t.start() for t in threads]
[t.join() for t in threads]
print(int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024)
"""


def resident_mb(fix: bool) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO), fix=fix)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_go_back_to_the_system() -> None:
    baseline = resident_mb(False)
    fixed = resident_mb(True)
    # About 1 GB was allocated at the peak; with the fixed threshold what is left is numpy and Python themselves.
    assert fixed < 150, (baseline, fixed)
    assert fixed < baseline


FREEZE_SCRIPT = """
import gc, sys, time
sys.path.insert(0, {repo!r})
from app import serve
assert serve.warm_up(), "the pair should have been warmed"
before = len(gc.get_objects())
frozen = serve.freeze_startup_objects()
start = time.perf_counter()
gc.collect(2)
print(before, frozen, len(gc.get_objects()), time.perf_counter() - start)
"""


def test_startup_objects_are_out_of_the_cycle_collector(app_env: Path) -> None:
    # Streamlit runs gc.collect(2) after every script run; after the warm-up it must not walk the models,
    # torch, plotly and Streamlit again (0.24-0.38 s per rerun before).
    out = subprocess.run([sys.executable, "-c", FREEZE_SCRIPT.format(repo=str(REPO))], capture_output=True,
                         text=True, check=True)
    before, frozen, after, _seconds = out.stdout.split()
    assert int(before) > 100_000 and int(frozen) >= int(before) * 0.9
    assert int(after) < 1_000


HUGE_PAGES_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from app import serve
if {enable}:
    assert serve.enable_huge_pages()
import torch
tensor = torch.ones(64 * 2**20 // 4)  # 64 MB, written
start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
huge_kb, inside = 0, False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and not head.endswith(":"):
        low, high = (int(part, 16) for part in head.split("-"))
        inside = low < end and high > start
    elif inside and head == "AnonHugePages:":
        huge_kb += int(line.split()[1])
print(huge_kb)
"""


def huge_page_kb(enable: bool) -> int:
    out = subprocess.run([sys.executable, "-c", HUGE_PAGES_SCRIPT.format(repo=str(REPO), enable=enable)],
                         capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"})
    return int(out.stdout.strip())


def _huge_pages_on_request() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_on_request(), reason="no transparent huge pages on this kernel")
def test_the_server_puts_large_tensors_on_huge_pages() -> None:
    """`app.serve.enable_huge_pages` before torch is imported: a 64 MB tensor lies (mostly) on 2 MB pages; torch's
    default (without it) asks for none."""
    assert huge_page_kb(True) >= 32 * 1024
    assert huge_page_kb(False) == 0 or "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()


def test_huge_pages_come_too_late_once_torch_is_imported(monkeypatch) -> None:
    from app import serve

    monkeypatch.delenv(serve.HUGE_PAGES_ENV, raising=False)
    assert "torch" in sys.modules  # the test session has imported it
    assert serve.enable_huge_pages() is False
