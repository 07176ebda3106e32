"""The app's per-process store of captured maps, bounded in bytes and shared by every session.

`st.cache_data` pickles what it returns and hands every reader its own unpickled copy: for Refiner-ViT-L at
448 px one view (32 blocks x 16 heads x 785 x 785, softmax and effective) is 2.5 GB, 9.6 s to unpickle, and
its entry count says nothing about bytes. Here a view is computed once, its arrays are made read-only, and
every session gets the same object (no copy). Least recently used views are dropped when the bytes of the
views kept would exceed the budget; a view larger than the whole budget is returned to its caller but not
kept. Concurrent requests for the same view wait for one computation instead of running the model twice.

A computation can reserve the memory it will need while it runs (`MapStore.reserving`: a capture holds its
float32 maps, and at N = 785 the metrics' working arrays, several times the view it leaves behind): views are
dropped until the views kept plus every reservation fit the budget, and a finished view is kept only if it fits
beside the reservations still open. So the budget bounds the maps kept and the capture in progress together;
only a single capture larger than the whole budget goes beyond it (by its own excess).

The budget is ``$REFINER_APP_MAP_BUDGET_MB`` (``refiner app --map-budget-mb``); by default a quarter of the
machine's memory, between `MIN_DEFAULT_BUDGET_MB` and `MAX_DEFAULT_BUDGET_MB` (`default_budget_bytes`), so two
research-scale views (Refiner-ViT-L at 448 px and DINOv2-L at 518 px, 1.3-1.4 GB each in half precision) fit
on a 24 GB machine. An array shared by two fields of a view (a vanilla model's softmax and effective maps are
the same map) is counted once. The bytes are those the arrays really hold: a large view's float16 display maps
(`analysis.compare_view.HALF_PRECISION_BYTES`) count half of their float32 size. Other values are counted the same
way (the metric tables of a large view, `app.cached.get_metrics`: every array inside tuples and mappings).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Callable, Dict, Generic, Hashable, Iterator, Mapping, Optional, TypeVar

import numpy as np

BUDGET_ENV = "REFINER_APP_MAP_BUDGET_MB"
MIN_DEFAULT_BUDGET_MB = 1024
MAX_DEFAULT_BUDGET_MB = 16384

V = TypeVar("V")


def _arrays(value: object) -> Iterator[np.ndarray]:
    """Every numpy array in a dataclass instance, its fields, and the tuples, lists and mappings they hold."""
    if isinstance(value, np.ndarray):
        yield value
    elif hasattr(value, "__dataclass_fields__"):
        for f in fields(value):
            yield from _arrays(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _arrays(item)


def nbytes_of(value: object) -> int:
    """Bytes held by the numpy arrays of a dataclass instance (or by one array), each buffer counted once."""
    buffers: Dict[int, int] = {}
    for item in _arrays(value):
        base = item if item.base is None else item.base
        buffers[id(base)] = max(buffers.get(id(base), 0), int(getattr(base, "nbytes", item.nbytes)))
    return sum(buffers.values())


def freeze_arrays(value: V) -> V:
    """Make every numpy array of a dataclass instance read-only, so a shared view cannot be changed in place."""
    for item in _arrays(value):
        item.setflags(write=False)
    return value


@dataclass(frozen=True)
class StoreStats:
    """What the store holds now.

    Attributes:
        entries: views kept.
        bytes: their array bytes.
        budget: the byte budget.
        evictions: views dropped to stay under the budget since start.
        too_large: views that did not fit the budget beside the open reservations (returned, not kept) since start.
        reserved: bytes reserved now by computations in progress (`MapStore.reserving`).
    """

    entries: int
    bytes: int
    budget: int
    evictions: int
    too_large: int
    reserved: int = 0


class MapStore(Generic[V]):
    """A thread-safe least-recently-used store bounded by the bytes of its values' arrays."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"the map store budget must be >= 0 bytes, got {budget_bytes}")
        self.budget = int(budget_bytes)
        self._items: "OrderedDict[Hashable, V]" = OrderedDict()
        self._sizes: Dict[Hashable, int] = {}
        self._bytes = 0
        self._evictions = 0
        self._too_large = 0
        self._reserved = 0
        self._lock = threading.Lock()
        self._pending: Dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of ``key``, computed by ``compute()`` once if it is not kept (exceptions propagate and
        nothing is stored)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            pending = self._pending.setdefault(key, threading.Lock())
        with pending:  # one computation per key; later callers wait for it, then find it kept
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = freeze_arrays(compute())
            finally:
                with self._lock:
                    self._pending.pop(key, None)
            self._put(key, value)
            return value

    def peek(self, key: Hashable) -> Optional[V]:
        """``key``'s value if it is kept (counted as a use), else None; never computes."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    @contextmanager
    def reserving(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget while the block runs (a computation's working memory): least recently
        used views are dropped until the views kept plus all reservations fit the budget (all of them when the
        reservations alone exceed it)."""
        nbytes = max(int(nbytes), 0)
        with self._lock:
            self._reserved += nbytes
            self._evict_until(0)
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= nbytes

    def _evict_until(self, size: int) -> None:
        """Drop least recently used views until they, the reservations and ``size`` more bytes fit (lock held)."""
        while self._items and self._bytes + self._reserved + size > self.budget:
            old, _ = self._items.popitem(last=False)
            self._bytes -= self._sizes.pop(old)
            self._evictions += 1

    def _put(self, key: Hashable, value: V) -> None:
        size = nbytes_of(value)
        with self._lock:
            if size + self._reserved > self.budget:
                self._too_large += 1
                return
            self._evict_until(size)
            self._items[key] = value
            self._sizes[key] = size
            self._bytes += size

    def stats(self) -> StoreStats:
        """Entries, bytes and budget now."""
        with self._lock:
            return StoreStats(len(self._items), self._bytes, self.budget, self._evictions, self._too_large,
                              self._reserved)


def default_budget_bytes(physical_bytes: Optional[int] = None) -> int:
    """A quarter of the machine's physical memory, clamped to [`MIN_DEFAULT_BUDGET_MB`, `MAX_DEFAULT_BUDGET_MB`]
    (the minimum where the size cannot be read)."""
    if physical_bytes is None:
        try:
            physical_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            physical_bytes = 0
    quarter_mb = physical_bytes // 4 // 2**20
    return int(min(max(quarter_mb, MIN_DEFAULT_BUDGET_MB), MAX_DEFAULT_BUDGET_MB)) * 2**20


def budget_from_env(environ: Optional[Dict[str, str]] = None) -> int:
    """The byte budget ``$REFINER_APP_MAP_BUDGET_MB`` asks for (`default_budget_bytes` when unset).

    Raises:
        ValueError: a value that is not a non-negative number of megabytes.
    """
    text = (environ if environ is not None else os.environ).get(BUDGET_ENV, "").strip()
    if not text:
        return default_budget_bytes()
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a number of megabytes") from None
    if megabytes < 0:
        raise ValueError(f"{BUDGET_ENV} must be >= 0, got {text}")
    return int(megabytes * 2**20)
