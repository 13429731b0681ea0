"""Criterion on mixed labels against float64 numpy transcriptions of each reference's loss.

The references compute the loss of a mixed batch per side, `lam L(z, y_a) + (1 - lam)
L(z, y_b)`, and reduce class-weighted losses in their own way (SPEC section 5):
- imbalanced-DL (Mixup/Remix/MAMix-DRW): `CrossEntropyLoss(weight=w, reduction="none")`
  per side, mixed, `.mean()`;
- OTmix code: each side `F.cross_entropy(z, y, weight=w)` (normalised by that side's
  weight sum), LDAM with each side's full margin.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import mixing
from ltjax.methods import criteria

K, B = 5, 12
COUNTS = np.array([400, 120, 40, 12, 4])
RTOL = 2e-5


def np_log_softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_drw(beta=0.9999):
  w = (1 - beta) / (1 - beta ** COUNTS.astype(np.float64))
  return w / w.sum() * K


def np_torch_ce(z, y, w):
  """F.cross_entropy(z, y, weight=w) (weighted mean normalised by sum_i w_{y_i})."""
  nll = -np_log_softmax(z)[np.arange(len(y)), y]
  return (w[y] * nll).sum() / w[y].sum()


def np_ldam(cos, y, w, s=30.0):
  """LDAMLoss: subtract m_y from the target cosine, scale by s, weighted CE."""
  m = COUNTS.astype(np.float64) ** -0.25
  m = m * 0.5 / m.max()
  out = cos.copy()
  out[np.arange(len(y)), y] -= m[y]
  return np_torch_ce(s * out, y, w)


def case(seed):
  rng = np.random.default_rng(seed)
  z = rng.normal(scale=2.0, size=(B, K))
  y_a, y_b = rng.integers(0, K, B), rng.integers(0, K, B)
  return z, y_a, y_b, float(rng.uniform())


def compute(criterion, z, y_a, y_b, lam, epoch=10):
  labels = mixing.MixedLabels(jnp.asarray(y_a), jnp.asarray(y_b), jnp.float32(lam))
  return float(criterion.compute(jnp.asarray(z, jnp.float32), labels, COUNTS, epoch))


@pytest.mark.parametrize("seed", range(3))
def test_imbalanced_dl_drw_reduction(seed):
  z, y_a, y_b, lam = case(seed)
  rows = np.arange(B)
  nll = -np_log_softmax(z)
  w = np_drw()
  want = (lam * w[y_a] * nll[rows, y_a] + (1 - lam) * w[y_b] * nll[rows, y_b]).mean()
  got = compute(criteria.Criterion("ce", drw_epoch=0, reduction="mean"), z, y_a, y_b, lam)
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("seed,beta", [(0, 0.9999), (1, 0.9999), (2, 0.99), (3, 0.9)])
def test_otmix_drw_is_lam_times_each_sides_weighted_mean(seed, beta):
  z, y_a, y_b, lam = case(seed)
  w = np_drw(beta)
  want = lam * np_torch_ce(z, y_a, w) + (1 - lam) * np_torch_ce(z, y_b, w)
  got = compute(criteria.Criterion("ce", drw_epoch=0, beta=beta), z, y_a, y_b, lam)
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("seed", range(3))
def test_ldam_gives_each_side_its_full_margin(seed):
  z, y_a, y_b, lam = case(seed)
  cos = np.tanh(z)
  w = np_drw()
  want = lam * np_ldam(cos, y_a, w) + (1 - lam) * np_ldam(cos, y_b, w)
  got = compute(criteria.Criterion("ldam", drw_epoch=0), cos, y_a, y_b, lam)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  # Before the DRW epoch the weights are ones.
  ones = np.ones(K)
  want0 = lam * np_ldam(cos, y_a, ones) + (1 - lam) * np_ldam(cos, y_b, ones)
  got0 = compute(criteria.Criterion("ldam", drw_epoch=11), cos, y_a, y_b, lam)
  np.testing.assert_allclose(got0, want0, rtol=RTOL)


def test_balanced_softmax_sides():
  z, y_a, y_b, lam = case(0)
  adjusted = z + np.log(COUNTS / COUNTS.sum())
  ones = np.ones(K)
  want = lam * np_torch_ce(adjusted, y_a, ones) + (1 - lam) * np_torch_ce(adjusted, y_b, ones)
  got = compute(criteria.Criterion("balanced_softmax"), z, y_a, y_b, lam)
  np.testing.assert_allclose(got, want, rtol=RTOL)


def test_soft_label_form_keeps_the_joint_normalisation_option():
  """label_form="soft", reduction="normalized": sum_ik w_k y_ik l_ik / sum_ik w_k y_ik."""
  z, y_a, y_b, lam = case(1)
  y = lam * np.eye(K)[y_a] + (1 - lam) * np.eye(K)[y_b]
  w = np_drw()
  terms = -y * np_log_softmax(z) * w
  want = terms.sum() / (y * w).sum()
  crit = criteria.Criterion("ce", drw_epoch=0, reduction="normalized", label_form="soft")
  np.testing.assert_allclose(compute(crit, z, y_a, y_b, lam), want, rtol=RTOL)


def test_per_sample_lambda_sides():
  z, y_a, y_b, _ = case(2)
  lam = np.random.default_rng(5).uniform(size=B)
  rows = np.arange(B)
  nll = -np_log_softmax(z)
  want = (lam * nll[rows, y_a] + (1 - lam) * nll[rows, y_b]).mean()
  labels = mixing.MixedLabels(jnp.asarray(y_a), jnp.asarray(y_b), jnp.asarray(lam, jnp.float32))
  got = criteria.Criterion("ce").compute(jnp.asarray(z, jnp.float32), labels, COUNTS, 0)
  np.testing.assert_allclose(float(got), want, rtol=RTOL)


@pytest.mark.parametrize("kwargs", [dict(reduction="sum"), dict(label_form="hard")])
def test_invalid_reduction_and_label_form(kwargs):
  with pytest.raises(ValueError, match="reduction|label_form"):
    criteria.Criterion(**kwargs)
