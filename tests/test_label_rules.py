"""Tests for ltjax.label_rules against float64 numpy transcriptions of the papers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ltjax import label_rules, mixing

CIFAR10_LT = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
SEEDS = [0, 1, 2, 3]


def _inputs(seed, size=256):
  rng = np.random.default_rng(seed)
  lam = rng.beta(1.0, 1.0, size)
  n_a, n_b = rng.choice(CIFAR10_LT, size), rng.choice(CIFAR10_LT, size)
  return lam, n_a, n_b


# float64 numpy transcriptions -------------------------------------------------------

def np_remix(lam, n_a, n_b, kappa=3.0, tau=0.5):  # MAMix paper eq. 6
  out = lam.copy()
  out[(n_a / n_b >= kappa) & (lam < tau)] = 0.0
  out[(n_a / n_b <= 1 / kappa) & (1 - lam < tau)] = 1.0
  return out


def np_mamix(lam, n_a, n_b, omega=0.25):  # MAMix paper eq. 13, 16
  eta_a, eta_b = 1 / n_a ** omega, 1 / n_b ** omega
  m = eta_b / (eta_a + eta_b)
  return np.where(lam >= m, 1 - (1 - lam) * 0.5 / (eta_a / (eta_a + eta_b)),
                  0.5 * lam / m)


def np_reference_get_lambda(x, n_a, n_b, f=-0.25):  # ImbalancedDL get_k / get_lambda
  k1, k2 = n_a ** f, n_b ** f
  middle = k1 / (k1 + k2)
  return np.where(x < middle, -0.5 * x / middle + 1.0, (x - 1.0) * 0.5 / (middle - 1.0))


def np_cpmix(lam, n_a, n_b, t=0.5):
  return t * lam + (1 - t) * n_b / (n_a + n_b)


@pytest.mark.parametrize("seed", SEEDS)
def test_rules_match_numpy_transcriptions(seed):
  lam, n_a, n_b = _inputs(seed)
  cases = [
      (label_rules.vanilla(lam, n_a, n_b), lam),
      (label_rules.remix(lam, n_a, n_b), np_remix(lam, n_a, n_b)),
      (label_rules.remix(lam, n_a, n_b, kappa=10.0, tau=0.3),
       np_remix(lam, n_a, n_b, 10.0, 0.3)),
      (label_rules.mamix(lam, n_a, n_b), np_mamix(lam, n_a, n_b)),
      (label_rules.mamix(lam, n_a, n_b, omega=1.0), np_mamix(lam, n_a, n_b, 1.0)),
      (label_rules.mamix_reference(lam, n_a, n_b), np_reference_get_lambda(lam, n_a, n_b)),
      (label_rules.cpmix(lam, n_a, n_b), np_cpmix(lam, n_a, n_b)),
      (label_rules.cpmix(lam, n_a, n_b, t=0.8), np_cpmix(lam, n_a, n_b, 0.8)),
  ]
  for got, want in cases:
    got = np.asarray(got, np.float64)
    assert got.shape == lam.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(label_rules.RULES))
def test_scalar_lam_broadcasts_and_jit_agrees(name):
  _, n_a, n_b = _inputs(7, size=16)
  rule = label_rules.get_rule(name)
  out = rule(0.3, n_a, n_b)
  assert out.shape == (16,)
  np.testing.assert_allclose(jax.jit(rule)(0.3, n_a, n_b), out, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out, np.asarray(rule(np.full(16, 0.3), n_a, n_b)), rtol=1e-6)


def test_remix_hits_each_case():
  lam = np.array([0.2, 0.8, 0.9, 0.1, 0.4, 0.6])
  n_a = np.array([300, 300, 100, 100, 200, 200])
  n_b = np.array([100, 100, 300, 300, 100, 100])
  # a 3-majority & lam < tau -> 0; a 3-majority & lam >= tau -> lam;
  # b 3-majority & 1 - lam < tau -> 1; b 3-majority & 1 - lam >= tau -> lam; ratio 2 -> lam
  np.testing.assert_allclose(label_rules.remix(lam, n_a, n_b),
                             [0.0, 0.8, 1.0, 0.1, 0.4, 0.6], rtol=1e-6)
  # The random inputs of test_rules_match_numpy_transcriptions reach every case.
  hits = np.zeros(3, int)
  for seed in SEEDS:
    lam, n_a, n_b = _inputs(seed)
    got = np_remix(lam, n_a, n_b)
    zero = (got == 0) & (lam != 0)
    one = (got == 1) & (lam != 1)
    hits += [zero.sum(), one.sum(), (~zero & ~one).sum()]
  assert (hits > 20).all()


@pytest.mark.parametrize("n_a, n_b", [(5000, 50), (50, 5000), (1077, 139), (200, 200)])
def test_mamix_crossover_monotone_continuous(n_a, n_b):
  eta_a, eta_b = n_a ** -0.25, n_b ** -0.25
  m = eta_b / (eta_a + eta_b)
  assert float(label_rules.mamix(m, n_a, n_b)) == pytest.approx(0.5, abs=1e-6)
  grid = np.linspace(0.0, 1.0, 4001)
  lam_y = np.asarray(label_rules.mamix(grid, n_a, n_b), np.float64)
  assert lam_y[0] == pytest.approx(0.0, abs=1e-7) and lam_y[-1] == pytest.approx(1.0)
  assert (np.diff(lam_y) > 0).all()
  slope = 0.5 / min(m, 1 - m)  # the steeper of the two linear pieces
  assert np.abs(np.diff(lam_y)).max() <= slope * (grid[1] - grid[0]) * (1 + 1e-3)
  for side in (m - 1e-5, m + 1e-5):
    assert float(label_rules.mamix(side, n_a, n_b)) == pytest.approx(0.5, abs=1e-4)
  if n_a > n_b:  # label favours the minority: half y_a only once x is mostly x_a
    assert m > 0.5 and float(label_rules.mamix(0.5, n_a, n_b)) < 0.5


def test_paper_rule_at_one_minus_lam_is_the_reference_code_label():
  """imbalanced-DL mixes (1 - lam) x_a + lam x_b and labels with get_lambda(lam); the
  paper's x = lam' x_a + (1 - lam') x_b is the same input for lam' = 1 - lam, and
  `label_rules.mamix(lam')` must then give the code's label (numpy transcription)."""
  lam, n_a, n_b = _inputs(11)
  np.testing.assert_allclose(label_rules.mamix(1 - lam, n_a, n_b),
                             np_reference_get_lambda(lam, n_a, n_b), rtol=1e-5, atol=1e-6)


def np_mamix_inverse(t, n_a, n_b, omega=0.25):
  """The lam with np_mamix(lam) = t (both pieces are increasing and linear)."""
  eta_a, eta_b = n_a ** -omega, n_b ** -omega
  m = eta_b / (eta_a + eta_b)
  return np.where(t < 0.5, 2 * t * m, 1 - 2 * (1 - t) * (1 - m))


@pytest.mark.parametrize("n_a, n_b", [(5000, 50), (139, 1796)])
def test_mamix_conventions_follow_the_stated_law(n_a, n_b):
  """Both conventions draw lam ~ Beta(a, a); the weight of x_a (lam, or 1 - lam_ref) is
  Beta(a, a), and the label, an increasing function of it, has the CDF
  t -> BetaCDF(mamix^-1(t))."""
  size, alpha = 4000, 0.5
  lam_paper = np.asarray(mixing.sample_lambda(jax.random.key(2), alpha, (size,)), np.float64)
  lam_ref = np.asarray(mixing.sample_lambda(jax.random.key(3), alpha, (size,)), np.float64)
  weight_law = stats.beta(alpha, alpha).cdf
  label_law = lambda t: weight_law(np_mamix_inverse(t, n_a, n_b))
  labels = {"paper": (lam_paper, label_rules.mamix(lam_paper, n_a, n_b)),
            "reference": (1 - lam_ref, label_rules.mamix_reference(lam_ref, n_a, n_b))}
  for weight, label in labels.values():
    assert stats.kstest(weight, weight_law).pvalue > 1e-3
    assert stats.kstest(np.asarray(label, np.float64), label_law).pvalue > 1e-3


@pytest.mark.parametrize("seed", SEEDS)
def test_bilateral(seed):
  lam = np.random.default_rng(seed).random(64)
  lam_c, lam_r = label_rules.bilateral(lam)
  np.testing.assert_allclose(lam_c, np.maximum(lam, 1 - lam), rtol=1e-6)
  np.testing.assert_allclose(lam_r, np.minimum(lam, 1 - lam), rtol=1e-6, atol=1e-7)


def test_get_rule_binds_hyperparameters():
  lam, n_a, n_b = _inputs(5)
  rule = label_rules.get_rule("remix", kappa=10.0)
  np.testing.assert_allclose(rule(lam, n_a, n_b), np_remix(lam, n_a, n_b, 10.0),
                             rtol=1e-6)
  assert rule.__name__ == "remix"
  np.testing.assert_allclose(label_rules.get_rule("cpmix", t=1.0)(lam, n_a, n_b), lam,
                             rtol=1e-6)
  np.testing.assert_allclose(label_rules.get_rule("mamix", omega=0.0)(lam, n_a, n_b), lam,
                             rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("call, match", [
    (lambda: label_rules.get_rule("nope"), "Unknown label rule"),
    (lambda: label_rules.get_rule("mamix", kappa=3.0), "hyperparameters"),
    (lambda: label_rules.get_rule("remix", kappa=0.5), "kappa"),
    (lambda: label_rules.get_rule("remix", tau=1.5), "tau"),
    (lambda: label_rules.get_rule("mamix", omega=-1.0), "omega"),
    (lambda: label_rules.get_rule("cpmix", t=2.0), "t must"),
    (lambda: label_rules.vanilla(1.5, 1, 1), "lam"),
    (lambda: label_rules.mamix(0.5, np.array([0, 3]), np.array([1, 1])), "n_a"),
    (lambda: label_rules.cpmix(0.5, 3, -1), "n_b"),
    (lambda: label_rules.bilateral(-0.1), "lam"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_traced_counts_skip_value_checks():
  n_a, n_b = np.array([10, 20]), np.array([5, 5])
  out = jax.jit(label_rules.mamix)(jnp.float32(0.5), jnp.asarray(n_a), jnp.asarray(n_b))
  np.testing.assert_allclose(out, np_mamix(np.full(2, 0.5), n_a, n_b), rtol=1e-6)
