"""Hand-built attention maps with known answers, shared by the analysis tests."""

from __future__ import annotations

import numpy as np


def softmax_maps(layers: int, heads: int, tokens: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """(L, H, N, N) random row-stochastic maps."""
    logits = np.random.default_rng(seed).standard_normal((layers, heads, tokens, tokens)) / temperature
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def identity_maps(layers: int, heads: int, tokens: int) -> np.ndarray:
    """(L, H, N, N) every token attends only to itself."""
    return np.broadcast_to(np.eye(tokens), (layers, heads, tokens, tokens)).copy()


def uniform_maps(layers: int, heads: int, tokens: int) -> np.ndarray:
    """(L, H, N, N) every row uniform."""
    return np.full((layers, heads, tokens, tokens), 1.0 / tokens)
