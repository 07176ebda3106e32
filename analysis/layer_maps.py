"""One model's maps as a list of per-layer arrays that the metrics read like one (L, H, Q, N) array.

    maps = LayerMaps([effective_0, ..., effective_31])   # each (H, Q, N) float32, e.g. a captured tensor's memory
    compute_map_metrics(maps, ...)                       # reads maps[layer], maps[layer, head], maps[..., q, :]

A capture records each layer's map as its own tensor. Stacking them into one array writes the maps a second time
(1.3 GB per kind for Refiner-ViT-L at 448 px), and fresh memory is where a capture spends its time beyond the
forward at that size (about as long as the forward itself on this machine). The metrics only ever read one layer,
one head of every layer, or a few rows of every layer, so they take the layers as they are.

Indexing follows numpy for what the metrics use: ``maps[l]`` and ``maps[l, ...]`` read one layer's array without a
copy; a key that starts with ``...`` or a slice over layers returns a new stacked array of the selected part (for
small parts: CLS rows, one head). Anything that would turn the whole thing into one array (``np.asarray``) is
refused, so nothing stacks all the maps by accident.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np


class LayerMaps:
    """L per-layer maps of equal shape (H, Q, N) and float dtype, read as an (L, H, Q, N) array.

    Args:
        layers: the per-layer arrays (kept, not copied; float32 or float64, all the same shape and dtype).
    """

    def __init__(self, layers: Sequence[np.ndarray]) -> None:
        arrays: List[np.ndarray] = [np.asarray(layer) for layer in layers]
        if not arrays:
            raise ValueError("LayerMaps needs at least one layer")
        shape, dtype = arrays[0].shape, arrays[0].dtype
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"layer maps must be float32 or float64, got {dtype}")
        for index, array in enumerate(arrays):
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"layer {index} is {array.dtype} {array.shape}, layer 0 {dtype} {shape}: "
                                 "every layer must have the same shape and dtype")
        self._layers = arrays

    @property
    def shape(self) -> Tuple[int, ...]:
        """(L, H, Q, N)."""
        return (len(self._layers),) + self._layers[0].shape

    @property
    def dtype(self) -> np.dtype:
        return self._layers[0].dtype

    @property
    def ndim(self) -> int:
        return 1 + self._layers[0].ndim

    @property
    def size(self) -> int:
        return len(self._layers) * self._layers[0].size

    @property
    def nbytes(self) -> int:
        return len(self._layers) * self._layers[0].nbytes

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self._layers[first][rest] if rest else self._layers[first]
        if first is Ellipsis:  # the same trailing-axes key on every layer
            return np.stack([layer[key] for layer in self._layers])
        if isinstance(first, slice):
            return np.stack([layer[rest] for layer in self._layers[first]])
        raise TypeError(f"LayerMaps takes a layer index, a slice of layers or ..., not {first!r}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("LayerMaps is not stacked into one array (that would copy every map); index its layers")
