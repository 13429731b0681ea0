"""Long-tailed subsets of balanced datasets, and the many / medium / few class groups.

Profiles (Cui et al. 2019; Cao et al. 2019, LDAM; used by every paper in SPEC section 1):

- exponential: n_i = floor(n_max * rho ** (-i / (K - 1))), i = 0..K-1.
  CIFAR-10, rho=100 -> [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] (12,406 images);
  CIFAR-100, rho=100 -> 10,847 images.
- step: the last round(mu * K) classes are minority with floor(n_max / rho) images, the
  others keep n_max.
- pareto: n_i = floor(n_max * (i + 1) ** (-a)), a = ln(rho) / ln(K), a power (Pareto /
  Zipf) law with n_{K-1} = n_max / rho before the floor (LOBM sec. 4.1, ESC-50-LT: "sample
  the rest of examples following Pareto distribution"; with n_max = 32, K = 50, rho = 10
  the counts run from 32 to 3).

The images kept in each class come from a seeded per-class shuffle (the first n_i of it).
The shuffle of class k depends only on (seed, k), so with one seed the subset for rho=100 is
contained in the subset for rho=10. Everything here runs on the host (numpy).
"""

from __future__ import annotations

import math

import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks

PROFILES = ("exp", "step", "pareto")
GROUP_NAMES = ("many", "medium", "few")

# Relative tolerance under which a count that is an integer in exact arithmetic but lands
# just below it in floating point (e.g. 192 * 64 ** (-5/6) = 5.999...) is rounded up.
_FLOOR_RTOL = 1e-9


def _check_profile_args(n_max: int, num_classes: int, rho: float) -> None:
  if int(n_max) != n_max or n_max < 1:
    raise ValueError(f"n_max must be a positive integer, got {n_max}.")
  if int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
  if not math.isfinite(rho) or rho < 1:
    raise ValueError(f"rho (imbalance ratio n_max / n_min) must be a finite number >= 1, "
                     f"got {rho}.")


def _exact_floor(values: np.ndarray) -> np.ndarray:
  """floor(x) that returns the integer when x is one up to float64 rounding error."""
  nearest = np.round(values)
  close = np.abs(values - nearest) <= _FLOOR_RTOL * np.maximum(1.0, np.abs(values))
  return np.where(close, nearest, np.floor(values)).astype(np.int64)


def exponential_counts(n_max: int, num_classes: int, rho: float) -> np.ndarray:
  """Exponential long-tailed profile: n_i = floor(n_max * rho ** (-i / (K - 1))).

  Args:
    n_max: images of the largest (first) class.
    num_classes: K.
    rho: imbalance ratio n_max / n_min, >= 1.

  Returns:
    (K,) int64 counts, non-increasing, counts[0] == n_max.

  Raises:
    ValueError: rho < 1 (or not finite), n_max or num_classes not a positive integer.
  """
  _check_profile_args(n_max, num_classes, rho)
  if num_classes == 1:
    return np.array([n_max], np.int64)
  exponents = np.arange(num_classes, dtype=np.float64) / (num_classes - 1)
  return _exact_floor(n_max * float(rho) ** (-exponents))


def _num_minority(num_classes: int, mu: float) -> int:
  """round(mu * K), halves rounded up."""
  return int(math.floor(mu * num_classes + 0.5))


def step_counts(n_max: int, num_classes: int, rho: float, mu: float = 0.5) -> np.ndarray:
  """Step profile: the last round(mu * K) classes get floor(n_max / rho), the rest n_max.

  Args:
    n_max: images of a majority class.
    num_classes: K.
    rho: imbalance ratio, >= 1.
    mu: fraction of minority classes in [0, 1] (round(mu * K) classes, halves rounded up).

  Returns:
    (K,) int64 counts.
  """
  _check_profile_args(n_max, num_classes, rho)
  _checks.check_in_range(mu, "mu", 0.0, 1.0)
  counts = np.full(num_classes, n_max, np.int64)
  minority = _num_minority(num_classes, mu)
  counts[num_classes - minority:] = _exact_floor(np.array(n_max / float(rho)))
  return counts


def pareto_counts(n_max: int, num_classes: int, rho: float) -> np.ndarray:
  """Power-law (Pareto) profile: n_i = floor(n_max * (i + 1) ** (-ln(rho) / ln(K))).

  The exponent puts the last class at n_max / rho before the floor (ESC-50-LT, LOBM sec.
  4.1). Returns (K,) int64 non-increasing counts, counts[0] == n_max.
  """
  _check_profile_args(n_max, num_classes, rho)
  if num_classes == 1:
    return np.array([n_max], np.int64)
  exponent = math.log(float(rho)) / math.log(num_classes)
  return _exact_floor(n_max * np.arange(1, num_classes + 1, dtype=np.float64) ** -exponent)


def longtail_counts(profile: str, n_max: int, num_classes: int, rho: float,
                    mu: float = 0.5) -> np.ndarray:
  """Counts of the profile called `profile` ("exp", "step" or "pareto"); `mu` is used by
  "step"."""
  if profile == "exp":
    return exponential_counts(n_max, num_classes, rho)
  if profile == "pareto":
    return pareto_counts(n_max, num_classes, rho)
  if profile == "step":
    return step_counts(n_max, num_classes, rho, mu)
  raise ValueError(f"Unknown imbalance profile {profile!r}; valid: {', '.join(PROFILES)}.")


def class_counts(labels: ArrayLike, num_classes: int) -> np.ndarray:
  """(K,) int64 number of samples of each class."""
  labels = np.asarray(labels)
  _checks.check_labels(labels, num_classes)
  return np.bincount(labels.reshape(-1), minlength=num_classes).astype(np.int64)


def subsample(labels: ArrayLike, counts: ArrayLike, seed: int) -> np.ndarray:
  """Indices of a long-tailed subset: the first counts[k] of a seeded shuffle of class k.

  The shuffle of class k is drawn from `np.random.default_rng([seed, k])`, so it depends
  only on (seed, k): a subset with smaller counts (larger rho) is contained in one with
  larger counts for the same seed.

  Args:
    labels: (N,) integer labels of the balanced dataset.
    counts: (K,) number of images to keep per class (0 allowed).
    seed: non-negative integer; part of the experiment config.

  Returns:
    Sorted (sum(counts),) int64 indices into `labels`.

  Raises:
    ValueError: labels out of range, negative or all-zero counts, a class with fewer
      images than requested, or a negative seed.
  """
  labels = np.asarray(labels)
  counts = np.asarray(counts)
  _checks.check_counts(counts, "counts", allow_empty=True)
  if not counts.any():
    raise ValueError("counts are all zero: the long-tailed subset would be empty; keep at "
                     "least one image of some class.")
  _checks.check_labels(labels, counts.shape[0])
  if int(seed) != seed or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed}.")
  available = np.bincount(labels, minlength=counts.shape[0])
  short = np.flatnonzero(counts > available)
  if short.size:
    raise ValueError(f"counts exceed the images available in classes {short.tolist()}: "
                     f"asked {counts[short].tolist()}, have {available[short].tolist()}.")
  kept = [np.random.default_rng([int(seed), k]).permutation(np.flatnonzero(labels == k))[:n]
          for k, n in enumerate(counts.tolist())]
  return np.sort(np.concatenate(kept)).astype(np.int64)


def group_of_classes(counts: ArrayLike, many: int = 100, few: int = 20) -> np.ndarray:
  """Many / medium / few group of each class from its training count (SPEC section 1).

  Returns:
    (K,) int64: 0 ("many") if n_k > many, 1 ("medium") if few <= n_k <= many,
    2 ("few") if n_k < few; names in GROUP_NAMES.
  """
  counts = np.asarray(counts)
  _checks.check_counts(counts, "train_counts", allow_empty=True)
  if few > many:
    raise ValueError(f"few ({few}) must be <= many ({many}).")
  return np.where(counts > many, 0, np.where(counts >= few, 1, 2)).astype(np.int64)
