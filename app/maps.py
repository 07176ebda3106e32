"""Running a model on one image and slicing its captured maps for display (no Streamlit here).

`run_model` is the only place the app runs a forward pass for the Compare and Analysis pages; the app caches
its result per (model source, image key), so changing layer, head or query only re-slices these arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

import refiner
from analysis.rollout import fuse_heads
from refiner import LoadedModel


HeadChoice = Union[int, str]  # a head index, or "mean" / "max" fusion over heads


@dataclass(frozen=True)
class ModelView:
    """Everything the pages draw for one model on one image.

    Attributes:
        probs: (C,) class probabilities.
        softmax: (L, H, N, N) float32 softmax maps; for blocks without one (official shared blocks) the
            effective map is repeated and ``has_softmax`` is False.
        effective: (L, H, N, N) float32 maps that multiply V.
        has_softmax: (L,) whether the block computes its own softmax map.
        refined: (L,) whether the block's effective map differs from its softmax by construction.
        num_prefix_tokens: K.
        grid: (Gh, Gw).
        patch_size: (ph, pw) in pixels.
        picture: (H, W, 3) uint8, the image exactly as the model saw it (before normalisation).
        input_tensor: (C, H, W) float32, the normalised model input (for exports and the manifest).
        class_token_index: the CLS token's index, or None for a model without one (registers + pooling).
    """

    probs: np.ndarray
    softmax: np.ndarray
    effective: np.ndarray
    has_softmax: np.ndarray
    refined: np.ndarray
    num_prefix_tokens: int
    grid: Tuple[int, int]
    patch_size: Tuple[int, int]
    picture: np.ndarray
    input_tensor: np.ndarray
    class_token_index: Optional[int] = 0

    @property
    def depth(self) -> int:
        """Number of blocks L."""
        return int(self.effective.shape[0])

    @property
    def num_heads(self) -> int:
        """Heads per block H."""
        return int(self.effective.shape[1])

    def maps(self, kind: str) -> np.ndarray:
        """(L, H, N, N) maps of ``kind`` "softmax" or "effective"."""
        if kind not in ("softmax", "effective"):
            raise ValueError(f"kind must be softmax or effective, not {kind!r}")
        return self.softmax if kind == "softmax" else self.effective


@torch.no_grad()
def run_model(loaded: LoadedModel, image: Image.Image) -> ModelView:
    """One forward pass with attention capture.

    Raises:
        refiner.image_input.ImageInputError: if the image is smaller than one patch of the model.
    """
    x = loaded.info.transform(image)
    picture = np.asarray(loaded.info.view(image).convert("RGB"))
    device = next(loaded.model.parameters()).device
    with refiner.capture_attention(loaded.model) as rec:
        logits = loaded.model(x[None].to(device))
    meta = rec.meta
    effective = np.stack([m[0].cpu().numpy() for m in rec.effective]).astype(np.float32)
    has_softmax = np.array([m is not None for m in rec.softmax])
    softmax = np.stack([(s if s is not None else e)[0].cpu().numpy() for s, e in zip(rec.softmax, rec.effective)])
    return ModelView(probs=logits.float().softmax(-1)[0].cpu().numpy(), softmax=softmax.astype(np.float32),
                     effective=effective, has_softmax=has_softmax, refined=np.array(meta.refined),
                     num_prefix_tokens=int(meta.num_prefix_tokens), grid=tuple(meta.grid_size),
                     patch_size=tuple(meta.patch_size), picture=picture, input_tensor=x.numpy(),
                     class_token_index=meta.class_token_index)


def head_matrix(view: ModelView, layer: int, head: HeadChoice, kind: str = "effective") -> np.ndarray:
    """(N, N) map of one head, or of all heads fused by "mean" or "max", at ``layer``."""
    maps = view.maps(kind)[layer]
    if isinstance(head, str):
        return fuse_heads(maps[None], head)[0]
    if not 0 <= head < maps.shape[0]:
        raise IndexError(f"head {head} does not exist; this layer has {maps.shape[0]} heads")
    return maps[head]


def query_grid(matrix: np.ndarray, query: int, num_prefix_tokens: int, grid: Tuple[int, int]) -> np.ndarray:
    """(Gh, Gw) attention of token ``query`` over the patches (its row of ``matrix``, prefix keys dropped)."""
    return matrix[query, num_prefix_tokens:].reshape(grid)


def all_heads_grids(view: ModelView, layer: int, query: int, kind: str = "effective") -> np.ndarray:
    """(H, Gh, Gw) attention of token ``query`` over the patches for every head of ``layer``."""
    rows = view.maps(kind)[layer][:, query, view.num_prefix_tokens:]
    return rows.reshape((rows.shape[0],) + tuple(view.grid))


def map_query(query: int, source: ModelView, target: ModelView) -> int:
    """The token of ``target`` that corresponds to ``query`` of ``source``.

    Prefix tokens map to the same prefix index (CLS to CLS); a patch maps to the patch of the target grid
    at the same relative position, so two models with different grids stay linked.
    """
    k_src, k_dst = source.num_prefix_tokens, target.num_prefix_tokens
    if query < k_src:
        return min(query, max(k_dst - 1, 0)) if k_dst else k_dst
    row, col = divmod(query - k_src, source.grid[1])
    t_row = min(int((row + 0.5) * target.grid[0] / source.grid[0]), target.grid[0] - 1)
    t_col = min(int((col + 0.5) * target.grid[1] / source.grid[1]), target.grid[1] - 1)
    return k_dst + t_row * target.grid[1] + t_col


def token_label(query: int, num_prefix_tokens: int, grid: Tuple[int, int],
                class_token_index: Optional[int] = 0) -> str:
    """"CLS", "prefix 2" or "patch (row, col)" for a token index (no "CLS" for a model without one)."""
    if query < num_prefix_tokens:
        return "CLS" if query == class_token_index else f"prefix {query}"
    row, col = divmod(query - num_prefix_tokens, grid[1])
    return f"patch ({row}, {col})"


def patch_token(row: int, col: int, num_prefix_tokens: int, grid: Tuple[int, int]) -> int:
    """Token index of the patch at grid position (row, col)."""
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        raise IndexError(f"patch ({row}, {col}) is outside the {grid[0]}x{grid[1]} grid")
    return num_prefix_tokens + row * grid[1] + col


def top_k(probs: np.ndarray, names: list, k: int = 5) -> list:
    """[(class name, probability)] of the k most probable classes, most probable first."""
    order = np.argsort(-probs)[:k]
    return [(names[i] if i < len(names) else str(i), float(probs[i])) for i in order]
