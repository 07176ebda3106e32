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


def _multinomial_bootstrap_interval(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95):
    """The percentile bootstrap this project computed before scipy (multinomial resampling counts), as the
    reference the scipy-based one must agree with."""
    n = len(values)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    replicates = counts @ values / n
    return np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2], axis=0)


def test_bootstrap_interval_is_scipys_percentile_bootstrap() -> None:
    from scipy import stats

    values = np.random.default_rng(3).gamma(2.0, 1.0, (80, 5))
    ours = bootstrap_interval(values, level=0.9, n_boot=700, seed=11)
    plain = stats.bootstrap((values,), np.mean, n_resamples=700, confidence_level=0.9, method="percentile",
                            axis=0, rng=np.random.default_rng(11)).confidence_interval
    np.testing.assert_array_equal(ours.mean, values.mean(axis=0))
    np.testing.assert_allclose(ours.low, plain.low, rtol=0, atol=1e-12)  # the same resamples, the same interval
    np.testing.assert_allclose(ours.high, plain.high, rtol=0, atol=1e-12)


def test_bootstrap_interval_agrees_with_the_former_resampling_within_monte_carlo_error() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(0.0, 1.0, (300, 4)), rng.exponential(2.0, (300, 4))], axis=1)
    n_boot = 4000
    ours = bootstrap_interval(values, n_boot=n_boot, seed=0)
    low, high = _multinomial_bootstrap_interval(values, n_boot, seed=0)
    np.testing.assert_array_equal(ours.mean, values.mean(axis=0))
    # Standard error of a 2.5% sample quantile of B normal replicates with spread s: 2.67 s / sqrt(B); two
    # independent estimates differ by sqrt(2) of that. Allow 4 of those.
    s = values.std(axis=0, ddof=1) / np.sqrt(len(values))
    tolerance = 4 * np.sqrt(2) * 2.67 * s / np.sqrt(n_boot)
    assert (np.abs(ours.low - low) < tolerance).all() and (np.abs(ours.high - high) < tolerance).all()
    assert ((ours.high - ours.low) > 3.5 * s).all()  # the interval is really about 2 x 1.96 s wide


def test_sign_flip_test_is_scipys_permutation_test() -> None:
    from scipy import stats

    rng = np.random.default_rng(5)
    small = rng.normal(0.3, 1.0, (9, 4))  # 512 patterns <= 1000: every pattern, an exact test
    plain = stats.permutation_test((small,), np.mean, permutation_type="samples", n_resamples=1000, axis=0,
                                   vectorized=True, rng=np.random.default_rng(0)).pvalue
    np.testing.assert_allclose(sign_flip_p_value(small, n_permutations=1000), plain, rtol=0, atol=1e-12)

    # Random patterns: equal within Monte-Carlo error (two-sided p = 2 x one-sided, so its sd is 2 sqrt(q(1-q)/B)).
    large = rng.normal(0.0, 1.0, (60, 6)) + np.linspace(0.0, 0.35, 6)
    b = 4000
    ours = sign_flip_p_value(large, n_permutations=b, seed=2)
    plain = stats.permutation_test((large,), np.mean, permutation_type="samples", n_resamples=b, axis=0,
                                   vectorized=True, rng=np.random.default_rng(3)).pvalue
    q = np.clip(plain / 2, 1 / b, 0.5)
    assert (np.abs(ours - plain) < 4 * np.sqrt(2) * 2 * np.sqrt(q * (1 - q) / b)).all(), (ours, plain)
    assert ours[-1] < 0.05 < ours[0]  # the known answer: the shifted column is detected, the centred one not


def test_one_image_has_no_spread() -> None:
    one = paired_comparison(np.array([[1.0, 2.0]]), np.array([[1.5, np.nan]]), n_boot=100, n_permutations=100)
    np.testing.assert_allclose(one.difference.mean, [0.5, np.nan])
    np.testing.assert_allclose(one.difference.low, [0.5, np.nan])
    np.testing.assert_allclose(one.p_value, [1.0, np.nan])  # both sign patterns reach the observed mean
    assert one.n_permutations == 2 and one.difference.n == 1
    with pytest.raises(ValueError, match="no images"):
        sign_flip_p_value(np.zeros((0, 2)))


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


def test_each_interval_is_computed_once_for_the_figures_and_the_tables(monkeypatch) -> None:
    """Issue 10: the figures and the tables read one `dataset_statistics` (it was 111 bootstrap calls on a 16-image
    run, about 29 of them repeated): one bootstrap per (model, metric) and per paired series (per layer, overall)."""
    import analysis.dataset as dataset
    from analysis.attention_metrics import METRICS
    from analysis.export import dataset_rows
    from analysis.figures import dataset_figures

    torch.manual_seed(0)
    models = {"vanilla": refiner.create_model("vit_micro_patch4_32").eval(),
              "refined": refiner.create_model("refined_vit_micro_patch4_32").eval()}
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)), torch.tensor([[0, 0, 16, 16]] * 4))]
    analysis = analyze_dataset(models, batches, MetricSettings())
    calls: list = []
    real = dataset.bootstrap_interval
    monkeypatch.setattr(dataset, "bootstrap_interval", lambda values, *a, **k: calls.append(1) or real(values, *a, **k))
    statistics = dataset.dataset_statistics(analysis, n_boot=50, n_permutations=50)
    figures, rows = dataset_figures(analysis, statistics), dataset_rows(analysis, statistics)
    keys = statistics.keys
    assert len(keys) >= 10 and "localisation" in figures and "paired_head_diversity" in figures
    scalars = [k for k in keys if METRICS[k].axes == ()]
    assert scalars  # localisation metrics: their mean over layers is the value itself
    # Every (model, metric), and b - a per layer and, for per-layer metrics, overall (111 calls, 73 distinct
    # series, on the 16-image run of the issue; now 73).
    series = len(models) * len(keys) + 2 * len(keys) - len(scalars)
    assert len(calls) == series
    # The table and the figure show the same interval.
    row = next(r for r in rows if r["model"] == "refined" and r["metric"] == "head_diversity" and r["layer"] == 2)
    band = statistics.intervals[("refined", "head_diversity")]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == (band.mean[1], band.low[1], band.high[1])


def test_per_model_inputs_and_progress_callback() -> None:
    """A batch may map each model to its own input (models of different input size); on_progress counts images."""
    torch.manual_seed(0)
    models = {"small": refiner.create_model("vit_micro_patch4_32").eval(),
              "grey": refiner.create_model("vit_mini_patch6_48", in_chans=1).eval()}
    batches = [({"small": torch.rand(1, 3, 32, 32), "grey": torch.rand(1, 1, 48, 48)}, None, None)
               for _ in range(3)]
    done: list = []
    result = analyze_dataset(models, batches, MetricSettings(), on_progress=done.append, max_images=2)
    assert done == [1, 2] and result.images == 2
    assert result.accumulators["grey"].curve_matrix("head_diversity").shape[0] == 2
    assert result.depths["small"] == 4
