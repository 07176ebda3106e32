"""The app server's process entry: warm the caches, then hand over to ``streamlit run app/main.py``.

Streamlit imports the page script only when the first browser session connects, so without this the first
visitor pays for importing torch/timm/plotly, loading both models and the first forward passes. Here that
work happens before the server listens: once its health check answers, the default view is ready (DESIGN
section 6, issue 5: first page within 3 s of the server being ready). The caches are process-wide
(`st.cache_resource` / `st.cache_data`, keyed by function), so the script runs reuse what is loaded here.

    python app/serve.py run <streamlit options>       (what `refiner app` starts; see app/launch.py)
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # run as a file: make `app`, `refiner` and `analysis` importable as packages
    sys.path.insert(0, _ROOT)


# glibc's malloc serves allocations below its mmap threshold (dynamic, up to 32 MB) from per-thread arenas and keeps
# them when freed; the app allocates many such buffers per script run (float16 layers of 20 MB at N = 785, head
# slices, figure data) on one thread per session, so freed memory piled up in the arenas: 0.6 GB retained after six
# threads had freed 20 MB arrays in a test here, 0.03 GB with the threshold fixed at 1 MB. A fixed threshold sends
# every buffer of 1 MB or more to its own mapping, returned to the system when freed, so the server's memory
# follows the map store's budget.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_buffers() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD_BYTES` (True), or do nothing where there is no glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt: their default is kept
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


# torch's own switch (c10 ``alloc_cpu``): CPU tensors of 2 MB or more on transparent huge pages. A forward at
# research scale writes gigabytes of fresh tensors (Refiner-ViT-L at 448 px: 2.3 million page faults, 9 GB, per
# forward), and on this machine a fresh 4 kB page costs about as much as the arithmetic around it: the plain forward
# took 7.0 s with 4 kB pages and 3.5-4.0 s with huge pages, a float16 view 12-14 s and 9.3-9.5 s. Only for the
# server, which never trains: a refined training step with many mid-sized temporaries was slower with it (ViT-S/16,
# batch 8: 4.6 -> 8.3 s, `benchmarks/core_overhead.py`). torch reads it once, at its first allocation.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask torch for huge pages (`HUGE_PAGES_ENV`, unless set already); False when torch was imported before, so
    too late for this process."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return "torch" not in sys.modules


def freeze_startup_objects() -> int:
    """Take every object alive now out of Python's cycle collector (`gc.freeze`); returns how many.

    Streamlit runs a full collection after every script run (``runner.postScriptGC``), on the session's script
    thread. The warm server holds about 480,000 container objects (torch, timm, plotly's validators, the
    models, Streamlit itself), and each full collection walked all of them: 0.24-0.38 s per rerun here, longer
    than the page script, and a click that came during it waited for it. What is alive after the warm-up
    lives as long as the server, so it never needs the cycle collector; reference counting is unchanged (a
    freed array is still returned at once). Objects made later (sessions, figures) are collected as before.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


PAGE_MODULES = ("app.sidebar", "app.screens.compare", "app.screens.analysis", "app.screens.dataset",
                "app.screens.models")


def warm_up() -> List[str]:
    """Load the default pair and its default view into the app's caches; returns what was warmed.

    Failures are not fatal: a missing or broken checkpoint is reported by the page itself, in words, so the
    server starts either way.
    """
    # Streamlit caches warn when called outside a session ("No runtime found"); expected here.
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    from app import cached
    from app.images import canvas_key, sample_keys
    from app.sources import DEFAULT_PAIR, shipped_sources
    from refiner import ModelSourceError

    shipped = shipped_sources()
    pair = DEFAULT_PAIR if set(DEFAULT_PAIR) <= set(shipped) else tuple(shipped[:1] + shipped[-1:])
    warmed: List[str] = []
    canvas: Optional[str] = None
    for source in dict.fromkeys(pair):
        try:
            model = cached.get_model(source)
        except ModelSourceError:
            continue
        # The sidebar draws every slot's samples with model A's canvas options; do the same so cache keys match.
        canvas = canvas or canvas_key(model.data)
        try:
            cached.get_view(source, sample_keys()[0], None, canvas)
        except Exception:  # noqa: BLE001 - the page shows any such error with its message; the server must start
            continue
        warmed.append(source)
    import plotly.graph_objects  # noqa: F401  (first figure build imports the big plotly modules)
    for module in PAGE_MODULES:  # what the first session would import, so that it is frozen with the rest
        importlib.import_module(module)
    logging.getLogger("streamlit").setLevel(logging.WARNING)
    return warmed


def main(argv: Optional[List[str]] = None) -> int:
    """Warm up, then run Streamlit's CLI with ``argv`` (``run <options>``; the script is app/main.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    start = time.monotonic()
    enable_huge_pages()
    return_freed_buffers()
    warmed = warm_up()
    from streamlit.web import cli

    frozen = freeze_startup_objects()
    print(f"refiner app: warmed {', '.join(warmed) or 'nothing'} in {time.monotonic() - start:.1f} s "
          f"({frozen} objects out of the cycle collector)", flush=True)

    if argv[:1] == ["run"]:
        argv = ["run", str(Path(__file__).resolve().parent / "main.py"), *argv[1:]]
    sys.argv = ["streamlit", *argv]
    return int(cli.main(standalone_mode=False) or 0)


if __name__ == "__main__":
    sys.exit(main())
