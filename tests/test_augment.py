"""Tests of ltjax.augment against numpy crops of the zero-padded images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ltjax import augment


def random_images(shape, seed=0):
  # Pixel values 1..255 so that zero padding is distinguishable from image content.
  return np.random.default_rng(seed).integers(1, 256, size=shape, dtype=np.uint8)


def numpy_windows(image: np.ndarray, pad: int) -> list[np.ndarray]:
  """All (2 pad + 1)^2 shifted windows of the zero-padded image, and their mirrors."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  windows = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
             for dx in range(2 * pad + 1)]
  return windows + [win[:, ::-1] for win in windows]


@pytest.mark.parametrize("shape,pad", [((64, 32, 32, 3), 4), ((64, 8, 8, 1), 1),
                                       ((64, 8, 8, 3), 2), ((32, 28, 28, 1), 4),
                                       ((16, 6, 10, 2), 3)])
def test_crops_are_shifted_windows_of_padded_image(shape, pad):
  images = random_images(shape)
  out = np.asarray(augment.random_crop_flip(jax.random.key(1), images, pad))
  assert out.shape == shape and out.dtype == np.uint8
  for image, crop in zip(images, out):
    assert any(np.array_equal(crop, win) for win in numpy_windows(image, pad))


def test_offsets_cover_all_shifts_uniformly():
  # A single bright pixel at the centre reveals the sampled offset of each crop.
  pad, size, n = 2, 9, 5000
  images = np.zeros((n, size, size, 1), np.uint8)
  images[:, size // 2, size // 2] = 255
  out = np.asarray(augment.random_crop_flip(jax.random.key(3), images, pad, flip=False))
  rows, cols = np.nonzero(out[:, :, :, 0])[1:]
  assert rows.size == n  # the centre pixel never leaves the window for pad < size / 2
  dy = size // 2 + pad - rows
  dx = size // 2 + pad - cols
  hist = np.bincount(dy * (2 * pad + 1) + dx, minlength=(2 * pad + 1) ** 2)
  assert stats.chisquare(hist).pvalue > 1e-4


def test_flip_probability_is_half():
  n = 20_000
  images = np.zeros((n, 4, 4, 1), np.uint8)
  images[:, :, 0] = 255  # left column lit; a flip moves it to the right
  out = np.asarray(augment.random_crop_flip(jax.random.key(7), images, pad=0))
  flipped = out[:, 0, -1, 0] == 255
  np.testing.assert_array_equal(flipped, out[:, 0, 0, 0] == 0)
  assert stats.binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-4


def test_per_sample_independence():
  # The bright centre pixel reveals each crop's offset: offsets and flips of neighbouring
  # samples are independent (contingency tables of sample 2i against sample 2i + 1).
  pad, size, n = 2, 9, 8000
  images = np.zeros((n, size, size, 1), np.uint8)
  images[:, size // 2, size // 2 - 1] = 255  # left of the centre: a flip moves it by 2
  out = np.asarray(augment.random_crop_flip(jax.random.key(5), images, pad))
  _, rows, cols, _ = np.nonzero(out)
  assert rows.size == n
  dy = size // 2 + pad - rows
  for a, b in ((dy[0::2], dy[1::2]), (cols[0::2], cols[1::2])):
    table = np.histogram2d(a, b, bins=(np.unique(a).size, np.unique(b).size))[0]
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_identity_without_pad_and_flip():
  images = random_images((8, 12, 12, 3))
  out = augment.random_crop_flip(jax.random.key(0), images, pad=0, flip=False)
  np.testing.assert_array_equal(out, images)


def test_same_key_same_output_and_jit():
  images = random_images((32, 32, 32, 3))
  key = jax.random.key(9)
  eager = augment.random_crop_flip(key, images)
  np.testing.assert_array_equal(eager, augment.random_crop_flip(key, images))
  jitted = jax.jit(augment.random_crop_flip, static_argnums=(2, 3))(key, images, 4, True)
  np.testing.assert_array_equal(eager, jitted)
  assert not np.array_equal(eager, augment.random_crop_flip(jax.random.key(10), images))


def test_normalize_matches_numpy():
  images = random_images((4, 5, 5, 3))
  mean, std = np.array(augment.CIFAR_MEAN), np.array(augment.CIFAR_STD)
  expected = (images.astype(np.float64) / 255.0 - mean) / std
  out = augment.normalize(images)
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  gray = random_images((4, 28, 28, 1))
  np.testing.assert_allclose(augment.normalize(gray, 0.286, 0.353),
                             (gray / 255.0 - 0.286) / 0.353, rtol=1e-5, atol=1e-5)


def test_preprocess_modes():
  images = random_images((16, 8, 8, 3))
  key = jax.random.key(2)
  np.testing.assert_allclose(augment.preprocess(None, images, mode="center"),
                             augment.normalize(images), rtol=0, atol=0)
  trained = augment.preprocess(key, images, pad=1)
  np.testing.assert_allclose(
      trained, augment.normalize(augment.random_crop_flip(key, images, 1)), rtol=0, atol=0)
  jitted = jax.jit(lambda k, x: augment.preprocess(k, x, pad=1))(key, images)
  np.testing.assert_allclose(trained, jitted, rtol=1e-6, atol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="pad"):
    augment.random_crop_flip(jax.random.key(0), random_images((2, 8, 8, 3)), pad=-1)
  with pytest.raises(ValueError, match="shape"):
    augment.random_crop_flip(jax.random.key(0), random_images((8, 8, 3)))
  with pytest.raises(ValueError, match="mode"):
    augment.preprocess(jax.random.key(0), random_images((2, 8, 8, 3)), mode="resize")
  with pytest.raises(ValueError, match="key"):
    augment.preprocess(None, random_images((2, 8, 8, 3)))
