"""Linear centred kernel alignment (Kornblith et al., ICML 2019) and its unbiased minibatch form.

CKA compares two sets of representations of the same n examples (rows): X (n, p) and Y (n, q). It is
invariant to orthogonal transforms and isotropic scaling of either, and 1 for X compared with itself.

- `linear_cka`: the full-data estimator; optionally the debiased one (unbiased HSIC, Song et al. 2012).
- `cka_matrix`: all layer pairs of one or two models in one go (within a model: pass one list).
- `MinibatchCKA`: the estimator of Nguyen, Raghu & Kornblith ("Do wide and deep networks learn the same
  things?", ICLR 2021): unbiased HSIC summed over minibatches, so a whole dataset streams through with
  memory independent of its size. Its sums can be all-reduced across processes (`analysis.dataset`).

Per image, tokens can serve as the examples (n = N tokens); over a dataset, images do (n = images).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np


def _centred_gram(features: np.ndarray) -> np.ndarray:
    """(n, p) -> (n, n) Gram matrix of the column-centred features (float64)."""
    centred = np.asarray(features, dtype=np.float64)
    centred = centred - centred.mean(axis=0, keepdims=True)
    return centred @ centred.T


def _grams(features: Sequence[np.ndarray], centre: bool) -> np.ndarray:
    out = []
    for f in features:
        f = np.asarray(f, dtype=np.float64).reshape(len(f), -1)
        out.append(_centred_gram(f) if centre else f @ f.T)
    return np.stack(out)


def _unbiased_hsic_terms(grams: np.ndarray):
    """Pieces of the unbiased HSIC of (m, n, n) Gram matrices with zeroed diagonals."""
    tilde = grams.copy()
    index = np.arange(grams.shape[-1])
    tilde[:, index, index] = 0.0
    return tilde, tilde.sum(axis=(1, 2)), tilde.sum(axis=2)


def unbiased_hsic_matrix(grams_a: np.ndarray, grams_b: np.ndarray) -> np.ndarray:
    """Unbiased HSIC (Song et al. 2012) between every pair of (uncentred) Gram matrices.

    Args:
        grams_a: (La, n, n) Gram matrices K = X X^T.
        grams_b: (Lb, n, n) Gram matrices of the same n examples.

    Returns:
        (La, Lb) HSIC_1 estimates.
    """
    n = grams_a.shape[-1]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {n}")
    ka, sum_a, rows_a = _unbiased_hsic_terms(grams_a)
    kb, sum_b, rows_b = _unbiased_hsic_terms(grams_b)
    trace = ka.reshape(len(ka), -1) @ kb.reshape(len(kb), -1).T  # tr(K~ L~) for symmetric matrices
    middle = np.outer(sum_a, sum_b) / ((n - 1) * (n - 2))
    last = 2.0 * (rows_a @ rows_b.T) / (n - 2)  # 1^T K~ L~ 1
    return (trace + middle - last) / (n * (n - 3))


def _biased_hsic_matrix(grams_a: np.ndarray, grams_b: np.ndarray) -> np.ndarray:
    """tr(Kc Lc) for centred Gram matrices: the (unscaled) biased HSIC of all pairs."""
    return grams_a.reshape(len(grams_a), -1) @ grams_b.reshape(len(grams_b), -1).T


def _cka_from_hsic(cross: np.ndarray, self_a: np.ndarray, self_b: np.ndarray) -> np.ndarray:
    denominator = np.sqrt(np.clip(np.outer(self_a, self_b), 0.0, None))
    return np.where(denominator > 0, cross / np.where(denominator > 0, denominator, 1.0), 0.0)


def cka_matrix(features_a: Sequence[np.ndarray], features_b: Optional[Sequence[np.ndarray]] = None,
               debiased: bool = False) -> np.ndarray:
    """Linear CKA between every layer of a and every layer of b (or of a with itself).

    Args:
        features_a: per layer, (n, p_l) representations of the same n examples (extra axes are flattened).
        features_b: the same for a second model (None: a with itself).
        debiased: use the unbiased HSIC estimator (needs n >= 4); the plain estimator otherwise.

    Returns:
        (La, Lb) CKA values; the within-model matrix has ones on the diagonal.
    """
    same = features_b is None
    if debiased:
        grams_a = _grams(features_a, centre=False)
        grams_b = grams_a if same else _grams(features_b, centre=False)
        cross = unbiased_hsic_matrix(grams_a, grams_b)
        self_a = np.diagonal(cross).copy() if same else np.diagonal(unbiased_hsic_matrix(grams_a, grams_a)).copy()
        self_b = self_a if same else np.diagonal(unbiased_hsic_matrix(grams_b, grams_b)).copy()
    else:
        grams_a = _grams(features_a, centre=True)
        grams_b = grams_a if same else _grams(features_b, centre=True)
        cross = _biased_hsic_matrix(grams_a, grams_b)
        self_a = np.einsum("lij,lij->l", grams_a, grams_a)
        self_b = self_a if same else np.einsum("lij,lij->l", grams_b, grams_b)
    return _cka_from_hsic(cross, self_a, self_b)


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same n examples.

    Args:
        x: (n, p).
        y: (n, q).
        debiased: unbiased HSIC estimator (n >= 4).

    Returns:
        CKA in [0, 1] (the debiased form can dip slightly below 0 for unrelated features).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same examples (rows), got {x.shape[0]} and {y.shape[0]}")
    if not debiased and x.shape[0] > max(x.shape[1], y.shape[1]):
        # Feature-space form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F): cheaper when n exceeds p and q.
        xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
        cross = np.linalg.norm(yc.T @ xc) ** 2
        denominator = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
        return float(cross / denominator) if denominator > 0 else 0.0
    return float(cka_matrix([x], [y], debiased=debiased)[0, 0])


class MinibatchCKA:
    """Streaming unbiased-HSIC CKA between the layers of two models (or one model with itself).

    Call `update` with each minibatch's per-layer features (n >= 4 examples each); `compute` returns the
    (La, Lb) CKA. Memory is O(La * Lb), whatever the number of batches.
    """

    def __init__(self, layers_a: int, layers_b: Optional[int] = None) -> None:
        """Args: layers_a, layers_b: depths of the two models (layers_b None: within model a)."""
        self.within = layers_b is None
        lb = layers_a if layers_b is None else layers_b
        self.cross = np.zeros((layers_a, lb))
        self.self_a = np.zeros(layers_a)
        self.self_b = np.zeros(lb)
        self.batches = 0

    def update(self, features_a: Sequence[np.ndarray], features_b: Optional[Sequence[np.ndarray]] = None) -> None:
        """Add one minibatch.

        Args:
            features_a: per layer of a, (n, p_l) features of the batch's n examples.
            features_b: per layer of b, (n, q_l) features of the same examples (None when within a model).
        """
        grams_a = _grams(features_a, centre=False)
        grams_b = grams_a if features_b is None else _grams(features_b, centre=False)
        self_a = np.diagonal(unbiased_hsic_matrix(grams_a, grams_a))
        self.cross += unbiased_hsic_matrix(grams_a, grams_b)
        self.self_a += self_a
        self.self_b += self_a if features_b is None else np.diagonal(unbiased_hsic_matrix(grams_b, grams_b))
        self.batches += 1

    def state(self) -> Dict[str, np.ndarray]:
        """The running sums (additive across processes and batches)."""
        return {"cross": self.cross, "self_a": self.self_a, "self_b": self.self_b,
                "batches": np.asarray([self.batches], dtype=np.float64)}

    def load_state(self, state: Dict[str, np.ndarray]) -> None:
        """Replace the running sums (e.g. with all-reduced ones)."""
        self.cross, self.self_a, self.self_b = state["cross"], state["self_a"], state["self_b"]
        self.batches = int(np.asarray(state["batches"]).reshape(-1)[0])

    def compute(self) -> np.ndarray:
        """(La, Lb) minibatch CKA of everything seen so far."""
        if self.batches == 0:
            raise ValueError("MinibatchCKA.compute() before any update()")
        return _cka_from_hsic(self.cross, self.self_a, self.self_b)
