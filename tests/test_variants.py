"""The primitives give the same results with and without `jit` (and under `vmap` where a
per-sample call is meaningful), checked against independent numpy references."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from ltjax import label_rules, losses, mixing, pairing, samplers

RTOL = 1e-5
LABELS = np.array([2, 0, 1, 2, 2, 0, 2, 1, 2, 2])  # counts 2, 2, 6
COUNTS = np.bincount(LABELS, minlength=3)
INDEX = samplers.build_class_index(LABELS, 3)
VARIANTS = chex.variants(with_jit=True, without_jit=True)


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def np_uniform_in_class(u: np.ndarray, classes: np.ndarray) -> np.ndarray:
  """Index number floor(u n_k) among the members of class k, in dataset order."""
  members = [np.flatnonzero(LABELS == k) for k in range(len(COUNTS))]
  return np.array([members[k][int(np.floor(v * COUNTS[k]))] for v, k in zip(u, classes)])


def np_log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


class SamplerVariantsTest(chex.TestCase):

  @VARIANTS
  def test_draw_from_classes(self):
    key, classes = jax.random.key(3), np.array([0, 2, 1, 2, 0, 1, 2])
    u = np.asarray(jax.random.uniform(key, classes.shape))
    got = self.variant(samplers.draw_from_classes)(key, INDEX, jnp.asarray(classes))
    np.testing.assert_array_equal(got, np_uniform_in_class(u, classes))

  @VARIANTS
  def test_draw_indices(self):
    key, probs, num = jax.random.key(4), jnp.array([0.5, 0.0, 0.5]), 64
    key_class, key_item = jax.random.split(key)
    classes = np.asarray(jax.random.categorical(key_class, jnp.log(probs), shape=(num,)))
    u = np.asarray(jax.random.uniform(key_item, (num,)))
    got = self.variant(samplers.draw_indices, static_argnums=3)(key, INDEX, probs, num)
    np.testing.assert_array_equal(got, np_uniform_in_class(u, classes))
    assert not np.isin(1, LABELS[np.asarray(got)])

  @VARIANTS
  def test_class_laws(self):
    n = COUNTS.astype(np.float64)
    expected = {
        "instance": n / n.sum(),
        "class_balanced": np.full(3, 1 / 3),
        "reverse": (n.max() / n) ** 0.5 / ((n.max() / n) ** 0.5).sum(),
        "inverse_power": n ** -1.0 / (n ** -1.0).sum(),
    }
    for name, want in expected.items():
      law = functools.partial(samplers.class_probs, name, gamma=2.0, r=1.0)
      np.testing.assert_allclose(self.variant(law)(jnp.asarray(COUNTS)), want, rtol=RTOL)


class MixingVariantsTest(chex.TestCase):

  @VARIANTS
  def test_mix_inputs_batch_and_per_sample_lam(self):
    rng = _rng(1)
    x_a, x_b = rng.normal(size=(2, 5, 4)).astype(np.float32)
    lam = rng.uniform(size=5).astype(np.float32)
    mix = self.variant(mixing.mix_inputs)
    np.testing.assert_allclose(mix(x_a, x_b, 0.3), 0.3 * x_a + 0.7 * x_b, rtol=RTOL)
    np.testing.assert_allclose(mix(x_a, x_b, lam), lam[:, None] * x_a +
                               (1 - lam[:, None]) * x_b, rtol=RTOL, atol=1e-6)

  @VARIANTS
  def test_mix_inputs_vmapped_per_sample(self):
    rng = _rng(2)
    x_a, x_b = rng.normal(size=(2, 6, 3)).astype(np.float32)
    lam = rng.uniform(size=6).astype(np.float32)
    got = self.variant(jax.vmap(mixing.mix_inputs))(x_a, x_b, lam)
    np.testing.assert_allclose(got, lam[:, None] * x_a + (1 - lam[:, None]) * x_b,
                               rtol=RTOL, atol=1e-6)

  @VARIANTS
  def test_paste_box_per_sample(self):
    rng = _rng(3)
    back, fore = rng.normal(size=(2, 3, 6, 5, 2)).astype(np.float32)
    box = tuple(np.array(b, np.int32) for b in ([0, 2, 5], [3, 6, 6], [1, 0, 4], [4, 5, 4]))
    mixed, lam_back = self.variant(mixing.paste_box)(back, fore, box)
    expected, area = back.copy(), []
    for i, (y0, y1, x0, x1) in enumerate(zip(*box)):
      expected[i, y0:y1, x0:x1] = fore[i, y0:y1, x0:x1]
      area.append((y1 - y0) * (x1 - x0))
    np.testing.assert_array_equal(mixed, expected)
    np.testing.assert_allclose(lam_back, 1 - np.array(area) / 30, rtol=RTOL)

  @VARIANTS
  def test_cutmix_pastes_its_box(self):
    rng = _rng(4)
    back, fore = rng.normal(size=(2, 2, 7, 7, 1)).astype(np.float32)
    key = jax.random.key(9)
    y0, y1, x0, x1 = (int(b) for b in mixing.cutmix_box(key, 0.6, 7, 7))
    mixed, lam_back = self.variant(mixing.cutmix)(key, back, fore, 0.6)
    expected = back.copy()
    expected[:, y0:y1, x0:x1] = fore[:, y0:y1, x0:x1]
    np.testing.assert_array_equal(mixed, expected)
    np.testing.assert_allclose(lam_back, 1 - (y1 - y0) * (x1 - x0) / 49, rtol=RTOL)


def np_remix(lam, n_a, n_b, kappa=3.0, tau=0.5):
  return np.where((n_a / n_b >= kappa) & (lam < tau), 0.0,
                  np.where((n_a / n_b <= 1 / kappa) & (1 - lam < tau), 1.0, lam))


def np_mamix(lam, n_a, n_b, omega=0.25):
  eta_a, eta_b = n_a ** -omega, n_b ** -omega
  m = eta_b / (eta_a + eta_b)
  return np.where(lam >= m, 1 - 0.5 * (1 - lam) / (eta_a / (eta_a + eta_b)), 0.5 * lam / m)


def np_cpmix(lam, n_a, n_b, t=0.5):
  return t * lam + (1 - t) * n_b / (n_a + n_b)


class LabelRuleVariantsTest(chex.TestCase):

  def _inputs(self):
    rng = _rng(5)
    lam = rng.uniform(size=32)
    n_a, n_b = rng.choice([5.0, 17.0, 50.0, 200.0, 5000.0], size=(2, 32))
    return lam.astype(np.float32), n_a.astype(np.float32), n_b.astype(np.float32)

  def _check(self, rule, reference):
    lam, n_a, n_b = self._inputs()
    want = reference(lam.astype(np.float64), n_a.astype(np.float64), n_b.astype(np.float64))
    for fn in (rule, jax.vmap(rule)):  # batched, and one pair per vmapped call
      np.testing.assert_allclose(self.variant(fn)(lam, n_a, n_b), want, rtol=RTOL,
                                 atol=1e-6)

  @VARIANTS
  def test_vanilla(self):
    self._check(label_rules.vanilla, lambda lam, n_a, n_b: lam)

  @VARIANTS
  def test_remix(self):
    self._check(functools.partial(label_rules.remix, kappa=3.0, tau=0.5), np_remix)

  @VARIANTS
  def test_mamix_and_its_reference_convention(self):
    self._check(label_rules.mamix, np_mamix)
    self._check(label_rules.mamix_reference,
                lambda lam, n_a, n_b: np_mamix(1 - lam, n_a, n_b))

  @VARIANTS
  def test_cpmix(self):
    self._check(functools.partial(label_rules.cpmix, t=0.3),
                functools.partial(np_cpmix, t=0.3))

  @VARIANTS
  def test_bilateral(self):
    lam = self._inputs()[0]
    lam_c, lam_r = self.variant(label_rules.bilateral)(lam)
    np.testing.assert_allclose(lam_c, np.maximum(lam, 1 - lam), rtol=RTOL)
    np.testing.assert_allclose(lam_r, np.minimum(lam, 1 - lam), rtol=RTOL)


class PairingVariantsTest(chex.TestCase):

  @VARIANTS
  def test_nearest_neighbours(self):
    rng = _rng(6)
    z = rng.normal(size=(9, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=9)
    dist = ((z[:, None] - z[None]) ** 2).sum(-1) + np.diag(np.full(9, np.inf))
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    cos_dist = 1 - unit @ unit.T + np.diag(np.full(9, np.inf))
    same = np.where(labels[:, None] == labels[None], dist, np.inf)
    want_same = np.where(np.isinf(same).all(1), np.arange(9), same.argmin(1))
    nn = lambda same_class, metric: self.variant(functools.partial(
        pairing.nearest_neighbours, same_class=same_class, metric=metric))
    np.testing.assert_array_equal(nn(False, "euclidean")(z, labels), dist.argmin(1))
    np.testing.assert_array_equal(nn(False, "cosine")(z, labels), cos_dist.argmin(1))
    np.testing.assert_array_equal(nn(True, "euclidean")(z, labels), want_same)

  @VARIANTS
  def test_confusion_update_and_normalisation(self):
    labels, preds = np.array([0, 1, 1, 2, 2, 2, 0]), np.array([1, 1, 0, 0, 1, 0, 0])
    start = np.arange(9, dtype=np.float32).reshape(3, 3)
    want = start.copy()
    np.add.at(want, (labels, preds), (labels != preds).astype(np.float32))
    got = self.variant(pairing.confusion_matrix_update)(start, labels, preds)
    np.testing.assert_array_equal(got, want)
    f_hat = want / want.sum(1, keepdims=True)
    np.fill_diagonal(f_hat, 0.0)
    np.testing.assert_allclose(self.variant(pairing.normalized_confusion)(want), f_hat,
                               rtol=RTOL)

  @VARIANTS
  def test_confusion_partners_of_single_entry_rows(self):
    counts = np.array([[5, 0, 2], [3, 9, 0], [0, 4, 1]], np.float32)  # one partner per row
    true = np.array([0, 1, 2, 2, 0, 1])
    got = self.variant(pairing.confusion_partners)(jax.random.key(0), counts, true)
    np.testing.assert_array_equal(got, np.array([2, 0, 1])[true])

  @VARIANTS
  def test_ot_cost(self):
    rng = _rng(7)
    z_f, z_b = rng.normal(size=(2, 4, 5)).astype(np.float32)
    y_f, y_b = np.array([0, 1, 2, 1]), np.array([2, 2, 0, 1])
    f_hat = rng.uniform(size=(3, 3)).astype(np.float32)
    np.fill_diagonal(f_hat, 0.0)
    unit = lambda z: z / np.linalg.norm(z, axis=1, keepdims=True)
    want = 0.2 * (1 - unit(z_f) @ unit(z_b).T) + 0.8 * (1 - f_hat[y_f][:, y_b])
    got = self.variant(functools.partial(pairing.ot_cost, w=0.2))(z_f, z_b, y_f, y_b, f_hat)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)

  @VARIANTS
  def test_ot_pairs_recover_a_zero_cost_permutation(self):
    perm = np.array([3, 0, 4, 1, 2])
    cost = 1.0 - np.eye(5, dtype=np.float32)[perm]
    np.testing.assert_array_equal(self.variant(pairing.ot_pairs)(cost), perm)


class LossVariantsTest(chex.TestCase):

  def _batch(self):
    rng = _rng(8)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.dirichlet(np.ones(3), size=6).astype(np.float32)
    return logits, y

  @VARIANTS
  def test_soft_cross_entropy_both_reductions(self):
    logits, y = self._batch()
    w = np.array([0.5, 1.0, 2.0], np.float32)
    terms = -(w * y * np_log_softmax(logits.astype(np.float64)))
    for reduction, want in (("mean", terms.sum() / 6),
                            ("normalized", terms.sum() / (w * y).sum())):
      loss = functools.partial(losses.soft_cross_entropy, reduction=reduction)
      np.testing.assert_allclose(self.variant(loss)(logits, y, w), want, rtol=RTOL)

  @VARIANTS
  def test_balanced_softmax_and_ldam(self):
    logits, y = self._batch()
    counts = np.array([100, 20, 4])
    adjusted = logits + np.log(counts / counts.sum())
    want_bs = -(y * np_log_softmax(adjusted.astype(np.float64))).sum() / 6
    np.testing.assert_allclose(self.variant(losses.balanced_softmax_loss)(logits, y, counts),
                               want_bs, rtol=RTOL)
    margins = np.array([0.1, 0.2, 0.5], np.float32)
    scaled = 30.0 * (logits - y * margins)
    want_ldam = -(y * np_log_softmax(scaled.astype(np.float64))).sum() / y.sum()
    np.testing.assert_allclose(self.variant(losses.ldam_loss)(logits, y, margins), want_ldam,
                               rtol=RTOL)

  @VARIANTS
  def test_focal_loss(self):
    logits, y = self._batch()
    log_p = np_log_softmax(logits.astype(np.float64))
    want = -(y * (1 - np.exp(log_p)) ** 2.0 * log_p).sum() / 6
    focal = functools.partial(losses.focal_loss, gamma=2.0)
    np.testing.assert_allclose(self.variant(focal)(logits, y), want, rtol=RTOL)
