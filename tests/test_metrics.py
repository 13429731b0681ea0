"""Tests of ltjax.metrics against float64 numpy transcriptions of the paper formulas."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import longtail, metrics, samplers

SEEDS = (0, 1, 2)
K = 7
B = 301


def random_problem(seed: int, num_classes: int = K, batch: int = B):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, num_classes)).astype(np.float32)
  # Leave class num_classes - 1 out of the test set to exercise the nan path.
  labels = rng.integers(0, num_classes - 1, size=batch)
  return logits, labels


# ----------------------------------------------------------------------- references

def ref_topk(logits, labels, k):
  order = np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]
  return np.mean([labels[i] in order[i] for i in range(len(labels))])


def ref_per_class(predictions, labels, num_classes):
  out = np.full(num_classes, np.nan)
  for c in range(num_classes):
    mask = labels == c
    if mask.any():
      out[c] = np.mean(predictions[mask] == c)
  return out


def ref_group(per_class, train_counts, test_counts):
  out = {}
  for name, members in (("many", train_counts > 100),
                        ("medium", (train_counts >= 20) & (train_counts <= 100)),
                        ("few", train_counts < 20)):
    members = members & (test_counts > 0)
    w = test_counts[members].astype(np.float64)
    out[name] = np.sum(w * per_class[members]) / w.sum() if w.sum() else np.nan
  return out


def ref_margins(logits, labels):
  z = logits.astype(np.float64)
  return np.array([z[i, y] - np.delete(z[i], y).max() for i, y in enumerate(labels)])


def ref_margin_gap(class_margin, counts):
  n = counts.astype(np.float64)
  major = n > n.sum() / len(n)
  mean = lambda m: np.sum(n[m] * class_margin[m]) / np.sum(n[m])
  return mean(major) - mean(~major)


def ref_occurrence(labels_a, labels_b, lam, num_classes):
  lam = np.broadcast_to(np.asarray(lam, np.float64), labels_a.shape)
  volume = np.zeros(num_classes)
  np.add.at(volume, labels_a, lam)
  np.add.at(volume, labels_b, 1.0 - lam)
  return volume / volume.sum()


# ---------------------------------------------------------------------- accuracies

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_accuracy(seed, k):
  logits, labels = random_problem(seed)
  got = metrics.topk_accuracy(logits, labels, k)
  np.testing.assert_allclose(got, ref_topk(logits, labels, k), atol=1e-6)


def test_topk_ties_go_to_lower_index():
  rng = np.random.default_rng(4)
  logits = rng.integers(0, 3, size=(200, 6)).astype(np.float32)
  labels = rng.integers(0, 6, size=200)
  for k in (1, 2, 4):
    np.testing.assert_allclose(metrics.topk_accuracy(logits, labels, k),
                               ref_topk(logits, labels, k), atol=1e-6)
  np.testing.assert_allclose(metrics.topk_accuracy(logits, labels, 1),
                             np.mean(np.argmax(logits, 1) == labels), atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_per_class_accuracy(seed):
  logits, labels = random_problem(seed)
  expected = ref_per_class(np.argmax(logits, 1), labels, K)
  np.testing.assert_allclose(metrics.per_class_accuracy(logits, labels, K), expected,
                             atol=1e-6)
  np.testing.assert_allclose(metrics.per_class_accuracy(np.argmax(logits, 1), labels, K),
                             expected, atol=1e-6)
  assert np.isnan(expected[-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_group_accuracy(seed):
  logits, labels = random_problem(seed)
  train_counts = np.array([500, 150, 101, 100, 20, 19, 3])
  per_class = ref_per_class(np.argmax(logits, 1), labels, K)
  test_counts = np.bincount(labels, minlength=K)
  got = metrics.group_accuracy(per_class, train_counts, test_counts)
  for name, value in ref_group(per_class, train_counts, test_counts).items():
    np.testing.assert_allclose(got[name], value, atol=1e-6)


def test_group_accuracy_empty_group_is_nan():
  got = metrics.group_accuracy(np.array([1.0, 0.5]), np.array([500, 200]), np.array([10, 10]))
  assert float(got["many"]) == pytest.approx(0.75)
  assert np.isnan(got["medium"]) and np.isnan(got["few"])


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_matrix(seed):
  logits, labels = random_problem(seed)
  predictions = np.argmax(logits, 1)
  expected = np.zeros((K, K), np.int64)
  np.add.at(expected, (labels, predictions), 1)
  got = metrics.confusion_matrix(labels, predictions, K)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------- margins

@pytest.mark.parametrize("seed", SEEDS)
def test_margins_and_per_class_margins(seed):
  logits, labels = random_problem(seed)
  expected = ref_margins(logits, labels)
  got = metrics.margins(logits, labels)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert np.all((np.asarray(got) > 0) == (np.argmax(logits, 1) == labels))
  class_expected = np.array([expected[labels == c].mean() if (labels == c).any() else np.nan
                             for c in range(K)])
  np.testing.assert_allclose(metrics.per_class_margins(got, labels, K), class_expected,
                             atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_margin_gap_matches_reference(seed):
  rng = np.random.default_rng(seed)
  class_margin = rng.normal(size=K)
  counts = longtail.exponential_counts(500, K, 50)
  np.testing.assert_allclose(metrics.margin_gap(class_margin, counts),
                             ref_margin_gap(class_margin, counts), atol=1e-5)


def test_margin_gap_sign_on_constructed_example():
  # Class 0 is the only majority class (100 > 120 / 3). Its samples get margin 3, the
  # minority samples margin 0.5: gap = 3 - 0.5. Swapping the margins flips the sign.
  train_counts = np.array([100, 10, 10])
  labels = np.array([0, 0, 1, 1, 2, 2])
  own = np.array([3.0, 3.0, 0.5, 0.5, 0.5, 0.5])
  logits = np.zeros((6, 3), np.float32)
  logits[np.arange(6), labels] = own

  def gap(logits):
    m = metrics.margins(logits, labels)
    return float(metrics.margin_gap(metrics.per_class_margins(m, labels, 3), train_counts))

  assert gap(logits) == pytest.approx(2.5)
  swapped = np.zeros_like(logits)
  swapped[np.arange(6), labels] = 3.5 - own
  assert gap(swapped) == pytest.approx(-2.5)


def test_margin_gap_balanced_is_nan():
  assert np.isnan(metrics.margin_gap(np.array([1.0, 2.0]), np.array([10, 10])))


# ---------------------------------------------------------------- label occurrence

@pytest.mark.parametrize("seed", SEEDS)
def test_label_occurrence_matches_reference(seed):
  rng = np.random.default_rng(seed)
  labels_a, labels_b = rng.integers(0, K, size=(2, B))
  lam = rng.uniform(size=B)
  expected = ref_occurrence(labels_a, labels_b, lam, K)
  got = metrics.label_occurrence(labels_a, labels_b, lam, K)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  np.testing.assert_allclose(metrics.label_occurrence(labels_a, labels_b, 0.3, K),
                             ref_occurrence(labels_a, labels_b, 0.3, K), atol=1e-6)
  np.testing.assert_allclose(metrics.occurrence_imbalance(expected),
                             expected.max() / expected.min(), rtol=1e-5)


def occurrence_ratio(sampler_a: str, sampler_b: str, counts: np.ndarray,
                     num_pairs: int = 200_000) -> float:
  labels = np.repeat(np.arange(len(counts)), counts)
  index = samplers.build_class_index(labels, len(counts))
  key_a, key_b, key_lam = jax.random.split(jax.random.key(2023), 3)
  idx_a = samplers.draw_indices(key_a, index, samplers.class_probs(sampler_a, counts),
                                num_pairs)
  idx_b = samplers.draw_indices(key_b, index, samplers.class_probs(sampler_b, counts),
                                num_pairs)
  lam = jax.random.beta(key_lam, 1.0, 1.0, (num_pairs,))
  gamma = metrics.label_occurrence(labels[np.asarray(idx_a)], labels[np.asarray(idx_b)],
                                   lam, len(counts))
  return float(metrics.occurrence_imbalance(gamma))


def test_label_occurrence_ratio_lobm_ablation():
  """LOBM Fig. 3 on CIFAR-10-LT rho=10: IB+IB 9.91, IB+CB 3.16, CB+CB 1.10."""
  counts = longtail.exponential_counts(5000, 10, 10)
  p = counts / counts.sum()
  # Closed forms with E[lam] = 1/2: gamma_k = (p_a(k) + p_b(k)) / 2, p_CB = 1/10.
  closed = {("class_balanced", "class_balanced"): 1.0,
            ("instance", "instance"): p.max() / p.min(),
            ("instance", "class_balanced"): (p.max() / 2 + 0.05) / (p.min() / 2 + 0.05)}
  for (a, b), want in closed.items():
    assert occurrence_ratio(a, b, counts) == pytest.approx(want, rel=0.05), (a, b)


# ------------------------------------------------------------------- jit and dicts

def test_jit_matches_eager():
  logits, labels = random_problem(5)
  predictions = np.argmax(logits, 1)
  lam = np.random.default_rng(5).uniform(size=B).astype(np.float32)
  counts = longtail.exponential_counts(500, K, 50)
  cases = [
      (lambda z, y: metrics.topk_accuracy(z, y, 3), (logits, labels)),
      (lambda z, y: metrics.per_class_accuracy(z, y, K), (logits, labels)),
      (lambda y, p: metrics.confusion_matrix(y, p, K), (labels, predictions)),
      (metrics.margins, (logits, labels)),
      (lambda m, y: metrics.per_class_margins(m, y, K), (ref_margins(logits, labels), labels)),
      (lambda a, b, l: metrics.label_occurrence(a, b, l, K), (labels, predictions, lam)),
      (metrics.margin_gap, (np.arange(K, dtype=np.float32), counts)),
      (metrics.occurrence_imbalance, (lam,)),
  ]
  for fn, args in cases:
    np.testing.assert_allclose(fn(*args), jax.jit(fn)(*args), rtol=1e-6)


def test_evaluate_logits():
  logits, labels = random_problem(9, num_classes=10, batch=500)
  train_counts = longtail.exponential_counts(1000, 10, 100)  # 5 many, 3 medium, 2 few
  result = metrics.evaluate_logits(logits, labels, train_counts)
  assert set(result) == {"top1", "top5", "per_class", "many", "medium", "few", "confusion"}
  per_class = ref_per_class(np.argmax(logits, 1), labels, 10)
  assert result["top1"] == pytest.approx(ref_topk(logits, labels, 1), abs=1e-6)
  assert result["top5"] == pytest.approx(ref_topk(logits, labels, 5), abs=1e-6)
  np.testing.assert_allclose(result["per_class"], per_class, atol=1e-6)
  groups = ref_group(per_class, train_counts, np.bincount(labels, minlength=10))
  for name in longtail.GROUP_NAMES:
    assert not np.isnan(groups[name])
    assert result[name] == pytest.approx(groups[name], abs=1e-6)
  assert np.sum(result["confusion"]) == 500
  assert all(isinstance(result[k], float) for k in ("top1", "top5", "many"))
  assert isinstance(result["per_class"][0], float)
  assert isinstance(result["confusion"][0][0], int)
  json.dumps(result)


def test_evaluate_logits_few_classes_top5():
  logits = np.array([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]], np.float32)
  result = metrics.evaluate_logits(logits, np.array([1, 2]), np.array([300, 50, 5]))
  assert result["top1"] == 0.5 and result["top5"] == 1.0


def test_errors():
  logits, labels = random_problem(0)
  with pytest.raises(ValueError, match="k must"):
    metrics.topk_accuracy(logits, labels, K + 1)
  with pytest.raises(ValueError, match="batch dimension"):
    metrics.topk_accuracy(logits, labels[:-1])
  with pytest.raises(ValueError, match="out of range"):
    metrics.margins(logits, np.full(B, K))
  with pytest.raises(ValueError, match="at least 2"):
    metrics.margins(logits[:, :1], np.zeros(B, np.int64))
  with pytest.raises(ValueError, match="lam"):
    metrics.label_occurrence(labels, labels, 1.5, K)
  with pytest.raises(ValueError, match="integer"):
    metrics.per_class_accuracy(np.zeros(B), labels, K)
  with pytest.raises(ValueError, match="train_counts"):
    metrics.evaluate_logits(logits, labels, np.ones(K + 1, np.int64))
