"""Tests for ltjax.pairing against brute-force numpy and a float64 numpy Sinkhorn."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from ltjax import pairing


def test_random_pairs_is_a_permutation():
  perm = np.asarray(pairing.random_pairs(jax.random.key(0), 33))
  assert perm.dtype == np.int32
  np.testing.assert_array_equal(np.sort(perm), np.arange(33))
  np.testing.assert_array_equal(jax.jit(pairing.random_pairs, static_argnums=1)(
      jax.random.key(0), 33), perm)
  with pytest.raises(ValueError, match="batch_size"):
    pairing.random_pairs(jax.random.key(0), 0)


# nearest neighbours -------------------------------------------------------------------

def np_nearest(features, labels=None, metric="euclidean"):
  z = features.reshape(len(features), -1).astype(np.float64)
  if metric == "euclidean":
    dist = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
  else:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
  out = np.empty(len(z), int)
  for i in range(len(z)):
    allowed = [j for j in range(len(z)) if j != i and (labels is None or labels[j] == labels[i])]
    out[i] = allowed[np.argmin(dist[i, allowed])] if allowed else i
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_neighbours_match_brute_force(seed, metric):
  rng = np.random.default_rng(seed)
  pixels = rng.normal(size=(20, 4, 4, 3)).astype(np.float32)  # pixel space, flattened
  labels = rng.integers(0, 6, 20)
  labels[0] = 7  # alone in its class
  any_class = np.asarray(pairing.nearest_neighbours(pixels, metric=metric))
  np.testing.assert_array_equal(any_class, np_nearest(pixels, metric=metric))
  assert (any_class != np.arange(20)).all()
  same = np.asarray(pairing.nearest_neighbours(pixels, labels, same_class=True,
                                               metric=metric))
  np.testing.assert_array_equal(same, np_nearest(pixels, labels, metric))
  assert same[0] == 0 and (labels[same] == labels).all()
  jitted = jax.jit(pairing.nearest_neighbours, static_argnums=(2, 3))
  np.testing.assert_array_equal(jitted(pixels, labels, True, metric), same)


def test_nearest_neighbours_errors():
  z = np.zeros((4, 3))
  with pytest.raises(ValueError, match="labels"):
    pairing.nearest_neighbours(z, same_class=True)
  with pytest.raises(ValueError, match="metric"):
    pairing.nearest_neighbours(z, metric="manhattan")
  with pytest.raises(ValueError, match="feature axis"):
    pairing.nearest_neighbours(np.zeros(4))


# confusion ------------------------------------------------------------------------------

def test_confusion_update_matches_numpy_count():
  rng = np.random.default_rng(3)
  num_classes = 7
  counts = jnp.zeros((num_classes, num_classes), jnp.int32)
  want = np.zeros((num_classes, num_classes), int)
  update = jax.jit(pairing.confusion_matrix_update)
  for step in range(5):
    labels = rng.integers(0, num_classes, 64)
    preds = np.where(rng.random(64) < 0.5, labels, rng.integers(0, num_classes, 64))
    counts = (update if step % 2 else pairing.confusion_matrix_update)(counts, labels, preds)
    wrong = labels != preds
    np.add.at(want, (labels[wrong], preds[wrong]), 1)
  assert counts.dtype == jnp.int32
  np.testing.assert_array_equal(counts, want)
  assert np.trace(np.asarray(counts)) == 0


def test_confusion_update_errors():
  counts = np.zeros((3, 3), np.int32)
  with pytest.raises(ValueError, match="square"):
    pairing.confusion_matrix_update(np.zeros((3, 4)), [0], [1])
  with pytest.raises(ValueError, match="predictions"):
    pairing.confusion_matrix_update(counts, np.array([0, 1]), np.array([0, 3]))
  with pytest.raises(ValueError, match="batch dimension"):
    pairing.confusion_matrix_update(counts, np.array([0, 1]), np.array([0]))


def test_normalized_confusion_normalises_full_rows_then_zeroes_the_diagonal():
  """OTmix paper and code: `cf / cf.sum(1)`, then `cf[l][l] = 0`; rows not renormalised."""
  conf = np.array([[5, 2, 6, 0], [0, 9, 0, 0], [1, 1, 0, 2], [0, 0, 0, 0]])
  got = np.asarray(pairing.normalized_confusion(conf), np.float64)
  want = np.array([[0, 2 / 13, 6 / 13, 0], [0, 0, 0, 0], [1 / 4, 1 / 4, 0, 2 / 4],
                   [0, 0, 0, 0]])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # A row sums to the class's error rate, not to 1 (8/13 for class 0, 1 for class 2).
  np.testing.assert_allclose(got.sum(1), [8 / 13, 0, 1, 0], rtol=1e-6)
  with pytest.raises(ValueError, match="non-negative"):
    pairing.normalized_confusion(-np.eye(2))


def test_confusion_partners_follow_the_row_law():
  counts = np.array([[50, 3, 1, 0], [2, 0, 0, 6], [0, 0, 9, 0], [1, 1, 1, 1]])
  draws = 20_000
  for true, row in enumerate(counts):
    partners = np.asarray(pairing.confusion_partners(
        jax.random.key(true), counts, np.full(draws, true)))
    observed = np.bincount(partners, minlength=4)
    law = row * (1.0 - np.eye(4)[true])
    if law.sum() == 0:  # empty row: uniform over the other classes
      law = 1.0 - np.eye(4)[true]
    law = law / law.sum()
    assert observed[law == 0].sum() == 0  # never the true class, never a zero entry
    support = law > 0
    assert stats.chisquare(observed[support], draws * law[support]).pvalue > 1e-3


def test_confusion_partners_self_option_jit_and_errors():
  counts = np.array([[0, 0, 0], [3, 0, 1], [0, 0, 0]])
  true = np.array([0, 1, 2, 1])
  out = np.asarray(pairing.confusion_partners(jax.random.key(0), counts, true, "self"))
  np.testing.assert_array_equal(out[[0, 2]], [0, 2])
  assert (out[[1, 3]] != 1).all()
  jitted = jax.jit(pairing.confusion_partners, static_argnums=3)
  np.testing.assert_array_equal(jitted(jax.random.key(0), counts, true, "self"), out)
  with pytest.raises(ValueError, match="empty_row"):
    pairing.confusion_partners(jax.random.key(0), counts, true, "skip")
  with pytest.raises(ValueError, match="K >= 2"):
    pairing.confusion_partners(jax.random.key(0), np.zeros((1, 1)), np.array([0]))
  with pytest.raises(ValueError, match="true_classes"):
    pairing.confusion_partners(jax.random.key(0), counts, np.array([3]))


# optimal transport ----------------------------------------------------------------------

def _ot_problem(seed, batch, num_classes=5, dim=8):
  rng = np.random.default_rng(seed)
  z_fore, z_back = rng.normal(size=(2, batch, dim))
  y_fore, y_back = rng.integers(0, num_classes, (2, batch))
  f_hat = np.asarray(pairing.normalized_confusion(
      rng.integers(0, 20, (num_classes, num_classes))), np.float64)
  return z_fore, z_back, y_fore, y_back, f_hat


def test_ot_cost_matches_numpy():
  z_fore, z_back, y_fore, y_back, f_hat = _ot_problem(0, 9)
  z_back = z_back[:7]
  y_back = y_back[:7]
  unit_f = z_fore / np.linalg.norm(z_fore, axis=1, keepdims=True)
  unit_b = z_back / np.linalg.norm(z_back, axis=1, keepdims=True)
  want = 0.05 * (1 - unit_f @ unit_b.T) + 0.95 * (1 - f_hat[y_fore][:, y_back])
  got = pairing.ot_cost(z_fore, z_back, y_fore, y_back, f_hat)
  assert got.shape == (9, 7)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="w must"):
    pairing.ot_cost(z_fore, z_back, y_fore, y_back, f_hat, w=1.5)
  with pytest.raises(ValueError, match="labels_back"):
    pairing.ot_cost(z_fore, z_back, y_fore, y_back[:3], f_hat)


def np_sinkhorn(cost, eps, tol=1e-12, max_iterations=20_000):
  """Float64 log-domain Sinkhorn with uniform marginals (independent reference)."""
  n, m = cost.shape
  log_a, log_b = np.full(n, -np.log(n)), np.full(m, -np.log(m))
  f, g = np.zeros(n), np.zeros(m)
  for it in range(max_iterations):
    g = eps * (log_b - special.logsumexp((f[:, None] - cost) / eps, axis=0))
    f = eps * (log_a - special.logsumexp((g[None, :] - cost) / eps, axis=1))
    if it % 10 == 9 and np.abs(_plan(f, g, cost, eps).sum(0) - 1 / m).sum() < tol:
      break
  return _plan(f, g, cost, eps)


def _plan(f, g, cost, eps):
  return np.exp((f[:, None] + g[None, :] - cost) / eps)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _solve(cost, eps, max_iterations, threshold):
  return pairing.solve_sinkhorn(cost, eps, max_iterations, threshold)


@pytest.mark.parametrize("batch", [6, 13])
def test_sinkhorn_plan_matches_numpy_float32(batch):
  for seed in range(3):
    cost = np.asarray(pairing.ot_cost(*_ot_problem(seed, batch)), np.float64)
    want = np_sinkhorn(cost, 0.05)
    result = _solve(jnp.asarray(cost, jnp.float32), 0.05, 5000, 1e-5)
    plan = np.asarray(result.plan, np.float64)
    assert bool(result.converged) and np.isfinite(plan).all()
    np.testing.assert_allclose(plan, want, atol=5e-5 / batch)
    np.testing.assert_allclose(plan.sum(1), 1 / batch, rtol=1e-4)
    np.testing.assert_allclose(plan.sum(0), 1 / batch, atol=1e-5)


@pytest.mark.parametrize("eps", [0.05, 0.01])
def test_sinkhorn_plan_matches_numpy_float64(eps):
  with jax.enable_x64(True):
    for batch, seed in [(6, 2), (12, 3)]:
      cost = np.asarray(pairing.ot_cost(*_ot_problem(seed, batch)), np.float64)
      want = np_sinkhorn(cost, eps)
      result = _solve(jnp.asarray(cost), eps, 20_000, 1e-11)
      assert result.plan.dtype == jnp.float64 and bool(result.converged)
      np.testing.assert_allclose(result.plan, want, atol=1e-9 / batch)


_ot_pairs = jax.jit(pairing.ot_pairs)


@pytest.mark.parametrize("batch", [6, 13])
def test_ot_pairs_equal_numpy_row_argmax(batch):
  for seed in range(3):
    cost = np.asarray(pairing.ot_cost(*_ot_problem(10 + seed, batch)), np.float64)
    want = np_sinkhorn(cost, 0.01, max_iterations=3000)
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) * batch > 1e-3  # rows without a near tie
    assert clear.mean() > 0.8
    pairs = np.asarray(_ot_pairs(jnp.asarray(cost, jnp.float32)))
    np.testing.assert_array_equal(pairs[clear], np.argmax(want, axis=1)[clear])


def test_sinkhorn_eps001_batch128_is_finite():
  z_fore, z_back, y_fore, y_back, f_hat = _ot_problem(4, 128, num_classes=10, dim=64)
  cost = pairing.ot_cost(z_fore, z_back, y_fore, y_back, f_hat)
  result = _solve(cost, 0.01, 1000, 1e-4)
  plan = np.asarray(result.plan, np.float64)
  assert result.plan.dtype == jnp.float32 and np.isfinite(plan).all()
  assert bool(result.converged) and float(result.error) < 1e-4
  np.testing.assert_allclose(plan.sum(), 1.0, rtol=1e-4)
  np.testing.assert_allclose(plan.sum(1), 1 / 128, rtol=1e-3)
  pairs = np.asarray(_ot_pairs(cost))
  np.testing.assert_array_equal(pairs, np.argmax(plan, axis=1))


def test_sinkhorn_errors():
  with pytest.raises(ValueError, match="epsilon"):
    pairing.sinkhorn_plan(np.zeros((3, 3)), epsilon=0.0)
  with pytest.raises(ValueError, match="max_iterations"):
    pairing.sinkhorn_plan(np.zeros((3, 3)), max_iterations=0)
  with pytest.raises(ValueError, match="cost"):
    pairing.ot_pairs(np.zeros(3))
