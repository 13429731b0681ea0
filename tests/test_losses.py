"""Tests of ltjax.losses against float64 numpy transcriptions of the published formulas."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import losses

CIFAR10_LT_100 = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
SEEDS = (0, 1, 2)
RTOL, ATOL = 2e-5, 1e-6


# ---------------------------------------------------------------- numpy references (float64)

def np_log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_soft_ce(z, y, w=None):
  """Mean of -sum_k y_k log p_k; with w the batch mean of -sum_k w_k y_ik log p_ik."""
  terms = -y * np_log_softmax(z)
  if w is None:
    return terms.sum(axis=1).mean()
  return (terms * w).sum(axis=1).mean()


def np_imbalanced_dl_mixup_drw(z, labels_a, labels_b, lam, w):
  """imbalanced-DL mixup-DRW: CE(weight=w, reduction='none') per side, mixed, .mean().

  lam may be a scalar or per sample (the label factor lam_y of Remix / MAMix).
  """
  rows = np.arange(len(labels_a))
  nll = -np_log_softmax(z)
  per_sample = (lam * w[labels_a] * nll[rows, labels_a]
                + (1 - lam) * w[labels_b] * nll[rows, labels_b])
  return per_sample.mean()


def np_torch_weighted_ce(z, labels, w):
  """PyTorch F.cross_entropy(z, labels, weight=w): sum_i w_{y_i} l_i / sum_i w_{y_i}."""
  rows = np.arange(len(labels))
  nll = -np_log_softmax(z)[rows, labels]
  return (w[labels] * nll).sum() / w[labels].sum()


def np_drw(n, beta):
  w = (1.0 - beta) / (1.0 - beta ** np.asarray(n, np.float64))
  return w / w.sum() * len(n)


def np_ldam_hard(z, labels, n, s, w=None):
  """Cao et al. 2019 reference: subtract m_y from the target logit, scale by s, CE."""
  m = 1.0 / np.sqrt(np.sqrt(np.asarray(n, np.float64)))
  m = m * (0.5 / m.max())
  out = z.copy()
  out[np.arange(len(labels)), labels] -= m[labels]
  if w is None:
    w = np.ones(len(n))
  return np_torch_weighted_ce(s * out, labels, w)


def np_focal_hard(z, labels, gamma):
  """Lin et al. 2017: mean of -(1 - p_t)^gamma log p_t."""
  log_pt = np_log_softmax(z)[np.arange(len(labels)), labels]
  return (-(1.0 - np.exp(log_pt)) ** gamma * log_pt).mean()


def np_dbn_temperatures(n, eta, eps, code):
  n = np.asarray(n, np.float64)
  b = eps * (len(n) if code else 1) * n / n.max() + (1.0 - eps)
  return (b.max() / b) ** (1.0 / eta)


def np_softmax(z):
  return np.exp(np_log_softmax(z))


# ---------------------------------------------------------------- random inputs

def one_hot(labels, k):
  return np.eye(k)[labels]


def random_case(seed, batch=8, k=6):
  """Logits, mixup soft labels (per-sample lambda) and random counts."""
  rng = np.random.default_rng(seed)
  z = rng.normal(scale=3.0, size=(batch, k))
  ya, yb = rng.integers(0, k, batch), rng.integers(0, k, batch)
  lam = rng.uniform(size=(batch, 1))
  y = lam * one_hot(ya, k) + (1 - lam) * one_hot(yb, k)
  counts = rng.integers(1, 3000, size=k)
  return z, y, counts


def f32(x):
  return jnp.asarray(x, jnp.float32)


def close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("seed", SEEDS)
def test_soft_cross_entropy_matches_numpy(seed):
  z, y, counts = random_case(seed)
  w = np_drw(counts, 0.999)
  close(losses.soft_cross_entropy(f32(z), f32(y)), np_soft_ce(z, y))
  close(losses.soft_cross_entropy(f32(z), f32(y), f32(w)), np_soft_ce(z, y, w))


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_cross_entropy_hard_labels_is_pytorch_weighting(seed):
  z, _, counts = random_case(seed)
  labels = np.random.default_rng(seed + 10).integers(0, z.shape[1], z.shape[0])
  w = np_drw(counts, 0.9999)
  got = losses.soft_cross_entropy(f32(z), f32(one_hot(labels, z.shape[1])), f32(w),
                                  reduction="normalized")
  close(got, np_torch_weighted_ce(z, labels, w))
  unweighted = losses.soft_cross_entropy(f32(z), f32(one_hot(labels, z.shape[1])))
  close(unweighted, np_torch_weighted_ce(z, labels, np.ones(z.shape[1])))


@pytest.mark.parametrize("seed", SEEDS)
def test_weighted_mean_of_mixup_labels_is_the_imbalanced_dl_reference(seed):
  """Defect 1 of the fidelity audit: reduction='mean' is (1/B) sum_i (lam w_a CE_a + ...)."""
  rng = np.random.default_rng(seed)
  z, _, counts = random_case(seed)
  k, batch = z.shape[1], z.shape[0]
  labels_a = rng.integers(0, k, batch)
  labels_b = rng.integers(0, k, batch)
  lam = rng.uniform(size=batch)
  w = np_drw(counts, 0.9999)
  y = lam[:, None] * one_hot(labels_a, k) + (1 - lam[:, None]) * one_hot(labels_b, k)
  expected = np_imbalanced_dl_mixup_drw(z, labels_a, labels_b, lam, w)
  close(losses.soft_cross_entropy(f32(z), f32(y), f32(w)), expected)
  close(losses.soft_cross_entropy(f32(z), f32(y), f32(w), reduction="mean"), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_normalized_reduction_with_sample_weights_is_one_side_of_pytorch_mixup(seed):
  """OTmix code: lam * F.cross_entropy(z, y_a, weight=w) + (1 - lam) * (... y_b)."""
  rng = np.random.default_rng(seed)
  z, _, counts = random_case(seed)
  k, batch = z.shape[1], z.shape[0]
  labels_a, labels_b = rng.integers(0, k, batch), rng.integers(0, k, batch)
  lam = rng.uniform()
  w = np_drw(counts, 0.9999)
  side = lambda labels, s: losses.soft_cross_entropy(
      f32(z), f32(one_hot(labels, k)), f32(w), reduction="normalized", sample_weights=s)
  expected = (lam * np_torch_weighted_ce(z, labels_a, w)
              + (1 - lam) * np_torch_weighted_ce(z, labels_b, w))
  close(side(labels_a, lam) + side(labels_b, 1 - lam), expected)


# ---------------------------------------------------------------- DRW

@pytest.mark.parametrize("beta", [0.9999, 0.999, 0.9, 0.0])
def test_drw_weights_match_effective_number_and_sum_to_k(beta):
  for seed in SEEDS:
    _, _, counts = random_case(seed, k=10)
    w = losses.drw_weights(counts, beta)
    close(w, np_drw(counts, beta))
    assert float(w.sum()) == pytest.approx(10.0, rel=1e-6)
  close(losses.drw_weights(CIFAR10_LT_100), np_drw(CIFAR10_LT_100, 0.9999))
  assert np.all(np.diff(np.asarray(losses.drw_weights(CIFAR10_LT_100))) > 0)


def test_drw_weights_beta_zero_are_ones():
  np.testing.assert_array_equal(losses.drw_weights(CIFAR10_LT_100, 0.0), np.ones(10))


def test_deferred_weights_switch_at_drw_epoch_under_jit():
  fn = jax.jit(functools.partial(losses.deferred_weights, CIFAR10_LT_100, drw_epoch=160))
  drw = np_drw(CIFAR10_LT_100, 0.9999)
  for epoch, expected in [(0, np.ones(10)), (159, np.ones(10)), (160, drw), (199, drw)]:
    close(fn(jnp.int32(epoch)), expected)
  traced_both = jax.jit(losses.deferred_weights)(CIFAR10_LT_100, 5, jnp.int32(5), 0.999)
  close(traced_both, np_drw(CIFAR10_LT_100, 0.999))


# ---------------------------------------------------------------- LDAM

def test_ldam_margins_max_half_and_proportional_to_n_quarter():
  m = np.asarray(losses.ldam_margins(CIFAR10_LT_100), np.float64)
  assert m.max() == pytest.approx(0.5, rel=1e-6)
  assert m.argmax() == 9
  ratio = m * CIFAR10_LT_100 ** 0.25
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
  assert float(losses.ldam_margins(CIFAR10_LT_100, 0.2).max()) == pytest.approx(0.2)


@pytest.mark.parametrize("seed", SEEDS)
def test_ldam_loss_hard_labels_match_cao_reference(seed):
  z, _, counts = random_case(seed)
  cosines = np.tanh(z)
  labels = np.random.default_rng(seed).integers(0, z.shape[1], z.shape[0])
  y = f32(one_hot(labels, z.shape[1]))
  margins = losses.ldam_margins(counts)
  w = np_drw(counts, 0.9999)
  close(losses.ldam_loss(f32(cosines), y, margins), np_ldam_hard(cosines, labels, counts, 30.0))
  # LDAMLoss passes its DRW weights to F.cross_entropy(weight=w): "normalized" by default.
  close(losses.ldam_loss(f32(cosines), y, margins, scale=10.0, weights=f32(w)),
        np_ldam_hard(cosines, labels, counts, 10.0, w))


@pytest.mark.parametrize("seed", SEEDS)
def test_ldam_loss_soft_labels_subtract_label_weighted_margins(seed):
  z, y, counts = random_case(seed)
  cosines = np.tanh(z)
  m = np.asarray(losses.ldam_margins(counts), np.float64)
  expected = np_soft_ce(30.0 * (cosines - y * m), y)
  close(losses.ldam_loss(f32(cosines), f32(y), f32(m)), expected)


# ---------------------------------------------------------------- balanced softmax

@pytest.mark.parametrize("seed", SEEDS)
def test_balanced_softmax_matches_numpy(seed):
  z, y, counts = random_case(seed)
  prior = np.log(counts / counts.sum())
  close(losses.log_prior(counts), prior)
  close(losses.balanced_softmax_loss(f32(z), f32(y), counts), np_soft_ce(z + prior, y))
  close(losses.balanced_softmax_loss(f32(z), f32(y), counts, tau=0.5),
        np_soft_ce(z + 0.5 * prior, y))
  w = np_drw(counts, 0.999)
  close(losses.balanced_softmax_loss(f32(z), f32(y), counts, weights=f32(w)),
        np_soft_ce(z + prior, y, w))


def test_balanced_softmax_with_uniform_counts_is_cross_entropy():
  z, y, _ = random_case(3)
  uniform = np.full(z.shape[1], 37)
  close(losses.balanced_softmax_loss(f32(z), f32(y), uniform), np_soft_ce(z, y))
  close(losses.balanced_softmax_loss(f32(z), f32(y), CIFAR10_LT_100[:6], tau=0.0),
        np_soft_ce(z, y))


# ---------------------------------------------------------------- focal

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_loss_matches_numpy(seed, gamma):
  z, y, _ = random_case(seed)
  p = np_softmax(z)
  expected = (-(y * (1 - p) ** gamma * np.log(p)).sum(axis=1)).mean()
  close(losses.focal_loss(f32(z), f32(y), gamma), expected)
  labels = np.argmax(y, axis=1)
  close(losses.focal_loss(f32(z), f32(one_hot(labels, z.shape[1])), gamma),
        np_focal_hard(z, labels, gamma))


def test_focal_loss_gamma_zero_is_cross_entropy():
  z, y, _ = random_case(4)
  close(losses.focal_loss(f32(z), f32(y), 0.0), np_soft_ce(z, y))


# ---------------------------------------------------------------- DBN-Mix temperatures

def test_dbn_temperatures_spec_numbers():
  paper = losses.dbn_temperatures(CIFAR10_LT_100, eta=3, eps=0.6, form="paper")
  code = losses.dbn_temperatures(CIFAR10_LT_100, eta=3, eps=0.6, form="code")
  assert float(paper[0]) == pytest.approx(1.0) and float(code[0]) == pytest.approx(1.0)
  assert float(paper[-1]) == pytest.approx(1.35, abs=0.005)
  assert float(code[-1]) == pytest.approx(2.41, abs=0.01)
  assert np.all(np.diff(np.asarray(paper)) > 0) and np.all(np.diff(np.asarray(code)) > 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eta,eps", [(3, 0.6), (7, 0.6), (9, 0.2), (10, 0.02), (2, 1.0)])
def test_dbn_temperatures_match_numpy(seed, eta, eps):
  _, _, counts = random_case(seed, k=10)
  close(losses.dbn_temperatures(counts, eta, eps), np_dbn_temperatures(counts, eta, eps, False))
  close(losses.dbn_temperatures(counts, eta, eps, form="code"),
        np_dbn_temperatures(counts, eta, eps, True))


def test_dbn_temperatures_eps_zero_are_ones():
  for form in losses.TEMPERATURE_FORMS:
    close(losses.dbn_temperatures(CIFAR10_LT_100, 3, 0.0, form), np.ones(10))


@pytest.mark.parametrize("seed", SEEDS)
def test_temperature_scaled_loss_matches_numpy(seed):
  z, y, counts = random_case(seed)
  t = np_dbn_temperatures(counts, 3, 0.6, True)
  close(losses.temperature_scaled_loss(f32(z), f32(y), f32(t)), np_soft_ce(z / t, y))
  p = np.clip(np_softmax(z / t), 1e-7, 1 - 1e-7)
  binary = (-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1)).mean()
  close(losses.temperature_scaled_loss(f32(z), f32(y), f32(t), form="binary"), binary)


def test_temperature_scaled_loss_unit_temperature_is_cross_entropy_and_clamps():
  z, y, _ = random_case(5)
  ones = np.ones(z.shape[1])
  close(losses.temperature_scaled_loss(f32(z), f32(y), f32(ones)), np_soft_ce(z, y))
  saturated = np.zeros((1, 3))
  saturated[0, 0] = 200.0  # p = (1, 0, 0) in float32 and float64
  y_sat = np.array([[0.0, 1.0, 0.0]])
  got = losses.temperature_scaled_loss(f32(saturated), f32(y_sat), f32(np.ones(3)), "binary")
  p = np.clip(np_softmax(saturated), 1e-7, 1 - 1e-7)
  expected = -(y_sat * np.log(p) + (1 - y_sat) * np.log(1 - p)).sum()
  assert np.isfinite(float(got))
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


# ---------------------------------------------------------------- jit, gradients, dtypes

def np_binary_temperature_loss(z, y, t, clamp=1e-7):
  """DBN-Mix code: -sum_k [y log p + (1 - y) log(1 - p)], p = softmax(z / T) clamped."""
  p = np_softmax(z / t)
  log_p = np.log(np.clip(p, clamp, 1 - clamp))
  log_q = np.log(np.clip(1 - p, clamp, 1 - clamp))
  return (-(y * log_p + (1 - y) * log_q).sum(axis=1)).mean()


def np_soft_ldam(cosines, y, margins, w, s=30.0):
  """LDAM on soft labels, reduced as F.cross_entropy(weight=w): sum w y l / sum w y."""
  terms = -y * np_log_softmax(s * (cosines - y * margins)) * w
  return terms.sum() / (y * w).sum()


def _loss_pairs(counts):
  """Each loss as (ltjax function of (z, y), float64 numpy reference of (z, y))."""
  margins = np.asarray(counts, np.float64) ** -0.25
  margins = margins * 0.5 / margins.max()
  weights = np_drw(counts, 0.9999)
  prior = np.log(counts / counts.sum())
  temps = np_dbn_temperatures(counts, 3, 0.6, True)
  np_focal = lambda g: lambda z, y: (-(y * (1 - np_softmax(z)) ** g
                                       * np_log_softmax(z)).sum(axis=1)).mean()
  return {
      "ce": (lambda z, y: losses.soft_cross_entropy(z, y), np_soft_ce),
      "weighted_ce": (lambda z, y: losses.soft_cross_entropy(z, y, f32(weights)),
                      lambda z, y: np_soft_ce(z, y, weights)),
      "ldam": (lambda z, y: losses.ldam_loss(jnp.tanh(z), y, f32(margins),
                                             weights=f32(weights)),
               lambda z, y: np_soft_ldam(np.tanh(z), y, margins, weights)),
      "balanced_softmax": (lambda z, y: losses.balanced_softmax_loss(z, y, counts),
                           lambda z, y: np_soft_ce(z + prior, y)),
      "focal_half": (lambda z, y: losses.focal_loss(z, y, 0.5), np_focal(0.5)),
      "focal": (lambda z, y: losses.focal_loss(z, y, 2.0), np_focal(2.0)),
      "temperature_ce": (lambda z, y: losses.temperature_scaled_loss(z, y, f32(temps)),
                         lambda z, y: np_soft_ce(z / temps, y)),
      "temperature_binary": (
          lambda z, y: losses.temperature_scaled_loss(z, y, f32(temps), "binary"),
          lambda z, y: np_binary_temperature_loss(z, y, temps)),
  }


def np_gradient(fn, z, y, h=1e-6):
  """Central differences of a float64 loss w.r.t. every logit."""
  grad = np.zeros_like(z)
  for idx in np.ndindex(z.shape):
    step = np.zeros_like(z)
    step[idx] = h
    grad[idx] = (fn(z + step, y) - fn(z - step, y)) / (2 * h)
  return grad


@pytest.mark.parametrize("name", sorted(_loss_pairs(CIFAR10_LT_100[:6])))
def test_jitted_loss_and_gradient_match_numpy_also_at_saturated_logits(name):
  z, y, counts = random_case(7)
  fn, np_fn = _loss_pairs(counts)[name]
  for logits in (z, 100.0 * z):
    value, grad = jax.jit(jax.value_and_grad(fn))(f32(logits), f32(y))
    np.testing.assert_allclose(float(value), np_fn(logits, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np_gradient(np_fn, logits, y),
                               rtol=1e-3, atol=1e-5)


def test_class_statistics_may_be_traced():
  z, y, counts = random_case(9)
  prior = np.log(counts / counts.sum())
  close(jax.jit(losses.balanced_softmax_loss)(f32(z), f32(y), counts), np_soft_ce(z + prior, y))
  temps = jax.jit(losses.dbn_temperatures, static_argnames="form")(counts, 3.0, 0.6, "code")
  close(temps, np_dbn_temperatures(counts, 3.0, 0.6, True))
  close(jax.jit(losses.drw_weights)(counts, 0.999), np_drw(counts, 0.999))
  margins = counts.astype(np.float64) ** -0.25
  close(jax.jit(losses.ldam_margins)(counts), margins * 0.5 / margins.max())


def test_bfloat16_logits_give_float32_loss():
  z, y, _ = random_case(8)
  got = losses.soft_cross_entropy(jnp.asarray(z, jnp.bfloat16), f32(y))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), np_soft_ce(z, y), rtol=0.05)


# ---------------------------------------------------------------- validation

Z, Y = f32(np.zeros((4, 3))), f32(one_hot(np.array([0, 1, 2, 0]), 3))
COUNTS = np.array([30, 20, 10])


@pytest.mark.parametrize("call,match", [
    (lambda: losses.soft_cross_entropy(Z, Y[:, :2]), "same shape"),
    (lambda: losses.soft_cross_entropy(Z[0], Y[0]), r"shape \(B, K\)"),
    (lambda: losses.soft_cross_entropy(Z, -Y), "soft_labels"),
    (lambda: losses.soft_cross_entropy(Z, Y, jnp.ones(4)), "weights"),
    (lambda: losses.soft_cross_entropy(Z, Y, -jnp.ones(3)), "weights"),
    (lambda: losses.drw_weights(np.array([3, -1, 2])), "non-negative"),
    (lambda: losses.drw_weights(np.array([3, 0, 2])), "empty"),
    (lambda: losses.drw_weights(COUNTS, 1.0), "beta"),
    (lambda: losses.drw_weights(COUNTS, -0.1), "beta"),
    (lambda: losses.deferred_weights(COUNTS, 3, 2, beta=1.5), "beta"),
    (lambda: losses.ldam_margins(np.array([3, 0, 2])), "empty"),
    (lambda: losses.ldam_margins(COUNTS, 0.0), "max_margin"),
    (lambda: losses.ldam_loss(Z, Y, jnp.ones(3), scale=0.0), "scale"),
    (lambda: losses.ldam_loss(Z, Y, jnp.ones(3), scale=-30.0), "scale"),
    (lambda: losses.ldam_loss(Z, Y, jnp.ones(2)), "margins"),
    (lambda: losses.log_prior(np.array([[1, 2]])), "1-D"),
    (lambda: losses.balanced_softmax_loss(Z, Y, np.array([1, 2])), "counts"),
    (lambda: losses.balanced_softmax_loss(Z, Y, np.array([1, 0, 2])), "empty"),
    (lambda: losses.balanced_softmax_loss(Z, Y, COUNTS, tau=-1.0), "tau"),
    (lambda: losses.focal_loss(Z, Y, gamma=-0.5), "gamma"),
    (lambda: losses.focal_loss(Z, Y[:3]), "same shape"),
    (lambda: losses.dbn_temperatures(COUNTS, eta=0.0, eps=0.6), "eta"),
    (lambda: losses.dbn_temperatures(COUNTS, eta=-3.0, eps=0.6), "eta"),
    (lambda: losses.dbn_temperatures(COUNTS, eta=3.0, eps=1.5), "eps"),
    (lambda: losses.dbn_temperatures(COUNTS, eta=3.0, eps=-0.1), "eps"),
    (lambda: losses.dbn_temperatures(COUNTS, 3.0, 0.6, form="other"), "form"),
    (lambda: losses.dbn_temperatures(np.array([5, 0, 1]), 3.0, 0.6), "empty"),
    (lambda: losses.temperature_scaled_loss(Z, Y, jnp.ones(3), form="bce"), "form"),
    (lambda: losses.temperature_scaled_loss(Z, Y, jnp.array([1.0, 0.0, 2.0])), "temperatures"),
    (lambda: losses.temperature_scaled_loss(Z, Y, jnp.ones(4)), "temperatures"),
    (lambda: losses.temperature_scaled_loss(Z, Y, jnp.ones(3), clamp=0.5), "clamp"),
])
def test_invalid_inputs_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
