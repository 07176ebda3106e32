"""Dataset-level statistics: streaming sums, bootstrap intervals, paired tests, the batched pipeline."""

import numpy as np
import pytest
import torch

import refiner
from analysis.attention_metrics import MetricSettings
from analysis.dataset import (MetricAccumulator, align_curves, analyze_dataset, bootstrap_interval,
                              paired_comparison, per_image_curve, sign_flip_p_value)


def test_accumulator_means_and_curves() -> None:
    acc = MetricAccumulator()
    acc.add({"distance_px": np.array([[1.0, 3.0], [5.0, 7.0]]), "rollout": np.eye(3)})
    acc.add({"distance_px": np.array([[3.0, 5.0], [7.0, 9.0]]), "rollout": np.eye(3)})
    np.testing.assert_allclose(acc.mean("distance_px"), [[2, 4], [6, 8]])
    np.testing.assert_allclose(acc.std("distance_px"), np.ones((2, 2)))
    np.testing.assert_allclose(acc.curve_matrix("distance_px"), [[2, 6], [4, 8]])  # heads averaged
    assert "rollout" not in acc.sums and acc.images == 2  # maps are never accumulated


def test_similarity_curve_excludes_the_diagonal() -> None:
    matrix = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    np.testing.assert_allclose(per_image_curve("similarity", matrix), [0.3, 0.4, 0.2])


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(2.0, 1.0, (30, 2)), rng.normal(2.0, 1.0, (1000, 2))
    a, b = bootstrap_interval(small, n_boot=500), bootstrap_interval(large, n_boot=500)
    assert (a.low < a.mean).all() and (a.mean < a.high).all()
    assert ((b.high - b.low) < (a.high - a.low)).all()
    # The normal-theory width for n = 1000 is 2 * 1.96 / sqrt(1000) = 0.124.
    np.testing.assert_allclose(b.high - b.low, 0.124, atol=0.02)
    constant = bootstrap_interval(np.full((10, 1), 3.0), n_boot=50)
    np.testing.assert_allclose([constant.low, constant.high], [[3.0], [3.0]])


def test_paired_tests_detect_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, (200, 1))
    shifted = paired_comparison(base, base + 0.3 + 0.1 * rng.normal(size=(200, 1)), n_boot=500,
                                n_permutations=999)
    assert shifted.p_value[0] == pytest.approx(2 / 1000)  # twice the smallest one-sided p-value, 1 / 1000
    assert shifted.difference.low[0] > 0.25 and shifted.difference.high[0] < 0.35
    noise = sign_flip_p_value(rng.normal(0.0, 1.0, (200, 1)), n_permutations=999)
    assert noise[0] > 0.05
    with pytest.raises(ValueError, match="same shape"):
        paired_comparison(np.zeros((3, 2)), np.zeros((3, 4)))


def test_align_curves_uses_relative_depth() -> None:
    a, b = align_curves(np.array([[1.0, 2.0]]), np.array([[0.0, 1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(a, [[1.0, 2.0]])
    np.testing.assert_allclose(b, [[1.0, 3.0]])  # layers at relative depth 0.5 and 1.0


def test_analyze_dataset_streams_batches_of_two_models() -> None:
    models = {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
              "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.tensor([[0, 0, 16, 16]] * 4))
               for _ in range(3)]
    result = analyze_dataset(models, batches, MetricSettings(), max_images=10)
    assert result.images == 10
    assert result.accumulators["refined"].curve_matrix("head_diversity").shape == (10, 4)
    assert result.accumulators["vanilla"].mean("cls_in_box").shape == (4, 4)
    assert set(result.cka) == {"vanilla", "refined", "vanilla|refined"}
    np.testing.assert_allclose(np.diagonal(result.cka["vanilla"]), 1.0)
    assert 0 <= result.accuracy("vanilla") <= 1
    comparison = result.compare("vanilla", "refined", "distance_px", n_boot=100, n_permutations=99)
    assert comparison.difference.mean.shape == (4,)
    overall = result.compare("vanilla", "refined", "head_js", overall=True, n_boot=100, n_permutations=99)
    assert overall.p_value.shape == (1,)


def test_a_map_budget_splits_batches_without_changing_any_statistic(monkeypatch) -> None:
    import analysis.per_image as per_image

    torch.manual_seed(0)
    models = {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
              "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}
    batches = [(torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,)), torch.tensor([[4, 4, 20, 28]] * 6))
               for _ in range(2)]
    passes: list = []
    real = per_image.run_with_capture
    monkeypatch.setattr("analysis.dataset.run_with_capture",
                        lambda model, images, kinds: passes.append(len(images)) or real(model, images, kinds))
    whole = analyze_dataset(models, batches, MetricSettings())
    assert passes == [1, 5, 1, 5, 6, 6]  # one image first, then the rest of the batch (fits in 1 GiB)
    passes.clear()
    one_map = 4 * 4 * 65 * 65 * 4  # one image's effective maps: L x H x N x N float32
    chunked = analyze_dataset(models, batches, MetricSettings(), map_budget_bytes=2 * one_map)
    assert passes == [1, 2, 2, 1] + [1, 2, 2, 1] + [2, 2, 2] * 2
    for name in models:
        for key in ("head_diversity", "distance_px", "cls_in_box", "similarity"):
            np.testing.assert_allclose(chunked.accumulators[name].mean(key), whole.accumulators[name].mean(key))
        assert chunked.accuracy(name) == whole.accuracy(name)
    for key in whole.cka:
        np.testing.assert_allclose(chunked.cka[key], whole.cka[key], atol=1e-10)


def test_reduction_under_a_single_process_group(tmp_path) -> None:
    import torch.distributed as dist

    acc = MetricAccumulator()
    acc.add({"head_js": np.array([0.2, 0.4])})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        acc.reduce_across_processes()
    finally:
        dist.destroy_process_group()
    np.testing.assert_allclose(acc.mean("head_js"), [0.2, 0.4])
    assert acc.images == 1 and acc.curve_matrix("head_js").shape == (1, 2)


def _rank_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        acc = MetricAccumulator()
        for image in range(rank + 1):  # rank 0 sees one image, rank 1 two
            acc.add({"head_js": np.array([rank, 10.0 + image])})
        acc.reduce_across_processes()
        if rank == 0:
            np.savez(out, mean=acc.mean("head_js"), curves=acc.curve_matrix("head_js"), images=acc.images)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_reduction_sums_and_gathers_in_rank_order(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.npz"
    mp.spawn(_rank_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    result = np.load(out)
    assert int(result["images"]) == 3
    np.testing.assert_allclose(result["curves"], [[0, 10], [1, 10], [1, 11]])
    np.testing.assert_allclose(result["mean"], [2 / 3, 31 / 3])


def test_dataset_cka_of_tuple_returning_blocks_and_models_without_a_class_token() -> None:
    # The official Refiner-ViT's blocks return (x, attn); a register model's first prefix token is no CLS.
    torch.manual_seed(0)
    models = {"official": refiner.create_model("refiner_vit_s", depth=2, img_size=32, num_classes=10).eval(),
              "registers": refiner.load_model("random:vit_betwixt_patch16_reg4_gap_256?img_size=32").model}
    batches = [torch.rand(4, 3, 32, 32)]
    result = analyze_dataset(models, batches, MetricSettings())
    assert result.images == 4 and {"official", "registers"} <= set(result.cka)
    np.testing.assert_allclose(np.diagonal(result.cka["registers"]), 1.0)
    assert "cls_entropy" not in result.accumulators["registers"].sums
