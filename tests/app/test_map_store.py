"""The byte-bounded map store: least recently used views go first, nothing is copied, one computation per key."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from app.map_store import MapStore, budget_from_env, default_budget_bytes, nbytes_of


@dataclass(frozen=True)
class View:
    maps: np.ndarray
    probs: np.ndarray


def view(megabytes: float) -> View:
    return View(np.zeros(int(megabytes * 2**20) // 4, np.float32), np.ones(10, np.float32))


def test_bytes_not_entries_bound_the_store() -> None:
    store: MapStore[View] = MapStore(int(2.5 * 2**20) + 200)
    a = store.get("a", lambda: view(1))
    store.get("b", lambda: view(1))
    assert store.stats().entries == 2 and store.stats().bytes == 2 * nbytes_of(a)
    store.get("a", lambda: pytest.fail("kept: not recomputed"))  # "a" is now the most recently used
    store.get("c", lambda: view(1))                                # 3 MB > budget: the oldest ("b") goes
    stats = store.stats()
    assert stats.entries == 2 and stats.evictions == 1 and stats.bytes <= stats.budget
    assert store.get("a", lambda: pytest.fail("a was evicted")) is a
    recomputed = []
    store.get("b", lambda: recomputed.append(1) or view(1))
    assert recomputed == [1]


def test_a_view_larger_than_the_budget_is_returned_but_not_kept() -> None:
    store: MapStore[View] = MapStore(2**20)
    big = store.get("big", lambda: view(2))
    assert big.maps.nbytes == 2 * 2**20 and store.stats().entries == 0 and store.stats().too_large == 1


def test_shared_views_are_the_same_read_only_object() -> None:
    store: MapStore[View] = MapStore(10 * 2**20)
    first, second = store.get("k", lambda: view(1)), store.get("k", lambda: view(1))
    assert first is second  # no copy per session
    with pytest.raises(ValueError, match="read-only"):
        first.maps[0] = 1.0


def test_concurrent_requests_compute_once_and_errors_store_nothing() -> None:
    store: MapStore[View] = MapStore(10 * 2**20)
    calls = []

    def slow() -> View:
        calls.append(1)
        time.sleep(0.2)
        return view(0.5)

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and all(r is results[0] for r in results)

    def broken() -> View:
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        store.get("x", broken)
    assert store.stats().entries == 1


def test_budget_from_the_environment() -> None:
    assert budget_from_env({}) == default_budget_bytes()
    assert budget_from_env({"REFINER_APP_MAP_BUDGET_MB": "512"}) == 512 * 2**20
    for bad in ("lots", "-1"):
        with pytest.raises(ValueError, match="REFINER_APP_MAP_BUDGET_MB"):
            budget_from_env({"REFINER_APP_MAP_BUDGET_MB": bad})


def test_default_budget_is_a_quarter_of_memory_within_bounds() -> None:
    gib = 2**30
    assert default_budget_bytes(24 * gib) == 6 * gib
    assert default_budget_bytes(2 * gib) == 1 * gib        # small machines still keep a few views
    assert default_budget_bytes(512 * gib) == 16 * gib     # big servers do not hand a cache half a terabyte
    assert default_budget_bytes(0) == 1 * gib


def test_an_array_shared_by_two_fields_is_counted_once() -> None:
    maps = np.zeros(2**20, np.float32)  # 4 MiB: a vanilla view's softmax and effective maps are one array
    assert nbytes_of(View(maps, maps)) == maps.nbytes
    assert nbytes_of(View(maps, maps[:10])) == maps.nbytes  # a slice is a view of the same buffer
    assert nbytes_of(View(maps, maps.copy())) == 2 * maps.nbytes


def test_arrays_inside_tuples_and_mappings_are_counted_and_frozen() -> None:
    """A view's kept metric tables (tuples of dataclasses holding dicts of arrays) are part of its true bytes."""
    @dataclass(frozen=True)
    class Table:
        values: dict

    @dataclass(frozen=True)
    class WithTables:
        maps: np.ndarray
        tables: tuple

    maps = np.zeros(1000, np.float16)
    table = {"a": np.zeros(10), "b": np.zeros((2, 3), np.float32)}
    value = WithTables(maps, (Table(table), Table({"c": maps[:10]})))  # a slice of maps: its buffer once
    assert nbytes_of(value) == 2000 + 80 + 24
    store: MapStore[WithTables] = MapStore(10**6)
    kept = store.get("k", lambda: value)
    assert store.stats().bytes == 2104 and not kept.tables[0].values["a"].flags.writeable


def test_a_reservation_makes_room_first_and_keeps_the_budget_with_what_is_kept() -> None:
    """Views kept plus the memory reserved by a computation in progress never exceed the budget."""
    store: MapStore[View] = MapStore(int(4.5 * 2**20))
    for key in "abcd":
        store.get(key, lambda: view(1))
    assert store.stats().entries == 4
    with store.reserving(2 * 2**20):                       # 4 MB kept + 2 MB reserved > 4.5 MB: two go
        stats = store.stats()
        assert stats.entries == 2 and stats.reserved == 2 * 2**20 and stats.bytes + stats.reserved <= stats.budget
        store.get("e", lambda: view(1))                    # fits beside the reservation: the oldest left goes
        stats = store.stats()
        assert stats.bytes + stats.reserved <= stats.budget and stats.entries == 2
        store.get("f", lambda: view(3))                    # cannot fit beside the reservation: returned, not kept
        assert store.stats().too_large == 1
    assert store.stats().reserved == 0
    with store.reserving(10 * 2**20):                      # more than the budget: everything goes
        assert store.stats().entries == 0
    store.get("g", lambda: view(3))
    assert store.stats().entries == 1


def test_a_capture_reserves_its_working_memory_from_the_geometry_then_from_what_it_recorded() -> None:
    import refiner
    from analysis.compare_view import capture_view
    from app import cached
    from refiner import LoadedModel
    from refiner.loading import describe
    from PIL import Image

    model = refiner.create_model("vit_micro_patch4_32").eval()  # 4 blocks x 4 heads, N = 65
    loaded = LoadedModel(model=model, info=describe(model, name="v", source="reserve-test", kind="random",
                                                    weights="test", weights_sha256="0"), label="v")
    one_kind = 4 * 4 * 65 * 65 * 4
    cached._MAP_BYTES.pop("reserve-test", None)
    assert cached.capture_reserve_bytes(loaded) == int(2.0 * 2 * one_kind)   # both kinds: an upper bound
    # Metrics: every kind until the forward ends, then one kind and the metrics' buffers.
    assert cached.capture_reserve_bytes(loaded, for_metrics=True) == 2 * one_kind
    cached._remember_map_bytes("reserve-test", capture_view(loaded, Image.new("RGB", (32, 32))))
    assert cached.capture_reserve_bytes(loaded) == int(2.0 * one_kind)        # a vanilla model: one array
    assert cached.capture_reserve_bytes(loaded, for_metrics=True) == int(1.5 * one_kind)
    cached._MAP_BYTES.pop("reserve-test", None)


def test_peek_reads_a_kept_view_without_computing() -> None:
    store: MapStore[View] = MapStore(10 * 2**20)
    one = view(1)
    assert store.peek("a") is None and store.stats().entries == 0
    store.get("a", lambda: one)
    store.get("b", lambda: view(2))
    assert store.peek("a") is one and store.peek("never") is None
    store.get("c", lambda: view(7))  # over the budget: the least recently used goes, and peek was a use of "a"
    assert store.peek("b") is None and store.peek("a") is one
