"""Tests for ltjax.mixing against numpy references and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ltjax import mixing


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_sample_lambda_beta_moments_and_law(alpha):
  lam = np.asarray(mixing.sample_lambda(jax.random.key(0), alpha, (200_000,)), np.float64)
  var = 1.0 / (4.0 * (2.0 * alpha + 1.0))
  assert abs(lam.mean() - 0.5) < 5 * np.sqrt(var / lam.size)
  assert lam.var() == pytest.approx(var, rel=0.02)
  # Chi-square over 20 equiprobable Beta(alpha, alpha) bins; values outside [0, 1] fall
  # out of every bin. (float32 rounds mass near 1 to exactly 1: still the last bin.)
  law = stats.beta(alpha, alpha)
  edges = law.ppf(np.linspace(0, 1, 21))
  observed = np.histogram(lam, edges)[0]
  assert stats.chisquare(observed, np.full(20, lam.size / 20)).pvalue > 1e-3


def test_sample_lambda_shapes_zero_alpha_jit_and_errors():
  key = jax.random.key(1)
  assert mixing.sample_lambda(key, 1.0).shape == ()
  np.testing.assert_array_equal(mixing.sample_lambda(key, 0.0, (3,)), np.ones(3))
  jitted = jax.jit(mixing.sample_lambda, static_argnums=(1, 2))
  np.testing.assert_allclose(jitted(key, 2.0, ()), mixing.sample_lambda(key, 2.0),
                             rtol=1e-6)
  for bad in (-0.5, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="alpha"):
      mixing.sample_lambda(key, bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mix_inputs_and_labels_match_numpy(seed):
  rng = np.random.default_rng(seed)
  x_a, x_b = rng.normal(size=(2, 6, 4, 4, 3))
  y_a, y_b = np.eye(5)[rng.integers(0, 5, (2, 6))]
  lam_batch, lam_sample = rng.random(), rng.random(6)
  np.testing.assert_allclose(mixing.mix_inputs(x_a, x_b, lam_batch),
                             lam_batch * x_a + (1 - lam_batch) * x_b, rtol=1e-5, atol=1e-6)
  want = lam_sample[:, None, None, None] * x_a + (1 - lam_sample[:, None, None, None]) * x_b
  np.testing.assert_allclose(mixing.mix_inputs(x_a, x_b, lam_sample), want, rtol=1e-5,
                             atol=1e-6)
  mixed_y = mixing.mix_labels(y_a, y_b, lam_sample)
  np.testing.assert_allclose(mixed_y, lam_sample[:, None] * y_a
                             + (1 - lam_sample[:, None]) * y_b, rtol=1e-6, atol=1e-7)
  jitted = jax.jit(mixing.mix_inputs)(x_a, x_b, lam_sample)
  np.testing.assert_allclose(jitted, mixing.mix_inputs(x_a, x_b, lam_sample), rtol=1e-6,
                             atol=1e-6)


def test_mix_integer_inputs_give_float32():
  x = np.full((2, 3), 10, np.uint8)
  out = mixing.mix_inputs(x, np.zeros_like(x), 0.25)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, 2.5)


def test_mix_errors():
  x = np.zeros((4, 3))
  with pytest.raises(ValueError, match="same shape"):
    mixing.mix_inputs(x, np.zeros((4, 2)), 0.5)
  with pytest.raises(ValueError, match="lam must be a scalar"):
    mixing.mix_inputs(x, x, np.full(3, 0.5))
  with pytest.raises(ValueError, match="lam"):
    mixing.mix_labels(x, x, 1.5)


def _side(size, lam):
  return np.floor(size * np.sqrt(1.0 - np.float64(lam))).astype(int)


def _possible_intervals(size, cut):
  """All clipped intervals [lo, hi) a centre c in [0, size) can give (numpy reference)."""
  lo = np.arange(size) - cut // 2
  return set(zip(np.clip(lo, 0, size).tolist(), np.clip(lo + cut, 0, size).tolist()))


def test_cutmix_box_sides_and_clipping_match_formula():
  height, width = 32, 24
  lam = np.random.default_rng(0).uniform(0.01, 0.99, 2000).astype(np.float32)
  # stay away from float rounding at integer side lengths
  for size in (height, width):
    frac = size * np.sqrt(1 - lam.astype(np.float64))
    lam = lam[np.abs(frac - np.round(frac)) > 1e-3]
  y0, y1, x0, x1 = map(np.asarray, mixing.cutmix_box(jax.random.key(3), lam, height, width))
  cut_h, cut_w = _side(height, lam), _side(width, lam)
  assert ((0 <= y0) & (y0 <= y1) & (y1 <= height)).all()
  assert ((0 <= x0) & (x0 <= x1) & (x1 <= width)).all()
  inside_y = (y0 > 0) & (y1 < height)
  inside_x = (x0 > 0) & (x1 < width)
  assert inside_y.mean() > 0.2 and inside_x.mean() > 0.2
  np.testing.assert_array_equal((y1 - y0)[inside_y], cut_h[inside_y])
  np.testing.assert_array_equal((x1 - x0)[inside_x], cut_w[inside_x])
  for i in range(0, lam.size, 7):
    assert (y0[i], y1[i]) in _possible_intervals(height, cut_h[i])
    assert (x0[i], x1[i]) in _possible_intervals(width, cut_w[i])


def test_cutmix_box_centre_is_uniform():
  height = width = 16
  lam = np.full(20_000, 0.75, np.float32)  # cut = 8: y0 = clip(cy - 4)
  y0, _, x0, _ = map(np.asarray, mixing.cutmix_box(jax.random.key(4), lam, height, width))
  for start in (y0, x0):
    observed = np.bincount(start, minlength=height)[:12]  # starts 0..11, 0 pools cy <= 4
    expected = lam.size / height * np.array([5.0] + [1.0] * 11)
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_box_mask_matches_numpy_slices():
  rng = np.random.default_rng(5)
  box = [rng.integers(0, 9, 4) for _ in range(4)]
  box = (np.minimum(box[0], box[1]), np.maximum(box[0], box[1]),
         np.minimum(box[2], box[3]), np.maximum(box[2], box[3]))
  masks = np.asarray(mixing.box_mask(box, 8, 9))
  assert masks.shape == (4, 8, 9) and masks.dtype == bool
  for i in range(4):
    want = np.zeros((8, 9), bool)
    want[box[0][i]:box[1][i], box[2][i]:box[3][i]] = True
    np.testing.assert_array_equal(masks[i], want)
    single = mixing.box_mask(tuple(b[i] for b in box), 8, 9)
    np.testing.assert_array_equal(single, want)


def _back_fore(batch=8, height=12, width=10):
  rng = np.random.default_rng(6)
  back = rng.normal(size=(batch, height, width, 3)).astype(np.float32)
  return back, back + 100.0  # every foreground pixel differs from its background pixel


def test_cutmix_per_batch_pastes_one_box_and_recomputes_lambda():
  back, fore = _back_fore()
  key = jax.random.key(7)
  mixed, lam_back = mixing.cutmix(key, back, fore, 0.6)
  # The pasted region, read off the output (every foreground pixel differs): one
  # axis-aligned box shared by the batch, of side floor(H sqrt(1 - lam)) x floor(W ...)
  # unless clipped at the border (Yun et al. 2019).
  pasted = np.asarray(mixed == fore).all(axis=-1)
  assert (pasted == pasted[0]).all()
  rows, cols = np.flatnonzero(pasted[0].any(1)), np.flatnonzero(pasted[0].any(0))
  y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  assert pasted[0, y0:y1, x0:x1].all() and pasted[0].sum() == (y1 - y0) * (x1 - x0)
  side_h, side_w = int(12 * np.sqrt(0.4)), int(10 * np.sqrt(0.4))
  assert y1 - y0 == side_h or y0 == 0 or y1 == 12
  assert x1 - x0 == side_w or x0 == 0 or x1 == 10
  want = back.copy()
  want[:, y0:y1, x0:x1] = fore[:, y0:y1, x0:x1]
  np.testing.assert_array_equal(mixed, want)
  assert lam_back.shape == ()
  np.testing.assert_allclose(lam_back, 1 - (y1 - y0) * (x1 - x0) / 120, rtol=1e-6)
  from_back = np.asarray(mixed == back).all(axis=-1).mean(axis=(1, 2))
  np.testing.assert_allclose(from_back, lam_back, rtol=1e-6)
  jitted = jax.jit(mixing.cutmix, static_argnums=4)(key, back, fore, 0.6, False)
  np.testing.assert_array_equal(jitted[0], mixed)


def test_cutmix_per_sample_boxes_and_edge_cases():
  back, fore = _back_fore(batch=16)
  lam = np.random.default_rng(8).uniform(0.2, 0.8, 16).astype(np.float32)
  mixed, lam_back = mixing.cutmix(jax.random.key(9), back, fore, lam, per_sample=True)
  assert lam_back.shape == (16,)
  from_fore = np.asarray(mixed == fore).all(axis=-1)
  np.testing.assert_allclose(1 - from_fore.mean(axis=(1, 2)), lam_back, rtol=1e-6)
  assert len({m.tobytes() for m in from_fore}) > 1  # boxes differ between samples
  _, lam_scalar = mixing.cutmix(jax.random.key(9), back, fore, 0.5, per_sample=True)
  assert lam_scalar.shape == (16,)
  same, lam_one = mixing.cutmix(jax.random.key(0), back, fore, 1.0)
  np.testing.assert_array_equal(same, back)
  assert float(lam_one) == 1.0


def test_cutmix_errors():
  back, fore = _back_fore()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="per_sample"):
    mixing.cutmix(key, back, fore, np.full(8, 0.5))
  with pytest.raises(ValueError, match="same shape"):
    mixing.cutmix(key, back, fore[:, :5], 0.5)
  with pytest.raises(ValueError, match="lam"):
    mixing.cutmix(key, back, fore, np.full(3, 0.5), per_sample=True)
  with pytest.raises(ValueError, match="lam"):
    mixing.cutmix_box(key, 1.2, 8, 8)
  with pytest.raises(ValueError, match="height"):
    mixing.box_mask((0, 1, 0, 1), 0, 8)
