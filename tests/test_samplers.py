"""Chi-square tests of ltjax.samplers against float64 numpy transcriptions of each law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ltjax import samplers

COUNTS = np.array([60, 30, 12, 6, 3], np.int64)
NUM_DRAWS = 200_000
P_MIN = 1e-4  # fixed keys: the outcome is deterministic, this only guards the law


def make_labels(counts: np.ndarray) -> np.ndarray:
  labels = np.repeat(np.arange(len(counts)), counts)
  return np.random.default_rng(0).permutation(labels)


LABELS = make_labels(COUNTS)
INDEX = samplers.build_class_index(LABELS, len(COUNTS))


def reference_law(name: str, counts: np.ndarray, gamma: float = np.inf,
                  r: float = 1.0) -> np.ndarray:
  """SPEC section 2, in float64."""
  n = counts.astype(np.float64)
  if name == "instance":
    w = n
  elif name == "class_balanced":
    w = np.ones_like(n)
  elif name == "reverse":
    w = (n.max() / n) ** (1.0 / gamma)
  else:
    w = n ** -r
  return w / w.sum()


def class_frequencies(indices: jax.Array) -> np.ndarray:
  return np.bincount(LABELS[np.asarray(indices)], minlength=len(COUNTS))


LAWS = [("instance", {}), ("class_balanced", {}), ("reverse", {"gamma": 1.0}),
        ("reverse", {"gamma": 2.0}), ("reverse", {"gamma": np.inf}),
        ("inverse_power", {"r": 1.0}), ("inverse_power", {"r": 0.5})]


@pytest.mark.parametrize("name,kw", LAWS)
def test_class_frequencies_follow_law(name, kw):
  expected = reference_law(name, COUNTS, **kw)
  probs = samplers.class_probs(name, COUNTS, **kw)
  np.testing.assert_allclose(np.asarray(probs), expected, rtol=1e-6)
  draws = samplers.draw_indices(jax.random.key(11), INDEX, probs, NUM_DRAWS)
  observed = class_frequencies(draws)
  assert stats.chisquare(observed, expected * NUM_DRAWS).pvalue > P_MIN


def test_chi_square_rejects_wrong_law():
  probs = samplers.class_probs("instance", COUNTS)
  observed = class_frequencies(samplers.draw_indices(jax.random.key(11), INDEX, probs,
                                                     NUM_DRAWS))
  wrong = reference_law("class_balanced", COUNTS) * NUM_DRAWS
  assert stats.chisquare(observed, wrong).pvalue < 1e-10


def test_reverse_gamma_inf_is_class_balanced():
  # (n_max / n_k)^(1 / gamma) -> 1 as gamma -> inf: the uniform class law.
  np.testing.assert_allclose(np.asarray(samplers.reverse_probs(COUNTS, np.inf)),
                             np.full(len(COUNTS), 1 / len(COUNTS)), rtol=1e-6)


def test_within_class_draws_are_uniform():
  draws = np.asarray(samplers.draw_indices(
      jax.random.key(3), INDEX, samplers.class_balanced_probs(COUNTS), NUM_DRAWS))
  for k, n in enumerate(COUNTS):
    members = np.flatnonzero(LABELS == k)
    hits = np.bincount(np.searchsorted(members, draws[LABELS[draws] == k]), minlength=n)
    assert hits.sum() > 0 and hits.size == n
    assert stats.chisquare(hits).pvalue > P_MIN


def test_draw_from_classes_stays_in_class():
  classes = jnp.array([4, 0, 2, 4, 1] * 200)
  idx = samplers.draw_from_classes(jax.random.key(0), INDEX, classes)
  np.testing.assert_array_equal(LABELS[np.asarray(idx)], np.asarray(classes))


def test_draw_instances_uniform():
  draws = np.asarray(samplers.draw_instances(jax.random.key(2), 37, NUM_DRAWS))
  assert draws.dtype == np.int32
  assert stats.chisquare(np.bincount(draws, minlength=37)).pvalue > P_MIN


def test_same_key_same_draw_and_jit_agrees():
  probs = samplers.reverse_probs(COUNTS, 2.0)
  key = jax.random.key(42)
  eager = samplers.draw_indices(key, INDEX, probs, 512)
  np.testing.assert_array_equal(eager, samplers.draw_indices(key, INDEX, probs, 512))
  jitted = jax.jit(samplers.draw_indices, static_argnums=3)(key, INDEX, probs, 512)
  np.testing.assert_array_equal(eager, jitted)
  other = samplers.draw_indices(jax.random.key(43), INDEX, probs, 512)
  assert not np.array_equal(eager, other)


def test_probs_of_traced_counts_follow_law():
  for name, kw in LAWS:
    jitted = jax.jit(lambda c, name=name, kw=kw: samplers.class_probs(name, c, **kw))(
        jnp.asarray(COUNTS))
    np.testing.assert_allclose(jitted, reference_law(name, COUNTS, **kw), rtol=1e-6)


def test_epoch_permutation():
  grid = samplers.epoch_permutation(jax.random.key(0), 100, 8)
  assert grid.shape == (12, 8) and grid.dtype == jnp.int32
  flat = np.asarray(grid).ravel()
  assert np.unique(flat).size == flat.size and flat.min() >= 0 and flat.max() < 100
  full = np.asarray(samplers.epoch_permutation(jax.random.key(1), 96, 8)).ravel()
  np.testing.assert_array_equal(np.sort(full), np.arange(96))
  np.testing.assert_array_equal(grid, samplers.epoch_permutation(jax.random.key(0), 100, 8))
  # A shuffle: the documented rows of jax.random.permutation, and a uniform position law
  # (every index equally likely in the first batch over many keys).
  want = np.asarray(jax.random.permutation(jax.random.key(0), 100))[:96].reshape(12, 8)
  np.testing.assert_array_equal(grid, want)
  firsts = np.concatenate([np.asarray(samplers.epoch_permutation(jax.random.key(k), 20, 4))[0]
                           for k in range(500)])
  assert stats.chisquare(np.bincount(firsts, minlength=20)).pvalue > P_MIN


def test_build_class_index_layout():
  index = samplers.build_class_index(np.array([2, 0, 2, 1, 0]), 3)
  np.testing.assert_array_equal(index.counts, [2, 1, 2])
  np.testing.assert_array_equal(index.starts, [0, 2, 3])
  np.testing.assert_array_equal(index.order, [1, 4, 3, 0, 2])
  host = samplers.numpy_class_index(np.array([2, 0, 2, 1, 0]), 3)
  assert all(isinstance(a, np.ndarray) for a in host)


def test_empty_class_never_drawn_when_allowed():
  labels = np.array([0, 0, 2, 2, 2])
  index = samplers.build_class_index(labels, 3, allow_empty=True)
  for name in samplers.SAMPLERS:
    probs = samplers.class_probs(name, index.counts)
    assert float(probs[1]) == 0.0
    draws = samplers.draw_indices(jax.random.key(0), index, probs, 2000)
    assert not np.isin(1, labels[np.asarray(draws)])


def test_errors():
  with pytest.raises(ValueError, match="empty classes"):
    samplers.build_class_index(np.array([0, 0, 2]), 3)
  with pytest.raises(ValueError, match="out of range"):
    samplers.build_class_index(np.array([0, 3]), 3)
  with pytest.raises(ValueError, match="out of range"):
    samplers.build_class_index(np.array([-1, 0]), 3)
  with pytest.raises(ValueError, match="integer"):
    samplers.build_class_index(np.array([0.0, 1.0]), 3)
  with pytest.raises(ValueError, match="Unknown sampler"):
    samplers.class_probs("square_root", COUNTS)
  with pytest.raises(ValueError, match="gamma"):
    samplers.reverse_probs(COUNTS, 0.0)
  with pytest.raises(ValueError, match="r must"):
    samplers.inverse_power_probs(COUNTS, -1.0)
  with pytest.raises(ValueError, match="non-negative"):
    samplers.instance_balanced_probs(np.array([3, -1]))
  with pytest.raises(ValueError, match="probs"):
    samplers.draw_indices(jax.random.key(0), INDEX, jnp.ones(3) / 3, 10)
  with pytest.raises(ValueError, match="batch_size"):
    samplers.epoch_permutation(jax.random.key(0), 10, 11)
  with pytest.raises(ValueError, match="num_samples"):
    samplers.draw_instances(jax.random.key(0), 0, 10)



def test_two_stage_draw_uses_independent_keys():
  """The documented two stages from split keys: classes ~ categorical(k1, log p), then
  item = floor(u * n_class) with u ~ U[0, 1) from k2, (k1, k2) = split(key). Sharing one key
  between the stages keeps both marginals right but couples the draws of a batch."""
  counts = np.array([40, 25, 10, 5])
  labels = np.repeat(np.arange(4), counts)
  index = samplers.build_class_index(labels, 4)
  probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
  key = jax.random.key(11)
  got = np.asarray(samplers.draw_indices(key, index, probs, 500))
  k1, k2 = jax.random.split(key)
  classes = np.asarray(jax.random.categorical(k1, jnp.log(probs), shape=(500,)))
  u = np.asarray(jax.random.uniform(k2, (500,)))
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  want = starts[classes] + np.floor(u * counts[classes]).astype(int)
  np.testing.assert_array_equal(got, want)
