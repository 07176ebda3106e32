"""Datasets: offline digits (`mnist`, `cluttered-mnist`) and local folders (`cifar10`, `cifar100`, `imagefolder`).

Use `build_dataset(name, split, root=None, **options)` and `dataset_info(name, **options)`.
"""

from .cluttered_mnist import ClutteredMNIST, ClutteredMNISTOptions, canvas_options_for
from .folders import DatasetNotFoundError, default_root
from .mnist import MNIST, mnist_split
from .registry import DatasetInfo, build_dataset, canonical_name, dataset_info, list_datasets

__all__ = ["ClutteredMNIST", "ClutteredMNISTOptions", "DatasetInfo", "DatasetNotFoundError", "MNIST",
           "build_dataset", "canonical_name", "canvas_options_for", "dataset_info", "default_root", "list_datasets", "mnist_split"]
