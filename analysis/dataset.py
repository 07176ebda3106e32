"""Dataset-level statistics of the section 5 metrics, streamed image by image (DESIGN section 5).

Nothing of size (L, H, N, N) outlives its batch. Per model, a `MetricAccumulator` keeps
- running sums (sum, sum of squares, count) of every summary metric at full shape, e.g. the (L, L)
  similarity matrix or the (L, H) attention distances, for dataset means; and
- one small per-image curve per metric (the per-layer value, heads averaged: L floats; 1 for scalars),
  which is what the bootstrap intervals and the paired tests resample. For ViT-S this is about 1.5 KB per
  image and model, against 1.9 MB for the maps themselves.

Under ``torch.distributed`` (e.g. ``torchrun``) `MetricAccumulator.reduce_across_processes` all-reduces
the sums and gathers the curves, so every rank ends with the statistics of the whole dataset.

Intervals are percentile bootstrap intervals of the mean over images (95% by default; `scipy.stats.bootstrap`).
Two models run on the same images are compared with a paired bootstrap of the per-image differences and a
two-sided sign-flip permutation test of their mean (`scipy.stats.permutation_test`'s test, computed here as
one matrix product per batch; see `sign_flip_p_value`). `bootstrap_interval`, `sign_flip_p_value` and
`paired_comparison` are the whole statistics API, here in one module; `dataset_statistics` computes every
interval a dataset's figures and tables show once, for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .attention_metrics import METRICS, MetricSettings, compute_map_metrics
from .cka import MinibatchCKA
from .features import pool_block_outputs
from .per_image import metric_maps, pair_key, run_with_capture
from .similarity import relative_depth, resample_to_relative_depth

# Captured maps held at once by `analyze_dataset` (``refiner analyze --map-budget-mb``): 1 GiB.
DEFAULT_MAP_BUDGET_BYTES = 1 << 30

Preprocess = Callable[[torch.Tensor], torch.Tensor]


def per_image_curve(key: str, value: np.ndarray) -> np.ndarray:
    """The per-image summary of one metric: a per-layer curve, or a length-1 array for scalars.

    (L, H) metrics average over heads; the (L, L) similarity matrices give each layer's mean similarity
    with the *other* layers; (L, H, H) head matrices are kept only as running sums.

    Args:
        key: a `METRICS` key.
        value: the metric's array for one image.

    Returns:
        (L,) or (L - 1,) or (1,) float64, or an empty array when the metric has no per-image curve.
    """
    axes = METRICS[key].axes
    value = np.asarray(value, dtype=np.float64)
    if axes == ():
        return value.reshape(1)
    if axes == ("layer",):
        return value
    if axes == ("layer", "head"):
        return value.mean(axis=1)
    if axes == ("layer", "layer2"):
        layers = value.shape[0]
        if layers < 2:
            return np.ones(1)
        return (value.sum(axis=1) - np.diagonal(value)) / (layers - 1)
    return np.zeros(0)


class CurveStore:
    """Per-image curves of one metric, stored as rows of a few large preallocated blocks.

    Why not a list of small arrays: each image would leave several small long-lived allocations between
    the large short-lived temporaries of the metric computation. With glibc's adaptive mmap threshold those
    temporaries come from the heap, and the scattered survivors keep it from shrinking: measured here, peak
    memory then grew by ~0.8 GiB over 1,000 images. One block per ``block_rows`` images avoids that.
    """

    def __init__(self, block_rows: int = 1024) -> None:
        self.block_rows = block_rows
        self.blocks: List[np.ndarray] = []
        self.rows = 0

    def append(self, curve: np.ndarray) -> None:
        """Add one image's curve (all curves of a store have the same length)."""
        if self.blocks and curve.shape[0] != self.blocks[0].shape[1]:
            raise ValueError(f"curve length changed from {self.blocks[0].shape[1]} to {curve.shape[0]}")
        if self.rows == len(self.blocks) * self.block_rows:
            self.blocks.append(np.empty((self.block_rows, curve.shape[0])))
        self.blocks[-1][self.rows % self.block_rows] = curve
        self.rows += 1

    def extend(self, matrix: np.ndarray) -> None:
        """Add several images' curves, (images, length)."""
        for row in np.asarray(matrix, dtype=np.float64):
            self.append(row)

    def matrix(self) -> np.ndarray:
        """(images, length) copy of all curves, in insertion order."""
        if not self.rows:
            return np.zeros((0, 0))
        return np.concatenate(self.blocks)[: self.rows].copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the blocks."""
        return sum(b.nbytes for b in self.blocks)


class MetricAccumulator:
    """Streaming statistics of one model's metrics over a dataset."""

    def __init__(self) -> None:
        self.sums: Dict[str, np.ndarray] = {}
        self.squares: Dict[str, np.ndarray] = {}
        self.counts: Dict[str, np.ndarray] = {}
        self.curves: Dict[str, CurveStore] = {}
        self.images = 0

    def add(self, metrics: Mapping[str, np.ndarray]) -> None:
        """Add one image's metrics (the output of `compute_map_metrics`); maps (non-summary keys) are ignored."""
        for key, value in metrics.items():
            if key not in METRICS or not METRICS[key].summary:
                continue
            value = np.asarray(value, dtype=np.float64)
            finite = np.isfinite(value)
            clean = np.where(finite, value, 0.0)
            if key not in self.sums:
                self.sums[key], self.squares[key] = np.zeros_like(clean), np.zeros_like(clean)
                self.counts[key] = np.zeros_like(clean)
                self.curves[key] = CurveStore()
            if self.sums[key].shape != clean.shape:
                raise ValueError(f"metric {key!r} changed shape from {self.sums[key].shape} to {clean.shape}: "
                                 "one accumulator per model and input size")
            self.sums[key] += clean
            self.squares[key] += np.square(clean)
            self.counts[key] += finite
            curve = per_image_curve(key, value)
            if curve.size:
                self.curves[key].append(curve)
        self.images += 1

    def mean(self, key: str) -> np.ndarray:
        """Dataset mean of a metric at full shape (NaN where no image had a finite value)."""
        count = self.counts[key]
        return np.where(count > 0, self.sums[key] / np.where(count > 0, count, 1), np.nan)

    def std(self, key: str) -> np.ndarray:
        """Dataset standard deviation (population) at full shape."""
        count = np.where(self.counts[key] > 0, self.counts[key], 1)
        mean = self.sums[key] / count
        return np.sqrt(np.clip(self.squares[key] / count - mean * mean, 0.0, None))

    def curve_matrix(self, key: str) -> np.ndarray:
        """(images, L) per-image curves of a metric, in the order the images were added."""
        store = self.curves.get(key)
        return store.matrix() if store is not None else np.zeros((0, 0))

    def reduce_across_processes(self) -> None:
        """All-reduce sums and gather curves over ``torch.distributed`` ranks (no-op when not initialised).

        Curves are concatenated in rank order, so two accumulators of the same ranks stay paired image by image.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
            else torch.device("cpu")
        for table in (self.sums, self.squares, self.counts):
            for key in sorted(table):
                tensor = torch.from_numpy(table[key]).to(device)
                dist.all_reduce(tensor)
                table[key] = tensor.cpu().numpy()
        gathered: List[Optional[Dict[str, np.ndarray]]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {key: store.matrix() for key, store in self.curves.items()})
        merged: Dict[str, CurveStore] = {}
        for key in sorted(self.curves):
            merged[key] = CurveStore()
            for part in gathered:
                if part and key in part and part[key].size:
                    merged[key].extend(part[key])
        self.curves = merged
        images = torch.tensor([float(self.images)], dtype=torch.float64, device=device)
        dist.all_reduce(images)
        self.images = int(images.item())


# Elements (resamples x images) of one batch of resampled image indices or sign patterns: 0.8 MB of
# float64 stays in cache; 2 MB and 32 MB batches were measured 1.3-2x slower (n = 200-5,000).
_RESAMPLE_ELEMENTS = 100_000


def _batch(n_images: int, n_resamples: int) -> int:
    """Resamples per batch so that one batch holds about `_RESAMPLE_ELEMENTS` indices or signs."""
    return max(1, min(n_resamples, _RESAMPLE_ELEMENTS // max(1, n_images)))


@dataclass
class Interval:
    """A mean with its bootstrap interval, elementwise over the metric's shape.

    Attributes:
        mean, low, high: arrays of the same shape.
        level: confidence level (e.g. 0.95).
        n: number of images.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float
    n: int


def _means_of_resampled_images(columns: np.ndarray) -> Callable[..., np.ndarray]:
    """A vectorised `scipy.stats.bootstrap` statistic over resampled *image indices*.

    scipy resamples the index vector ``arange(n)``; the statistic turns each resample into counts per image
    and takes one matrix product with the (n, c) values. So one index draw serves every metric column, and no
    (resamples, n, c) copy of the values is made: that copy is what makes ``bootstrap((columns,), np.mean)``
    slower than the old multinomial code (benchmarks/statistics_scipy.py). The resamples, the percentile
    interval and the batching are scipy's, and the intervals equal that plain call's for the same seed
    (tests/analysis/test_dataset.py).

    Args:
        columns: (n, c) finite per-image values.

    Returns:
        statistic(indices, axis=-1): indices (n,) -> (c,) means; (b, n) -> (c, b), scipy's layout.
    """
    n = columns.shape[0]

    def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.asarray(indices, dtype=np.intp).reshape(-1, n)
        offsets = n * np.arange(rows.shape[0], dtype=np.intp)[:, None]
        counts = np.bincount((rows + offsets).ravel(), minlength=rows.size).reshape(rows.shape)
        means = (counts.astype(np.float64) @ columns / n).T  # (c, b)
        return means[:, 0] if np.ndim(indices) == 1 else means

    return statistic


def _per_image_columns(values: np.ndarray, what: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, ...) per-image values as float64, their (n, c) columns and which columns are finite in every image.

    Raises:
        ValueError: no images ("no images to <what>").
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] == 0:
        raise ValueError(f"no images to {what}")
    flat = values.reshape(values.shape[0], -1)
    return values, flat, np.isfinite(flat).all(axis=0)


def bootstrap_interval(values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean over images and its percentile bootstrap interval (`scipy.stats.bootstrap`, method "percentile").

    Args:
        values: (n, ...) per-image values; NaN columns give NaN results.
        level: confidence level.
        n_boot: resamples.
        seed: random seed (the same seed gives the same interval).

    Returns:
        `Interval` with arrays of shape values.shape[1:]. One image gives the zero-width interval at its value.

    Raises:
        ValueError: no images.
    """
    from scipy import stats

    values, flat, finite = _per_image_columns(values, "bootstrap")
    n = flat.shape[0]
    mean = flat.mean(axis=0)
    low, high = mean.copy(), mean.copy()
    if n > 1 and finite.any():  # scipy needs two observations; one image has no spread to resample
        result = stats.bootstrap((np.arange(n),), _means_of_resampled_images(flat[:, finite]),
                                 n_resamples=n_boot, confidence_level=level, method="percentile",
                                 vectorized=True, batch=_batch(n, n_boot), rng=np.random.default_rng(seed))
        low[finite], high[finite] = result.confidence_interval.low, result.confidence_interval.high
    nan = np.where(finite, 1.0, np.nan)
    shape = values.shape[1:]
    return Interval(mean=(mean * nan).reshape(shape), low=(low * nan).reshape(shape),
                    high=(high * nan).reshape(shape), level=level, n=n)


@dataclass
class PairedComparison:
    """Model b minus model a on the same images.

    Attributes:
        difference: `Interval` of the mean per-image difference (b - a).
        p_value: two-sided sign-flip permutation p-value of the mean difference, elementwise.
        n_permutations: sign patterns used (all 2**n of them when that is not more than asked for).
    """

    difference: Interval
    p_value: np.ndarray
    n_permutations: int


def sign_patterns_used(n_images: int, n_permutations: int) -> int:
    """How many sign patterns `sign_flip_p_value` uses: all 2**n when that is not more than asked for."""
    return 2 ** n_images if n_images < 63 and 2 ** n_images <= n_permutations else n_permutations


def sign_flip_p_value(differences: np.ndarray, n_permutations: int = 5000, seed: int = 0) -> np.ndarray:
    """Two-sided sign-flip permutation test of mean(differences) == 0, elementwise.

    The test and its conventions are `scipy.stats.permutation_test`'s for one sample with
    ``permutation_type="samples"``: every sign pattern when 2**n <= ``n_permutations`` (exact), else random
    patterns with the observed one counted as reaching itself; ties within scipy's relative tolerance
    (100 eps |observed|); two-sided = twice the smaller one-sided p-value, at most 1. The tests pin it to
    scipy (equal in the exact case, within Monte-Carlo error otherwise). We keep this loop instead of calling
    scipy because scipy builds the sign flips with a Python loop over the n images per batch and copies the
    (patterns, n, columns) data; here one draw of (patterns, n) signs serves every column through a matrix
    product, which is 3-10x faster at n = 1,000-5,000 and stays feasible at n = 50,000
    (benchmarks/statistics_scipy.py).

    Args:
        differences: (n, ...) per-image paired differences; NaN columns give NaN p-values.
        n_permutations: random sign patterns.
        seed: random seed.

    Returns:
        p-values of shape differences.shape[1:]. One image gives 1 (both of its sign patterns reach it).

    Raises:
        ValueError: no images.
    """
    differences, flat, finite = _per_image_columns(differences, "test")
    n = flat.shape[0]
    columns = np.where(finite, flat, 0.0)
    observed = columns.mean(axis=0)
    tolerance = 100 * np.finfo(np.float64).eps * np.abs(observed)
    at_least = np.zeros(flat.shape[1])  # null >= observed (within tolerance)
    at_most = np.zeros(flat.shape[1])
    total = sign_patterns_used(n, n_permutations)
    exact = total == 2 ** n if n < 63 else False
    rng = np.random.default_rng(seed)
    step = _batch(n, total)
    for start in range(0, total, step):
        stop = min(start + step, total)
        if exact:  # pattern k flips image i where bit i of k is set
            bits = (np.arange(start, stop)[:, None] >> np.arange(n)) & 1
            signs = 1.0 - 2.0 * bits
        else:
            signs = rng.choice(np.array([-1.0, 1.0]), size=(stop - start, n))
        null = signs @ columns / n
        at_least += (null >= observed - tolerance).sum(axis=0)
        at_most += (null <= observed + tolerance).sum(axis=0)
    reached = np.minimum(at_least, at_most)
    p_values = 2 * reached / total if exact else 2 * (reached + 1) / (total + 1)
    p_values = np.where(finite, np.minimum(p_values, 1.0), np.nan)
    return p_values.reshape(differences.shape[1:])


def paired_comparison(values_a: np.ndarray, values_b: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                      n_permutations: int = 5000, seed: int = 0) -> PairedComparison:
    """Paired bootstrap interval and sign-flip test of b - a over the same images.

    Args:
        values_a: (n, ...) per-image values of model a.
        values_b: (n, ...) of model b, same images in the same order and the same shape (resample curves of
            models of different depth with `align_curves` first).
        level, n_boot, n_permutations, seed: as in `bootstrap_interval` / `sign_flip_p_value`.

    Returns:
        `PairedComparison`.
    """
    values_a, values_b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if values_a.shape != values_b.shape:
        raise ValueError(f"paired values must have the same shape, got {values_a.shape} and {values_b.shape}")
    differences = values_b - values_a
    return PairedComparison(difference=bootstrap_interval(differences, level, n_boot, seed),
                            p_value=sign_flip_p_value(differences, n_permutations, seed + 1),
                            n_permutations=sign_patterns_used(len(differences), n_permutations))


def align_curves(curves_a: np.ndarray, curves_b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Bring (n, La) and (n, Lb) per-layer curves to common relative depths (those of the shallower model).

    Returns:
        Both as (n, min(La, Lb)).
    """
    la, lb = curves_a.shape[1], curves_b.shape[1]
    if la == lb:
        return curves_a, curves_b
    target = relative_depth(min(la, lb))
    resample = lambda c: resample_to_relative_depth(c.T, target).T  # noqa: E731 - (L, n) along layers
    return (curves_a if la == len(target) else resample(curves_a),
            curves_b if lb == len(target) else resample(curves_b))


@dataclass
class DatasetAnalysis:
    """Statistics of several models over the same images.

    Attributes:
        accumulators: model label -> `MetricAccumulator`.
        settings: metric settings.
        cka: "A" -> (La, La) within-model minibatch CKA, "A|B" -> (La, Lb) across models (images as examples,
            CLS-token features, or the mean patch token of a model without a class token); absent when no batch
            had >= 4 images.
        correct: model label -> number of correctly classified images (when labels were given).
        images: number of images analysed.
        depths: model label -> L.
    """

    accumulators: Dict[str, MetricAccumulator]
    settings: MetricSettings
    cka: Dict[str, np.ndarray] = field(default_factory=dict)
    correct: Dict[str, int] = field(default_factory=dict)
    images: int = 0
    depths: Dict[str, int] = field(default_factory=dict)

    def interval(self, model: str, key: str, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
        """Mean per-layer curve of a metric with its bootstrap interval."""
        return bootstrap_interval(self.accumulators[model].curve_matrix(key), level, n_boot, seed)

    def compare(self, model_a: str, model_b: str, key: str, level: float = 0.95, n_boot: int = 2000,
                n_permutations: int = 5000, seed: int = 0, overall: bool = False) -> PairedComparison:
        """Paired comparison b - a of a metric's per-layer curve (models of different depth are aligned by
        relative depth) or, with ``overall``, of its mean over layers."""
        a = self.accumulators[model_a].curve_matrix(key)
        b = self.accumulators[model_b].curve_matrix(key)
        if overall:
            a, b = np.nanmean(a, axis=1, keepdims=True), np.nanmean(b, axis=1, keepdims=True)
        else:
            a, b = align_curves(a, b)
        return paired_comparison(a, b, level, n_boot, n_permutations, seed)

    def accuracy(self, model: str) -> Optional[float]:
        """Top-1 accuracy, or None without labels."""
        return self.correct[model] / self.images if model in self.correct and self.images else None


@dataclass(frozen=True)
class DatasetStatistics:
    """Every interval and paired comparison that the figures and tables of one dataset analysis show, each
    computed once (`dataset_statistics`) and read by both `analysis.figures.dataset_figures` and
    `analysis.export.dataset_rows`.

    Attributes:
        keys: summary metrics with a per-image curve in every model, in `METRICS` order.
        intervals: (model, metric) -> `Interval` of its per-layer curve.
        comparisons: (metric, overall) -> `PairedComparison` b - a of the first two models, per layer
            (overall False) or of the mean over layers (True); empty unless there are exactly two models.
        level, n_boot, n_permutations, seed: what they were computed with.
    """

    keys: Tuple[str, ...]
    intervals: Mapping[Tuple[str, str], Interval]
    comparisons: Mapping[Tuple[str, bool], PairedComparison]
    level: float
    n_boot: int
    n_permutations: int
    seed: int


def dataset_statistics(analysis: DatasetAnalysis, level: float = 0.95, n_boot: int = 2000,
                       n_permutations: int = 5000, seed: int = 0) -> DatasetStatistics:
    """The bootstrap intervals of every (model, metric) and, for two models, the paired comparisons of every
    metric (per layer and overall): one resampling per series.

    Args:
        analysis: from `analyze_dataset`.
        level, n_boot, n_permutations, seed: as in `bootstrap_interval` / `paired_comparison`.
    """
    names = list(analysis.accumulators)
    keys = tuple(k for k in METRICS if METRICS[k].summary and
                 all(analysis.accumulators[n].curve_matrix(k).size for n in names))
    intervals = {(n, k): analysis.interval(n, k, level, n_boot, seed) for n in names for k in keys}
    comparisons: Dict[Tuple[str, bool], PairedComparison] = {}
    if len(names) == 2:
        for key in keys:
            per_layer = analysis.compare(names[0], names[1], key, level, n_boot, n_permutations, seed)
            comparisons[(key, False)] = per_layer
            # A scalar metric's mean over layers is itself: one comparison serves both.
            comparisons[(key, True)] = per_layer if METRICS[key].axes == () else analysis.compare(
                names[0], names[1], key, level, n_boot, n_permutations, seed, overall=True)
    return DatasetStatistics(keys=keys, intervals=intervals, comparisons=comparisons, level=level, n_boot=n_boot,
                             n_permutations=n_permutations, seed=seed)


Images = Union[torch.Tensor, Mapping[str, torch.Tensor]]
BatchLike = Union[Sequence[Any], torch.Tensor]


def _unpack(batch: BatchLike) -> Tuple[Images, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(images, labels or None, boxes or None) from a tensor, (images, labels) or (images, labels, boxes).

    ``images`` is one (B, C, H, W) tensor for every model, or a mapping model label -> (B, C, H, W) when each
    model has its own input (`analysis.inputs.prepared_batches`).
    """
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    items = list(batch)
    images = items[0]
    labels = torch.as_tensor(items[1]) if len(items) > 1 and items[1] is not None else None
    boxes = torch.as_tensor(items[2]) if len(items) > 2 and items[2] is not None else None
    return images, labels, boxes


def _count(images: Images) -> int:
    return int(next(iter(images.values())).shape[0]) if isinstance(images, Mapping) else int(images.shape[0])


def _head(images: Images, count: int) -> Images:
    """The first ``count`` images of a batch (of every model's tensor)."""
    if isinstance(images, Mapping):
        return {label: tensor[:count] for label, tensor in images.items()}
    return images[:count]


def analyze_dataset(models: Mapping[str, nn.Module], batches: Iterable[BatchLike],
                    settings: MetricSettings = MetricSettings(),
                    preprocess: Union[None, Preprocess, Mapping[str, Preprocess]] = None,
                    max_images: Optional[int] = None, progress: bool = False, total: Optional[int] = None,
                    reduce: bool = True, use_boxes: bool = True,
                    map_budget_bytes: int = DEFAULT_MAP_BUDGET_BYTES,
                    on_progress: Optional[Callable[[int], None]] = None) -> DatasetAnalysis:
    """Run every model over a stream of batches and accumulate every summary metric.

    Args:
        models: label -> model (eval mode).
        batches: iterable of ``images`` (B, C, H, W), ``(images, labels)`` or ``(images, labels, boxes)`` (a
            DataLoader over a `refiner.data` dataset works as is). Boxes are (B, 4) input pixels. ``images`` may
            also map each model label to its own (B, C, H, W) input (`analysis.inputs.prepared_batches`).
        settings: metric settings.
        preprocess: applied to each batch before a model sees it: one callable for all models, or one per
            model label (e.g. input normalisation from each checkpoint's config).
        max_images: stop after this many images (per process).
        progress: show a tqdm progress bar (images).
        total: expected number of images for the progress bar.
        reduce: all-reduce the statistics across ``torch.distributed`` ranks at the end.
        use_boxes: add the localisation metrics when the batches carry boxes.
        map_budget_bytes: the most bytes of captured maps held at once; a batch whose maps would take more
            runs in smaller chunks (the statistics do not depend on it).
        on_progress: called with the number of images done after each batch (the app's progress bar; it
            runs in the caller's thread, between batches).

    Returns:
        `DatasetAnalysis`.
    """
    from tqdm.auto import tqdm

    names = list(models)
    result = DatasetAnalysis(accumulators={n: MetricAccumulator() for n in names}, settings=settings)
    within = {n: None for n in names}  # MinibatchCKA, created once depths are known
    across: Dict[str, MinibatchCKA] = {}
    chunks: Dict[str, int] = {}  # images per forward pass of each model, from its maps' bytes
    bar = tqdm(total=total if max_images is None else min(total or max_images, max_images), unit="img",
               disable=not progress, dynamic_ncols=True)
    try:
        for batch in batches:
            images, labels, boxes = _unpack(batch)
            if max_images is not None:
                remaining = max_images - result.images
                if remaining <= 0:
                    break
                images = _head(images, remaining)
                labels = None if labels is None else labels[:remaining]
                boxes = None if boxes is None else boxes[:remaining]
            features: Dict[str, List[np.ndarray]] = {}
            for name in names:
                prep = preprocess.get(name) if isinstance(preprocess, Mapping) else preprocess
                own = images[name] if isinstance(images, Mapping) else images
                pooled = _accumulate_batch(models[name], prep(own) if prep is not None else own, labels,
                                           boxes if use_boxes else None, settings, name, result, chunks,
                                           map_budget_bytes)
                if pooled is not None:
                    features[name] = pooled
            for i, a in enumerate(names):
                if a not in features:
                    continue
                if within[a] is None:
                    within[a] = MinibatchCKA(len(features[a]))
                within[a].update(features[a])
                for b in names[i + 1:]:
                    if b in features:
                        key = pair_key(a, b)
                        across.setdefault(key, MinibatchCKA(len(features[a]), len(features[b])))
                        across[key].update(features[a], features[b])
            result.images += _count(images)
            bar.update(_count(images))
            if on_progress is not None:
                on_progress(result.images)
    finally:
        bar.close()
    if reduce:
        _reduce(result, within, across)
    result.cka = {n: c.compute() for n, c in within.items() if c is not None and c.batches}
    result.cka.update({k: c.compute() for k, c in across.items() if c.batches})
    return result


def _accumulate_batch(model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor], settings: MetricSettings, name: str,
                      result: DatasetAnalysis, chunks: Dict[str, int], map_budget_bytes: int
                      ) -> Optional[List[np.ndarray]]:
    """One model on one batch: add every image's metrics; return CLS features for CKA (None if unusable).

    The batch runs in chunks whose maps fit in ``map_budget_bytes`` (one image at first; then as many as fit,
    from the bytes that image's maps took, remembered per model in ``chunks``), so memory stays flat at any
    batch size: one image of Refiner-ViT-L at 448 px has 1.26 GB of maps of one kind. Only the maps the
    metrics read are kept. A function of its own so the maps are released when it returns, before the next
    model's are allocated.
    """
    pooled: List[List[np.ndarray]] = []
    start, count = 0, images.shape[0]
    while start < count:
        stop = min(count, start + chunks.get(name, 1))
        captured = run_with_capture(model, images[start:stop], kinds=(settings.map_kind,))
        meta = captured.meta
        chunks[name] = max(1, int(map_budget_bytes // max(1, captured.map_bytes // (stop - start))))
        result.depths[name] = meta.depth
        maps = metric_maps(captured, settings)
        for b in range(maps.shape[0]):
            box = boxes[start + b].tolist() if boxes is not None else None
            result.accumulators[name].add(compute_map_metrics(maps[b], meta.num_prefix_tokens, meta.grid_size,
                                                              meta.patch_size, settings, box,
                                                              class_token_index=meta.class_token_index))
        if labels is not None:
            result.correct[name] = result.correct.get(name, 0) + int(
                (captured.logits.argmax(axis=1) == labels[start:stop].numpy()).sum())
        # CLS-token features; a model without a class token gets its mean patch token instead.
        pooling = "cls" if meta.class_token_index is not None and meta.num_prefix_tokens > 0 else "mean"
        pooled.append(pool_block_outputs(captured.block_outputs, pooling, meta.num_prefix_tokens,
                                         meta.class_token_index))
        del captured, maps
        start = stop
    # The unbiased HSIC needs >= 4 examples per minibatch.
    if count >= 4:
        return [np.concatenate(layer) for layer in zip(*pooled)]
    return None


def _reduce(result: DatasetAnalysis, within: Dict[str, Optional[MinibatchCKA]],
            across: Dict[str, MinibatchCKA]) -> None:
    """All-reduce everything additive across ranks (no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    for accumulator in result.accumulators.values():
        accumulator.reduce_across_processes()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for stream in [c for c in within.values() if c is not None] + list(across.values()):
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).to(device) for k, v in stream.state().items()}
        for key in sorted(state):
            dist.all_reduce(state[key])
        stream.load_state({k: v.cpu().numpy() for k, v in state.items()})
    counts = torch.tensor([float(result.images)] + [float(result.correct.get(n, 0)) for n in result.accumulators],
                          dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    result.images = int(counts[0].item())
    result.correct = {n: int(counts[i + 1].item()) for i, n in enumerate(result.accumulators) if n in result.correct}
