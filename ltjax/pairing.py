"""Pairing: who is mixed with whom.

- Random pairs: a permutation of the batch (mixup, Zhang et al. 2018).
- In-batch nearest neighbours: SMOTE-Mix (same class) and Neighbor-Mix (any class)
  (Cheng et al., MAMix paper, eq. 7-10).
- Confusion pairs: a K x K count of (true, predicted) training mistakes, accumulated over
  training, and partner classes drawn from its rows (CP-Mix).
- Optimal-transport pairs: each foreground image takes the background image with the
  largest entry in its row of an entropic OT plan (OTmix, Gao et al., eq. 4-8), solved
  with ott-jax's log-domain Sinkhorn. ott-jax (about 3 s to import) is imported by the
  first OT solve, not by `import ltjax.pairing`.

All functions are pure and jit-safe (static shapes, scatter-adds, masks).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks

METRICS = ("euclidean", "cosine")
EMPTY_ROW_OPTIONS = ("uniform_others", "self")
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes in distance matmuls


def random_pairs(key: jax.Array, batch_size: int) -> jax.Array:
  """Mixup pairing: sample i is mixed with sample perm[i] for a uniform permutation.

  Returns:
    (batch_size,) int32 permutation (fixed points allowed, as in `torch.randperm`).
  """
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  return jax.random.permutation(key, batch_size).astype(jnp.int32)


def _flatten(features: ArrayLike, name: str) -> jax.Array:
  z = jnp.asarray(features)
  if z.ndim < 2:
    raise ValueError(f"{name} must be (B, ...) with a feature axis, got shape {z.shape}.")
  z = z.reshape(z.shape[0], -1)
  return z if jnp.issubdtype(z.dtype, jnp.inexact) else z.astype(jnp.float32)


def _cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B_a, B_b) cosine similarities of the rows of a and b (zero rows give 0)."""
  def unit(z):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  return jnp.matmul(unit(a), unit(b).T, precision=_HIGHEST)


def _squared_euclidean(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B_a, B_b) squared distances |a_i|^2 + |b_j|^2 - 2 a_i.b_j."""
  sq_a = jnp.sum(a * a, axis=1)[:, None]
  sq_b = jnp.sum(b * b, axis=1)[None, :]
  return sq_a + sq_b - 2.0 * jnp.matmul(a, b.T, precision=_HIGHEST)


def nearest_neighbours(features: ArrayLike, labels: ArrayLike | None = None,
                       same_class: bool = False, metric: str = "euclidean") -> jax.Array:
  """In-batch nearest neighbour of every sample, never itself (MAMix paper, eq. 7-10).

  SMOTE-Mix pairs each sample with its nearest neighbour of the same class
  (`same_class=True`); Neighbor-Mix with its nearest neighbour of any class.

  Args:
    features: (B, ...) per-sample vectors, flattened to (B, D): backbone features
      (the default use) or raw pixels (pixel-space option).
    labels: (B,) integer labels; needed (and only used) when `same_class`.
    same_class: restrict neighbours to the sample's class. A sample alone in its class
      is paired with itself (mixing it with itself leaves it unchanged).
    metric: "euclidean" (default; for pixel space and features alike) or "cosine"
      (distance 1 - cos). Ties go to the lowest index.

  Returns:
    (B,) int32 partner indices.
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}.")
  z = _flatten(features, "features")
  batch = z.shape[0]
  if metric == "euclidean":
    dist = _squared_euclidean(z, z)
  else:
    dist = 1.0 - _cosine_similarity(z, z)
  valid = ~jnp.eye(batch, dtype=bool)
  if same_class:
    if labels is None:
      raise ValueError("same_class=True needs labels.")
    labels = jnp.asarray(labels)
    _checks.check_shape(labels, (batch,), "labels")
    valid &= labels[:, None] == labels[None, :]
  nearest = jnp.argmin(jnp.where(valid, dist, jnp.inf), axis=1).astype(jnp.int32)
  return jnp.where(valid.any(axis=1), nearest, jnp.arange(batch, dtype=jnp.int32))


def _check_square(matrix: ArrayLike, name: str) -> int:
  shape = jnp.shape(matrix)
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
    raise ValueError(f"{name} must be a square (K, K) matrix, got shape {shape}.")
  if _checks.is_concrete(matrix) and (np.asarray(matrix) < 0).any():
    raise ValueError(f"{name} must be non-negative.")
  return shape[0]


def confusion_matrix_update(counts: ArrayLike, labels: ArrayLike,
                            predictions: ArrayLike) -> jax.Array:
  """Adds the batch's misclassified (true, predicted) pairs to a K x K count (CP-Mix).

  counts[y, p] += #{i : labels_i = y, predictions_i = p, y != p}; the diagonal is never
  touched. This is the paper's multiset of confusion pairs, kept as counts.

  Args:
    counts: (K, K) running counts (rows: true class, columns: predicted class).
    labels: (B,) true classes.
    predictions: (B,) predicted classes (e.g. argmax of the logits).

  Returns:
    Updated (K, K) counts, same dtype as `counts`.
  """
  counts = jnp.asarray(counts)
  num_classes = _check_square(counts, "counts")
  _checks.check_labels(labels, num_classes, "labels")
  _checks.check_labels(predictions, num_classes, "predictions")
  _checks.check_shape(labels, (None,), "labels")
  _checks.check_same_leading("labels", labels, "predictions", predictions)
  labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
  wrong = (labels != predictions).astype(counts.dtype)
  return counts.at[labels, predictions].add(wrong)


def normalized_confusion(confusion: ArrayLike) -> jax.Array:
  """F_hat of OTmix (Gao et al., eq. 7): the row-normalised confusion, diagonal set to 0.

  F_hat[k, j] = C[k, j] / sum_j' C[k, j'] for j != k and F_hat[k, k] = 0: each *full* row
  is normalised first, then the diagonal is zeroed, and the rows are not renormalised
  (paper: "a normalized confusion matrix F ... set the diagonal element in F to 0"; the
  authors' code: `cf / cf.sum(1)`, then `cf[l][l] = 0`). A row then sums to the class's
  error rate 1 - acc_k; an empty row is all zeros.

  Args:
    confusion: (K, K) non-negative counts or frequencies (rows: true class).

  Returns:
    (K, K) float matrix with a zero diagonal; row k sums to 1 - C[k, k] / sum_j C[k, j].
  """
  num_classes = _check_square(confusion, "confusion")
  c = jnp.asarray(confusion)
  c = c.astype(c.dtype if jnp.issubdtype(c.dtype, jnp.inexact) else jnp.float32)
  total = c.sum(axis=1, keepdims=True)
  rows = jnp.where(total > 0, c / jnp.where(total > 0, total, 1), 0)
  return jnp.where(jnp.eye(num_classes, dtype=bool), 0, rows)


def confusion_partners(key: jax.Array, counts: ArrayLike, true_classes: ArrayLike,
                       empty_row: str = "uniform_others") -> jax.Array:
  """Draws a confused class for each true class from its row of the counts (CP-Mix).

  P(partner = j | true = k) = counts[k, j] / sum_{j' != k} counts[k, j'] (the diagonal is
  ignored, so the true class is never returned while its row has other entries).

  Args:
    key: PRNG key.
    counts: (K, K) non-negative confusion counts (rows: true class), K >= 2.
    true_classes: (B',) true classes.
    empty_row: what to do for a row with no confusions yet:
      "uniform_others" (default): draw uniformly from the K - 1 other classes;
      "self": return the true class itself, so the caller can skip that sample (mask
      `partner == true`) or mix it within its own class.

  Returns:
    (B',) int32 partner classes.
  """
  if empty_row not in EMPTY_ROW_OPTIONS:
    raise ValueError(f"Unknown empty_row {empty_row!r}; valid options: "
                     f"{', '.join(EMPTY_ROW_OPTIONS)}.")
  num_classes = _check_square(counts, "counts")
  if num_classes < 2:
    raise ValueError(f"confusion partners need K >= 2 classes, got K = {num_classes}.")
  _checks.check_labels(true_classes, num_classes, "true_classes")
  true_classes = jnp.asarray(true_classes)
  eye = jnp.eye(num_classes, dtype=bool)[true_classes]
  rows = jnp.where(eye, 0.0, jnp.asarray(counts, jnp.float32)[true_classes])
  fallback = ~eye if empty_row == "uniform_others" else eye
  weights = jnp.where(rows.sum(axis=-1, keepdims=True) > 0, rows, fallback)
  logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def ot_cost(features_fore: ArrayLike, features_back: ArrayLike, labels_fore: ArrayLike,
            labels_back: ArrayLike, confusion_hat: ArrayLike, w: float = 0.05) -> jax.Array:
  """OTmix cost between foreground and background images (Gao et al., eq. 5-7).

    C_ij = w (1 - cos(z_i, z_j)) + (1 - w) (1 - F_hat[y_i, y_j])

  with i a foreground image (row) and j a background image (column).

  Args:
    features_fore: (B, D) backbone features of the foreground batch.
    features_back: (B', D) backbone features of the background batch.
    labels_fore: (B,) foreground labels.
    labels_back: (B',) background labels.
    confusion_hat: (K, K) F_hat from `normalized_confusion` (zero diagonal, rows sum to 1).
    w: weight of the sample-level (cosine) cost in [0, 1] (paper: 0.05).

  Returns:
    (B, B') cost matrix with entries in [0, 2].
  """
  _checks.check_in_range(w, "w", 0.0, 1.0)
  num_classes = _check_square(confusion_hat, "confusion_hat")
  z_fore, z_back = _flatten(features_fore, "features_fore"), _flatten(features_back,
                                                                      "features_back")
  if z_fore.shape[1] != z_back.shape[1]:
    raise ValueError(f"features_fore and features_back must have the same feature size, "
                     f"got {z_fore.shape} and {z_back.shape}.")
  _checks.check_labels(labels_fore, num_classes, "labels_fore")
  _checks.check_labels(labels_back, num_classes, "labels_back")
  _checks.check_shape(labels_fore, (z_fore.shape[0],), "labels_fore")
  _checks.check_shape(labels_back, (z_back.shape[0],), "labels_back")
  f_hat = jnp.asarray(confusion_hat, z_fore.dtype)
  class_cost = 1.0 - f_hat[jnp.asarray(labels_fore)][:, jnp.asarray(labels_back)]
  return w * (1.0 - _cosine_similarity(z_fore, z_back)) + (1.0 - w) * class_cost


class SinkhornResult(NamedTuple):
  """Entropic OT solution.

  Attributes:
    plan: (B, B') transport plan; rows sum to 1/B, columns to 1/B' (up to `threshold`).
    converged: whether the marginal error fell below the threshold.
    iterations: Sinkhorn iterations run (a multiple of ott's 10 inner iterations).
    error: last recorded L1 error of the column marginal.
  """
  plan: jax.Array
  converged: jax.Array
  iterations: jax.Array
  error: jax.Array


def solve_sinkhorn(cost: ArrayLike, epsilon: float = 0.01, max_iterations: int = 1000,
                   threshold: float = 1e-4) -> SinkhornResult:
  """Entropic OT with uniform marginals by ott-jax's log-domain Sinkhorn (OTmix eq. 4).

    T = argmin_{T in Pi(1/B, 1/B')} <C, T> - epsilon H(T)

  Log-domain (`lse_mode=True`) updates keep eps = 0.01 finite in float32, where the
  kernel exp(-C / eps) underflows. `epsilon` is absolute (not relative to the cost scale)
  and the cost is not rescaled. The cost is treated as a constant (`stop_gradient`).
  If `max_iterations` is reached first the last iterate is returned (finite, rows exact,
  columns off by about `error`); `converged` reports it.

  Args:
    cost: (B, B') cost matrix.
    epsilon: entropic regularisation > 0 (paper: 0.01).
    max_iterations: iteration cap (static).
    threshold: stop when the L1 error of the column marginal is below it. 1e-4 is close to
      the float32 floor at eps = 0.01 (about 1e-5) and is reached in tens to a few hundred
      iterations for B = 128.

  Returns:
    A SinkhornResult.
  """
  _checks.check_positive(epsilon, "epsilon")
  _checks.check_positive(threshold, "threshold")
  if int(max_iterations) < 1:
    raise ValueError(f"max_iterations must be >= 1, got {max_iterations}.")
  _checks.check_rank(cost, 2, "cost", "a (B, B') matrix")
  cost = jnp.asarray(cost)
  cost = jax.lax.stop_gradient(cost if jnp.issubdtype(cost.dtype, jnp.inexact)
                               else cost.astype(jnp.float32))
  # Imported here so that only OT pairing pays ott-jax's import time.
  from ott.geometry import geometry  # pylint: disable=import-outside-toplevel
  from ott.problems.linear import linear_problem  # pylint: disable=import-outside-toplevel
  from ott.solvers.linear import sinkhorn  # pylint: disable=import-outside-toplevel
  geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
  solver = sinkhorn.Sinkhorn(lse_mode=True, threshold=threshold,
                             max_iterations=int(max_iterations))
  out = solver(linear_problem.LinearProblem(geom))
  errors = out.errors
  last = jnp.maximum(jnp.sum(errors != -1) - 1, 0)
  return SinkhornResult(plan=out.matrix, converged=jnp.asarray(out.converged),
                        iterations=out.n_iters, error=errors[last])


def sinkhorn_plan(cost: ArrayLike, epsilon: float = 0.01, max_iterations: int = 1000,
                  threshold: float = 1e-4) -> jax.Array:
  """The (B, B') entropic OT plan of `solve_sinkhorn` (uniform marginals, log domain)."""
  return solve_sinkhorn(cost, epsilon, max_iterations, threshold).plan


def ot_pairs(cost: ArrayLike, epsilon: float = 0.01, max_iterations: int = 1000,
             threshold: float = 1e-4) -> jax.Array:
  """OTmix pairing (Gao et al., eq. 8): j'(i) = argmax_j T_ij for every foreground row i.

  Several foreground images may take the same background image.

  Args:
    cost: (B, B') cost, rows foreground, columns background (`ot_cost`).
    epsilon, max_iterations, threshold: see `solve_sinkhorn`.

  Returns:
    (B,) int32 background index for every foreground image.
  """
  plan = sinkhorn_plan(cost, epsilon, max_iterations, threshold)
  return jnp.argmax(plan, axis=1).astype(jnp.int32)
