"""Datasets: offline digits are deterministic, stratified and boxed; missing folder datasets say where to look."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refiner.data import (ClutteredMNIST, DatasetNotFoundError, build_dataset, canvas_options_for, dataset_info,
                          list_datasets, mnist_split)
from refiner.data.cluttered_mnist import INK_THRESHOLD


def test_mnist_split_sizes_are_stratified_and_disjoint() -> None:
    train_images, train_labels = mnist_split("train")
    test_images, test_labels = mnist_split("test")
    assert train_images.shape == (4000, 28, 28) and test_images.shape == (1000, 28, 28)
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    # No test digit appears among the training digits.
    train_keys = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_keys for image in test_images)


def test_mnist_items_are_unit_range_tensors() -> None:
    dataset = build_dataset("mnist", "test")
    image, label = dataset[5]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.5
    assert 0 <= label < 10 and len(dataset) == 1000


def test_cluttered_mnist_is_deterministic_for_a_seed() -> None:
    first, second = ClutteredMNIST("train", seed=3), ClutteredMNIST("train", seed=3)
    other = ClutteredMNIST("train", seed=4)
    for index in (0, 17, 999):
        a, b, c = first[index], second[index], other[index]
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
        assert not torch.equal(a[0], c[0])
    # A new epoch draws new canvases, and returning to an epoch reproduces it exactly.
    epoch0 = first[7][0]
    first.set_epoch(1)
    assert not torch.equal(first[7][0], epoch0)
    first.set_epoch(0)
    assert torch.equal(first[7][0], epoch0)


def test_cluttered_mnist_test_set_is_fixed_and_balanced() -> None:
    a = ClutteredMNIST("test", seed=0)
    b = ClutteredMNIST("test", seed=123)  # the test set ignores the training seed
    assert len(a) == 1000
    assert all(torch.equal(a[i][0], b[i][0]) for i in (0, 500, 999))
    assert np.bincount([a[i][1] for i in range(100)]).tolist() == [10] * 10


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxes_contain_exactly_the_digit_ink(split: str) -> None:
    clean = ClutteredMNIST(split, fragments=0, canvas_size=48)
    cluttered = ClutteredMNIST(split, fragments=4, canvas_size=48)
    for index in range(0, 200, 7):
        image, _, box = clean[index]
        x0, y0, x1, y1 = box.tolist()
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
        ink = image[0] > INK_THRESHOLD
        outside = ink.clone()
        outside[y0:y1, x0:x1] = False
        assert not outside.any(), "digit ink outside its box"
        # The box is tight: each of its four edges touches ink.
        inside = ink[y0:y1, x0:x1]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        # The same index with clutter has the same digit and box; clutter stays outside the box.
        noisy, _, noisy_box = cluttered[index]
        # Scale and position are drawn before the clutter, so the same index keeps its digit and box.
        assert torch.equal(noisy_box, box)
        nx0, ny0, nx1, ny1 = noisy_box.tolist()
        assert noisy[0, ny0:ny1, nx0:nx1].max() > 0.5


def test_clutter_comes_from_other_digits_of_the_same_split() -> None:
    dataset = ClutteredMNIST("test", fragments=3)
    image, _, box = dataset[3]
    x0, y0, x1, y1 = box.tolist()
    outside = image[0].clone()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() > 0.5, "no clutter drawn"
    assert dataset.digits is mnist_split("test")[0]
    assert ClutteredMNIST("train").digits is mnist_split("train")[0]


def test_registry_metadata_and_name_errors() -> None:
    assert set(list_datasets()) == {"mnist", "cluttered-mnist", "cifar10", "cifar100", "imagefolder"}
    info = dataset_info("cluttered_mnist", canvas_size=64)
    assert (info.num_classes, info.in_chans, info.img_size, info.has_boxes) == (10, 1, 64, True)
    assert len(dataset_info("cifar100").class_names) == 100
    with pytest.raises(ValueError, match="cluttered-mnist"):
        build_dataset("cluttered-mnsit", "train")
    with pytest.raises(ValueError, match="fragments"):
        build_dataset("cluttered-mnist", "train", fragmnets=2)
    with pytest.raises(ValueError, match="does not fit"):
        build_dataset("cluttered-mnist", "train", canvas_size=20, scale_range=(1.0, 2.0))


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_says_where_to_put_it(tmp_path, name: str, folder: str) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        build_dataset(name, "train", root=tmp_path)
    message = str(error.value)
    assert str((tmp_path / folder).resolve()) in message and "download" in message


def test_missing_imagefolder_says_where_to_put_it(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match="<class name>"):
        build_dataset("imagefolder", "train", root=tmp_path)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images"):
        build_dataset("imagefolder", "train", root=tmp_path)


def test_imagefolder_reads_a_local_folder(tmp_path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "val" / cls / "a.png")
    dataset = build_dataset("imagefolder", "val", root=tmp_path, img_size=32)
    image, label = dataset[1]
    assert image.shape == (3, 32, 32) and label == 1
    info = dataset_info("imagefolder", root=tmp_path)
    assert info.class_names == ("cat", "dog") and info.num_classes == 2


def test_max_shift_keeps_the_digit_near_the_centre_and_position_step_snaps() -> None:
    from refiner.data.cluttered_mnist import _position

    centred = ClutteredMNIST("test", canvas_size=48, max_shift=0, fragments=0)
    for index in range(0, 100, 9):
        x0, y0, x1, y1 = centred[index][2].tolist()
        assert abs((x0 + x1) / 2 - 24) <= 1 and abs((y0 + y1) / 2 - 24) <= 1
    shifted = ClutteredMNIST("train", canvas_size=48, max_shift=5, fragments=2)
    for index in range(50):
        x0, y0, x1, y1 = shifted[index][2].tolist()
        assert abs((x0 + x1) / 2 - 24) <= 6 and abs((y0 + y1) / 2 - 24) <= 6
    rng = np.random.default_rng(0)
    draws = {_position(rng, -3, 20, 6) for _ in range(200)}
    assert draws == {0, 6, 12, 18}
    assert _position(rng, 1, 4, 6) in range(1, 5)  # no multiple in range: any pixel


def test_default_geometry_is_the_full_design_task() -> None:
    # DESIGN section 4: a 64 px canvas with the digit anywhere; the shipped configs choose an easier geometry.
    dataset = ClutteredMNIST("test")
    assert dataset.options.canvas_size == 64 and dataset.options.max_shift is None
    image, _, box = dataset[0]
    assert image.shape == (1, 64, 64)
    centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in (dataset[i][2].tolist() for i in range(60))])
    # Anywhere on the canvas: centres spread far more than the shipped geometry's +-4 px.
    assert np.ptp(centres[:, 0]) > 12 and np.ptp(centres[:, 1]) > 12


def test_canvas_options_for_a_model_follow_its_record_or_its_input_size() -> None:
    recorded = {"canvas_size": 48, "scale_range": (1.3, 1.5), "fragments": 2, "fragment_size": 6, "max_shift": 4,
                "position_step": 1, "epoch_size": 8000, "test_size": 1000, "seed": 3}
    options = canvas_options_for({"dataset": "cluttered-mnist", "dataset_options": recorded, "img_size": [48, 48]})
    # The stream's seed and epoch size choose training canvases; they do not shape a test canvas.
    assert "seed" not in options and "epoch_size" not in options
    assert options["scale_range"] == [1.3, 1.5] and options["max_shift"] == 4
    recorded_set = ClutteredMNIST("test", **options)
    same = ClutteredMNIST("test", **{k: v for k, v in recorded.items() if k != "seed"})
    assert torch.equal(recorded_set[7][0], same[7][0])
    # A model not trained on cluttered-mnist: canvases of its input size, the digit scaled down to fit.
    small = canvas_options_for({"img_size": 32})
    assert small["canvas_size"] == 32 and small["scale_range"][1] <= 40 / 28
    image, _, box = ClutteredMNIST("test", **small)[0]
    assert image.shape == (1, 32, 32) and int(box[2]) <= 32 and int(box[3]) <= 32
    # A partial record (only the stream's seed): the model's own input size, not the 64 px default.
    partial = canvas_options_for({"dataset": "cluttered-mnist", "dataset_options": {"seed": 0}, "img_size": 32})
    assert partial == small
    # Options recorded for another dataset say nothing about canvases.
    assert canvas_options_for({"dataset": "mnist", "dataset_options": recorded, "img_size": 32}) == small
