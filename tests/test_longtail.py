"""Tests of ltjax.longtail against the published CIFAR-LT counts (Cao et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from ltjax import longtail

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
  """Labels of a balanced dataset in a shuffled order (like the CIFAR training files)."""
  labels = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(123).permutation(labels)


def test_cifar10_exponential_counts_exact():
  counts = longtail.exponential_counts(5000, 10, 100)
  assert counts.tolist() == CIFAR10_LT_100
  assert counts.sum() == 12406
  assert counts.dtype == np.int64


def test_cifar100_exponential_counts_and_groups():
  counts = longtail.exponential_counts(500, 100, 100)
  assert counts.sum() == 10847
  assert counts[0] == 500 and counts[-1] == 5
  assert np.all(np.diff(counts) <= 0)
  groups = longtail.group_of_classes(counts)
  assert np.bincount(groups, minlength=3).tolist() == [35, 35, 30]


def test_exponential_counts_match_reference_loop():
  # The LDAM-DRW reference loop: int(n_max * (1/rho) ** (i / (K - 1))).
  for n_max, k, rho in [(5000, 10, 10), (500, 100, 10), (5000, 10, 50), (500, 100, 200)]:
    reference = [int(n_max * (1.0 / rho) ** (i / (k - 1.0))) for i in range(k)]
    assert longtail.exponential_counts(n_max, k, rho).tolist() == reference


def test_exponential_counts_exact_when_float_rounds_down():
  # 192 * 64 ** (-5/6) = 192 / 32 = 6 exactly, but float64 gives 5.999999999999999.
  counts = longtail.exponential_counts(192, 7, 64)
  assert counts.tolist() == [192, 96, 48, 24, 12, 6, 3]


def test_exponential_edge_cases():
  assert longtail.exponential_counts(50, 4, 1).tolist() == [50] * 4
  assert longtail.exponential_counts(50, 1, 10).tolist() == [50]


def test_step_counts():
  assert longtail.step_counts(5000, 10, 100).tolist() == [5000] * 5 + [50] * 5
  assert longtail.step_counts(500, 100, 10).tolist() == [500] * 50 + [50] * 50
  assert longtail.step_counts(100, 5, 3, mu=0.5).tolist() == [100, 100, 33, 33, 33]
  assert longtail.step_counts(100, 4, 10, mu=0.25).tolist() == [100, 100, 100, 10]
  assert longtail.step_counts(100, 4, 10, mu=0.0).tolist() == [100] * 4


def test_longtail_counts_dispatch():
  assert longtail.longtail_counts("exp", 5000, 10, 100).tolist() == CIFAR10_LT_100
  assert longtail.longtail_counts("step", 10, 4, 5, mu=0.5).tolist() == [10, 10, 2, 2]
  with pytest.raises(ValueError, match="profile"):
    longtail.longtail_counts("zipf", 10, 4, 5)


@pytest.mark.parametrize("fn", [longtail.exponential_counts, longtail.step_counts])
def test_rho_below_one_raises(fn):
  with pytest.raises(ValueError, match="rho"):
    fn(5000, 10, 0.5)
  with pytest.raises(ValueError, match="rho"):
    fn(5000, 10, float("inf"))


def test_bad_profile_arguments_raise():
  with pytest.raises(ValueError, match="n_max"):
    longtail.exponential_counts(0, 10, 10)
  with pytest.raises(ValueError, match="num_classes"):
    longtail.exponential_counts(10, 0, 10)
  with pytest.raises(ValueError, match="mu"):
    longtail.step_counts(10, 4, 10, mu=1.5)


def test_class_counts():
  labels = np.array([0, 2, 2, 1, 2, 0])
  assert longtail.class_counts(labels, 4).tolist() == [2, 1, 3, 0]
  with pytest.raises(ValueError, match="out of range"):
    longtail.class_counts(np.array([0, 4]), 4)


def test_subsample_counts_and_determinism():
  labels = balanced_labels(10, 5000)
  counts = longtail.exponential_counts(5000, 10, 100)
  kept = longtail.subsample(labels, counts, seed=0)
  assert np.all(np.diff(kept) > 0)
  assert np.bincount(labels[kept], minlength=10).tolist() == CIFAR10_LT_100
  np.testing.assert_array_equal(kept, longtail.subsample(labels, counts, seed=0))
  other = longtail.subsample(labels, counts, seed=1)
  assert not np.array_equal(kept, other)
  # Different seeds pick different images but the same per-class counts.
  assert np.bincount(labels[other], minlength=10).tolist() == CIFAR10_LT_100


def test_subsample_nested_across_rho():
  labels = balanced_labels(10, 5000)
  for seed in (0, 7):
    kept_100 = longtail.subsample(labels, longtail.exponential_counts(5000, 10, 100), seed)
    kept_10 = longtail.subsample(labels, longtail.exponential_counts(5000, 10, 10), seed)
    assert np.isin(kept_100, kept_10).all()
    assert kept_10.size == 20431


def test_subsample_is_uniform_within_class():
  # Keeping 1 of 4 images over many seeds: each image is kept with probability 1/4.
  labels = np.zeros(4, np.int64)
  hits = np.zeros(4)
  for seed in range(2000):
    hits[longtail.subsample(labels, [1], seed)] += 1
  assert np.all(np.abs(hits / 2000 - 0.25) < 0.04)


def test_subsample_errors():
  labels = np.array([0, 0, 1])
  with pytest.raises(ValueError, match="exceed"):
    longtail.subsample(labels, [1, 2], seed=0)
  with pytest.raises(ValueError, match="non-negative"):
    longtail.subsample(labels, [1, -1], seed=0)
  with pytest.raises(ValueError, match="out of range"):
    longtail.subsample(np.array([0, 3]), [1, 1], seed=0)
  with pytest.raises(ValueError, match="seed"):
    longtail.subsample(labels, [1, 1], seed=-1)


def test_group_of_classes_boundaries():
  counts = np.array([101, 100, 20, 19, 0])
  assert longtail.group_of_classes(counts).tolist() == [0, 1, 1, 2, 2]
  assert longtail.GROUP_NAMES == ("many", "medium", "few")
  with pytest.raises(ValueError, match="few"):
    longtail.group_of_classes(counts, many=10, few=20)
