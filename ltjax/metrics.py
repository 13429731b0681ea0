"""Evaluation and analysis metrics for long-tailed classification.

All accuracies are fractions in [0, 1] (multiply by 100 for the percentages of the papers).
The array functions are jit-safe (static `num_classes` / `k`); `evaluate_logits` runs on the
host and returns plain Python values for results files. For test sets too large to hold
their (N, K) logits on the host (iNaturalist: 24k x 8,142), `batch_counts` reduces a batch
to `EvalCounts`, which sum over batches on the device, and `summarize_counts` gives the
same summary as `evaluate_logits` from them.

- top-k and per-class accuracy; many / medium / few accuracy (classes with > 100, 20..100,
  < 20 training images, SPEC section 1); confusion matrix.
- label occurrence ratio (LOBM, Zhang et al. 2023, eq. 3).
- margins, per-class margins and the margin gap (MAMix, Cheng et al., eq. 11, 12, 17).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks
from ltjax import longtail


def _check_logits(logits: ArrayLike, labels: ArrayLike) -> int:
  """Validates (B, K) logits against (B,) labels and returns K."""
  _checks.check_shape(logits, (None, None), "logits")
  _checks.check_shape(labels, (None,), "labels")
  _checks.check_same_leading("logits", logits, "labels", labels)
  num_classes = jnp.shape(logits)[1]
  _checks.check_labels(labels, num_classes)
  return num_classes


def _class_mean(values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Mean of `values` over the samples of each class; nan for a class with no sample."""
  total = jax.ops.segment_sum(values.astype(jnp.float32), labels, num_segments=num_classes)
  count = jnp.bincount(labels, length=num_classes)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int = 1) -> jax.Array:
  """Fraction of samples whose label is among the k largest logits.

  Ties go to the lower class index (as `argmax` and `jax.lax.top_k`).

  Args:
    logits: (B, K).
    labels: (B,) integer labels.
    k: 1 <= k <= K (static).

  Returns:
    float32 scalar in [0, 1].
  """
  num_classes = _check_logits(logits, labels)
  if not 1 <= k <= num_classes:
    raise ValueError(f"k must be in [1, {num_classes}], got {k}.")
  _, top = jax.lax.top_k(jnp.asarray(logits), k)
  hit = (top == jnp.asarray(labels)[:, None]).any(axis=1)
  return hit.astype(jnp.float32).mean()


def _predictions(logits_or_predictions: ArrayLike) -> jax.Array:
  x = jnp.asarray(logits_or_predictions)
  if x.ndim == 2:
    return jnp.argmax(x, axis=1)
  if x.ndim == 1 and jnp.issubdtype(x.dtype, jnp.integer):
    return x
  raise ValueError("expected (B, K) logits or (B,) integer predictions, got shape "
                   f"{x.shape} and dtype {x.dtype}.")


def per_class_accuracy(logits_or_predictions: ArrayLike, labels: ArrayLike,
                       num_classes: int) -> jax.Array:
  """Accuracy on the test samples of each class.

  Args:
    logits_or_predictions: (B, K) logits (argmax taken) or (B,) predicted classes.
    labels: (B,) integer labels.
    num_classes: K (static).

  Returns:
    (K,) float32 in [0, 1]; nan for a class with no test sample.
  """
  predictions = _predictions(logits_or_predictions)
  _checks.check_labels(labels, num_classes)
  _checks.check_same_leading("predictions", predictions, "labels", labels)
  labels = jnp.asarray(labels)
  return _class_mean(predictions == labels, labels, num_classes)


def group_accuracy(per_class_acc: ArrayLike, train_counts: ArrayLike,
                   test_counts: ArrayLike, many: int = 100,
                   few: int = 20) -> dict[str, jax.Array]:
  """Many / medium / few accuracy: test-sample-weighted mean over the classes of a group.

  acc_g = sum_{k in g} t_k acc_k / sum_{k in g} t_k, with t_k test samples of class k
  (the plain class mean on a balanced test set). Groups from `longtail.group_of_classes`.

  Args:
    per_class_acc: (K,) per-class accuracy (nan allowed where t_k = 0).
    train_counts: (K,) training counts (concrete: they define the groups).
    test_counts: (K,) test samples per class.
    many, few: group thresholds.

  Returns:
    dict "many" / "medium" / "few" -> float32 scalar; nan for a group without test samples.
  """
  groups = jnp.asarray(longtail.group_of_classes(train_counts, many, few))
  _checks.check_shape(per_class_acc, groups.shape, "per_class_acc")
  _checks.check_shape(test_counts, groups.shape, "test_counts")
  t = jnp.asarray(test_counts, jnp.float32)
  acc = jnp.where(t > 0, jnp.asarray(per_class_acc, jnp.float32), 0.0)
  result = {}
  for g, name in enumerate(longtail.GROUP_NAMES):
    w = jnp.where(groups == g, t, 0.0)
    result[name] = jnp.where(w.sum() > 0, (w * acc).sum() / jnp.maximum(w.sum(), 1.0),
                             jnp.nan)
  return result


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike,
                     num_classes: int) -> jax.Array:
  """(K, K) int32 counts: entry [i, j] = samples of true class i predicted as j."""
  _checks.check_labels(labels, num_classes)
  _checks.check_labels(predictions, num_classes, "predictions")
  _checks.check_same_leading("labels", labels, "predictions", predictions)
  flat = jnp.asarray(labels) * num_classes + jnp.asarray(predictions)
  return jnp.bincount(flat, length=num_classes * num_classes).reshape(
      num_classes, num_classes).astype(jnp.int32)


def label_occurrence(labels_a: ArrayLike, labels_b: ArrayLike, lam: ArrayLike,
                     num_classes: int) -> jax.Array:
  """Empirical label occurrence ratio of mixed pairs (LOBM, Zhang et al. 2023, eq. 3).

  gamma_k = sum_{i in I(k)} P_i lam_i / sum_{j in A} P_j lam_j over both sides of every pair;
  with pairs actually drawn from the samplers, P_i is the empirical draw frequency, so

    gamma_k = (sum_{b: a_b = k} lam_b + sum_{b: b_b = k} (1 - lam_b)) / B

  for pairs (a_b, b_b) mixed as lam x_a + (1 - lam) x_b. sum_k gamma_k = 1.

  Args:
    labels_a: (B,) labels of the first side (weight lam).
    labels_b: (B,) labels of the second side (weight 1 - lam).
    lam: scalar or (B,) mixing ratios in [0, 1].
    num_classes: K (static).

  Returns:
    (K,) float32 occurrence ratios.
  """
  _checks.check_labels(labels_a, num_classes, "labels_a")
  _checks.check_labels(labels_b, num_classes, "labels_b")
  _checks.check_same_leading("labels_a", labels_a, "labels_b", labels_b)
  _checks.check_in_range(lam, "lam", 0.0, 1.0)
  labels_a = jnp.asarray(labels_a)
  lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), labels_a.shape)
  volume = (jax.ops.segment_sum(lam, labels_a, num_segments=num_classes)
            + jax.ops.segment_sum(1.0 - lam, jnp.asarray(labels_b),
                                  num_segments=num_classes))
  return volume / labels_a.shape[0]


def occurrence_imbalance(gamma: ArrayLike) -> jax.Array:
  """gamma_max / gamma_min of label occurrence ratios (LOBM Fig. 3: 9.91 / 3.16 / 1.10)."""
  gamma = jnp.asarray(gamma, jnp.float32)
  return gamma.max() / gamma.min()


def margins(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Per-sample margin gamma(x, y) = f(x)_y - max_{j != y} f(x)_j (MAMix eq. 11).

  Args:
    logits: (B, K), K >= 2.
    labels: (B,) integer labels.

  Returns:
    (B,) float32 margins (negative for a misclassified sample).
  """
  num_classes = _check_logits(logits, labels)
  if num_classes < 2:
    raise ValueError(f"margins need at least 2 classes, got {num_classes}.")
  logits = jnp.asarray(logits, jnp.float32)
  true_class = jax.nn.one_hot(labels, num_classes, dtype=bool)
  own = jnp.where(true_class, logits, 0.0).sum(axis=1)
  rival = jnp.where(true_class, -jnp.inf, logits).max(axis=1)
  return own - rival


def per_class_margins(margin: ArrayLike, labels: ArrayLike, num_classes: int) -> jax.Array:
  """Class margin gamma_bar_j = mean of the margins of class j's samples (MAMix eq. 12).

  Returns:
    (K,) float32; nan for a class with no sample.
  """
  _checks.check_shape(margin, (None,), "margins")
  _checks.check_labels(labels, num_classes)
  _checks.check_same_leading("margins", margin, "labels", labels)
  return _class_mean(jnp.asarray(margin), jnp.asarray(labels), num_classes)


def margin_gap(per_class_margin: ArrayLike, train_counts: ArrayLike) -> jax.Array:
  """Margin gap of MAMix (eq. 17): n-weighted mean class margin, majority minus minority.

  gamma_gap = sum_{i in maj} n_i gamma_bar_i / sum_{i in maj} n_i
            - sum_{j in min} n_j gamma_bar_j / sum_{j in min} n_j,
  majority: n_k > N / K (more than 1/K of the training set); minority: the rest.
  A positive gap means the majority classes have the larger margins (worse for the tail).

  Returns:
    float32 scalar; nan when there is no majority class (a balanced training set).
  """
  _checks.check_counts(train_counts, "train_counts", allow_empty=True)
  _checks.check_shape(per_class_margin, jnp.shape(train_counts), "per_class_margin")
  n = jnp.asarray(train_counts, jnp.float32)
  m = jnp.asarray(per_class_margin, jnp.float32)
  majority = n > n.sum() / n.shape[0]

  def weighted_mean(mask: jax.Array) -> jax.Array:
    w = jnp.where(mask, n, 0.0)
    return (w * jnp.where(mask, m, 0.0)).sum() / w.sum()

  return weighted_mean(majority) - weighted_mean(~majority)


def evaluate_logits(logits: ArrayLike, labels: ArrayLike,
                    train_counts: ArrayLike) -> dict[str, Any]:
  """Test-set summary for results files (host side, plain Python values).

  Args:
    logits: (B, K) test logits.
    labels: (B,) test labels.
    train_counts: (K,) training counts (define many / medium / few).

  Returns:
    dict with fractions in [0, 1]: "top1", "top5" (top-min(5, K)), "per_class" (list of K;
    nan for a class absent from the test set), "many", "medium", "few" (nan for an empty
    group), and "confusion" (K x K nested list of ints, rows true, columns predicted).
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  num_classes = _check_logits(logits, labels)
  _checks.check_shape(train_counts, (num_classes,), "train_counts")
  predictions = np.argmax(logits, axis=1)
  per_class = per_class_accuracy(predictions, labels, num_classes)
  test_counts = np.bincount(labels, minlength=num_classes)
  groups = group_accuracy(per_class, train_counts, test_counts)
  return {
      "top1": float(topk_accuracy(logits, labels, 1)),
      "top5": float(topk_accuracy(logits, labels, min(5, num_classes))),
      "per_class": [float(a) for a in np.asarray(per_class)],
      **{name: float(value) for name, value in groups.items()},
      "confusion": np.asarray(confusion_matrix(labels, predictions, num_classes)).tolist(),
  }


# Above this many classes the K x K confusion counts are not accumulated (iNaturalist's
# 8,142 classes would make it 66 M entries); per-class accuracy is always kept.
CONFUSION_MAX_CLASSES = 1000


@flax.struct.dataclass
class EvalCounts:
  """Sufficient statistics of a test evaluation; `+` sums those of two batches.

  Attributes:
    total: (K,) int32 test samples per class.
    correct: (K,) int32 top-1 hits per class.
    top5: () int32 samples whose label is among the top-min(5, K) logits.
    loss: () float32 summed cross-entropy -log softmax(z)_y.
    confusion: (K, K) int32 counts (rows true, columns predicted), or None when K >
      CONFUSION_MAX_CLASSES.
  """
  total: jax.Array
  correct: jax.Array
  top5: jax.Array
  loss: jax.Array
  confusion: jax.Array | None

  def __add__(self, other: "EvalCounts") -> "EvalCounts":
    return jax.tree.map(jnp.add, self, other)


def batch_counts(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
                 ) -> EvalCounts:
  """`EvalCounts` of one batch; rows with mask False (padding) count nowhere.

  Args:
    logits: (B, K) logits.
    labels: (B,) labels in [0, K).
    mask: (B,) bool, True for real samples (default: all).

  Returns:
    EvalCounts (jit-safe; K static).
  """
  num_classes = _check_logits(logits, labels)
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  valid = jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
  predictions = jnp.argmax(logits, axis=1)
  _, top = jax.lax.top_k(logits, min(5, num_classes))
  in_top = (top == labels[:, None]).any(axis=1)
  nll = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]
  confusion = None
  if num_classes <= CONFUSION_MAX_CLASSES:
    flat = labels * num_classes + predictions
    confusion = jax.ops.segment_sum(valid, flat, num_classes * num_classes).reshape(
        num_classes, num_classes)
  return EvalCounts(
      total=jax.ops.segment_sum(valid, labels, num_classes),
      correct=jax.ops.segment_sum(valid * (predictions == labels), labels, num_classes),
      top5=jnp.sum(valid * in_top), loss=jnp.sum(valid * nll), confusion=confusion)


def summarize_counts(counts: EvalCounts, train_counts: ArrayLike) -> dict[str, Any]:
  """The `evaluate_logits` summary (plus "loss", the mean cross-entropy) from counts.

  Returns:
    dict: "top1", "top5", "per_class" (nan for a class absent from the test set), "many",
    "medium", "few", "loss", and "confusion" (nested list, or None above
    CONFUSION_MAX_CLASSES classes).
  """
  total = np.asarray(counts.total, np.int64)
  correct = np.asarray(counts.correct, np.int64)
  _checks.check_shape(train_counts, total.shape, "train_counts")
  num = max(int(total.sum()), 1)
  per_class = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
  groups = group_accuracy(per_class, train_counts, total)
  confusion = None if counts.confusion is None else np.asarray(counts.confusion).tolist()
  return {
      "top1": float(correct.sum() / num),
      "top5": float(np.asarray(counts.top5) / num),
      "per_class": [float(a) for a in per_class],
      **{name: float(value) for name, value in groups.items()},
      "confusion": confusion,
      "loss": float(np.asarray(counts.loss) / num),
  }
