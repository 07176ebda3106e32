"""Datasets read from a local directory: `cifar10`, `cifar100` (torchvision's format) and `imagefolder`.

Nothing is downloaded unless asked (``download=True``, the CLI's ``--download``): a missing dataset is a
`DatasetNotFoundError` that says exactly which folder was expected and how to get it there.
The default root is ``$REFINER_DATA`` or ``~/.cache/refiner/data``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch.utils.data import Dataset

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Transform = Callable[[object], torch.Tensor]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for; the message says where to put them."""


def default_root() -> Path:
    """Where datasets are looked for when no root is given: ``$REFINER_DATA`` or ``~/.cache/refiner/data``."""
    return Path(os.environ.get("REFINER_DATA") or Path.home() / ".cache" / "refiner" / "data").expanduser()


def _to_tensor() -> Transform:
    from torchvision.transforms import ToTensor

    return ToTensor()


def cifar(name: str, split: str, root: Optional[os.PathLike] = None, download: bool = False,
          transform: Optional[Transform] = None) -> Dataset:
    """CIFAR-10 or CIFAR-100 in torchvision's python format.

    Args:
        name: "cifar10" or "cifar100".
        split: "train" (50,000 images) or "test" (10,000).
        root: folder that holds ``cifar-10-batches-py/`` (or ``cifar-100-python/``); default `default_root()`.
        download: fetch and extract the archive into ``root`` with torchvision's downloader if missing.
        transform: PIL image -> tensor; default ToTensor, giving float32 (3, 32, 32) in [0, 1].

    Items are ``(image, label)``.

    Raises:
        DatasetNotFoundError: the extracted folder is missing and ``download`` is False.
    """
    from torchvision import datasets

    if name not in CIFAR_FOLDERS:
        raise ValueError(f"unknown CIFAR variant {name!r}; choose cifar10 or cifar100")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for {name}; choose train or test")
    base = Path(root).expanduser() if root is not None else default_root()
    expected = base / CIFAR_FOLDERS[name]
    if not download and not expected.is_dir():
        raise DatasetNotFoundError(
            f"{name} not found: expected the extracted folder {expected.resolve()} "
            f"(download {CIFAR_URLS[name]} and extract it into {base.resolve()}, "
            f"or pass --download / download=True to let torchvision fetch it; "
            f"set --data-root or $REFINER_DATA to use another folder)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        return cls(root=str(base), train=split == "train", download=download, transform=transform or _to_tensor())
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise DatasetNotFoundError(f"{name} at {expected.resolve()} is incomplete or corrupted ({error}); "
                                   f"re-extract {CIFAR_URLS[name]} into {base.resolve()}") from None


def image_folder(split: str, root: Optional[os.PathLike] = None, img_size: int = 224,
                 transform: Optional[Transform] = None) -> Dataset:
    """Images in ``root/<split>/<class name>/<image>`` (the ImageNet layout, classes sorted by name).

    Args:
        split: subfolder name, typically "train" or "val" ("test" falls back to "val" when absent).
        root: the dataset folder; default ``default_root()/imagefolder``.
        img_size: side of the evaluation crop (resize the short side to img_size / 0.875, centre crop).
        transform: PIL image -> tensor, replacing the evaluation transform (training pipelines pass theirs).
            torchvision's loader has already converted every image to RGB.

    Items are ``(image, label)``, image float32 (3, img_size, img_size) in [0, 1] with the default transform.

    Raises:
        DatasetNotFoundError: the split folder is missing or holds no class folders with images.
    """
    from torchvision import datasets, transforms

    base = Path(root).expanduser() if root is not None else default_root() / "imagefolder"
    folder = base / split
    if split == "test" and not folder.is_dir() and (base / "val").is_dir():
        folder = base / "val"
    layout = f"{base.resolve()}/{split}/<class name>/<image>.jpg"
    if not folder.is_dir():
        raise DatasetNotFoundError(f"imagefolder split {split!r} not found: expected images at {layout} "
                                   f"(one subfolder per class; set --data-root or $REFINER_DATA/imagefolder)")
    if transform is None:
        transform = transforms.Compose([
            transforms.Resize(int(round(img_size / 0.875)), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
        ])
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as error:  # no class folders, or class folders without images
        raise DatasetNotFoundError(f"imagefolder at {folder.resolve()} holds no images ({error}); "
                                   f"expected {layout}") from None


def image_folder_classes(root: Optional[os.PathLike] = None) -> Tuple[str, ...]:
    """Class names (sorted subfolder names) of an image folder's train split, else its val split; () if neither."""
    base = Path(root).expanduser() if root is not None else default_root() / "imagefolder"
    for split in ("train", "val"):
        if (base / split).is_dir():
            return tuple(sorted(entry.name for entry in (base / split).iterdir() if entry.is_dir()))
    return ()
