"""Spectral-residual saliency and the SaliencyMix box (ltjax.mixing), and OTmix's
`box_placement="saliency"` (the "OTmix (SaliencyMix)" of OTmix Table 3).

The reference is written from Hou & Zhang 2007 ("Saliency Detection: A Spectral Residual
Approach", CVPR) in float64 numpy / scipy, independently of ltjax: grey image I (BT.601
luma), F = fft2(I), L = log(|F| + 1e-3 mean|F|), R = L - uniform_filter_3x3(L) (periodic),
S = gaussian(|ifft2(exp(R + i angle(F)))|^2), the Gaussian as a normalised convolution
(zero padding divided by the filter's mass inside the image); the box is CutMix's side
floor(H sqrt(1 - lam)) centred on argmax S (SaliencyMix, Uddin et al. 2021), clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ltjax import methods, mixing, recipe, samplers


# ------------------------------------------------------------------------- reference

def np_grey(image: np.ndarray) -> np.ndarray:
  image = image.astype(np.float64)
  if image.shape[-1] == 3:
    return 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
  return image.mean(-1)


def np_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian smoothing that reads only pixels inside the image (normalised convolution)."""
  truncate = 4 * max(x.shape) / sigma  # no truncation inside the image
  blur = lambda a: ndimage.gaussian_filter(a, sigma, mode="constant", cval=0.0,
                                           truncate=truncate)
  return blur(x) / blur(np.ones_like(x))


def np_saliency(image: np.ndarray, sigma: float) -> np.ndarray:
  """Hou & Zhang 2007, sec. 2-3, of one (H, W, C) image, in float64."""
  spectrum = np.fft.fft2(np_grey(image))
  amplitude = np.abs(spectrum)
  log_amplitude = np.log(amplitude + 1e-3 * amplitude.mean())
  residual = log_amplitude - ndimage.uniform_filter(log_amplitude, size=3, mode="wrap")
  energy = np.abs(np.fft.ifft2(np.exp(residual) * np.exp(1j * np.angle(spectrum)))) ** 2
  return np_smooth(energy, sigma)


def np_box(saliency: np.ndarray, lam: float) -> tuple[int, int, int, int]:
  height, width = saliency.shape
  cy, cx = np.unravel_index(np.argmax(saliency), saliency.shape)
  cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
  y0, x0 = cy - cut_h // 2, cx - cut_w // 2
  return (int(np.clip(y0, 0, height)), int(np.clip(y0 + cut_h, 0, height)),
          int(np.clip(x0, 0, width)), int(np.clip(x0 + cut_w, 0, width)))


def random_images(shape, seed=0):
  """Smooth random scenes plus noise (every DFT amplitude well above zero)."""
  rng = np.random.default_rng(seed)
  smooth = ndimage.gaussian_filter(rng.normal(size=shape), (0, 2, 2, 0)) * 4
  return (smooth + 0.3 * rng.normal(size=shape)).astype(np.float32)


def square_images(corners, size=32, side=6, channels=3):
  """Flat background (0.2) with one bright square (1.0) per image at `corners` (row, col)."""
  images = np.full((len(corners), size, size, channels), 0.2, np.float32)
  for image, (r, c) in zip(images, corners):
    image[r:r + side, c:c + side] = 1.0
  return images


# ------------------------------------------------------------------- saliency map

@pytest.mark.parametrize("shape,sigma", [((4, 32, 32, 3), None), ((3, 16, 24, 1), 1.5)])
def test_saliency_matches_the_float64_reference(shape, sigma):
  images = random_images(shape)
  got = np.asarray(jax.jit(mixing.spectral_residual_saliency, static_argnums=1)(images, sigma))
  assert got.shape == shape[:3] and got.dtype == np.float32
  ref_sigma = 8 * max(shape[1:3]) / 64 if sigma is None else sigma  # paper: 8 at 64 px
  for g, image in zip(got, images):
    ref = np_saliency(image, ref_sigma)
    np.testing.assert_allclose(g / ref.max(), ref / ref.max(), rtol=2e-4, atol=2e-5)


def test_saliency_is_per_image_and_vmap_safe():
  images = random_images((3, 16, 16, 3), seed=1)
  batch = mixing.spectral_residual_saliency(images)
  mapped = jax.vmap(lambda im: mixing.spectral_residual_saliency(im[None])[0])(images)
  np.testing.assert_allclose(mapped, batch, rtol=1e-5, atol=1e-7)
  single = mixing.spectral_residual_saliency(images[1:2])[0]
  np.testing.assert_allclose(single, batch[1], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ the box

@pytest.mark.parametrize("lam", [0.3, 0.75, np.array([0.1, 0.5, 0.9, 0.99, 1.0, 0.6])])
def test_saliency_box_matches_the_reference(lam):
  images = random_images((6, 32, 32, 3), seed=2)
  got = jax.jit(mixing.saliency_box)(images, jnp.asarray(lam, jnp.float32))
  lams = np.broadcast_to(lam, (6,))
  checked = 0
  for i, image in enumerate(images):
    ref_map = np_saliency(image, 4.0)
    top2 = np.sort(ref_map.ravel())[-2:]
    if top2[1] - top2[0] < 1e-3 * top2[1]:
      continue  # a near tie: float32 may pick the other pixel
    checked += 1
    assert tuple(int(b[i]) for b in got) == np_box(ref_map, float(lams[i])), i
  assert checked >= 4


def test_bright_square_centres_the_box_on_the_square():
  corners = [(6, 18), (20, 8), (13, 13)]
  images = square_images(corners)
  lam = 1 - (8 / 32) ** 2  # an 8 x 8 box, unclipped around these squares
  y0, y1, x0, x1 = (np.asarray(b) for b in mixing.saliency_box(images, lam))
  np.testing.assert_array_equal(y1 - y0, 8)
  np.testing.assert_array_equal(x1 - x0, 8)
  for i, (r, c) in enumerate(corners):
    cy, cx = y0[i] + 4, x0[i] + 4  # the box starts at centre - side // 2
    assert r <= cy < r + 6 and c <= cx < c + 6, (i, cy, cx)


def test_saliency_box_is_clipped_at_the_border():
  images = square_images([(0, 26)], side=6, channels=1)
  y0, y1, x0, x1 = (int(b[0]) for b in mixing.saliency_box(images, 0.0))
  assert (y0, x1) == (0, 32) and y1 < 32 and x0 > 0  # full-size box, moved off-centre
  with pytest.raises(ValueError, match="lam"):
    mixing.saliency_box(images, 1.5)


# --------------------------------------------------------------------- OTmix option

K, PER_CLASS, SIZE, B = 4, 6, 16, 8
CORNERS = [(r, c) for r in (2, 8) for c in (1, 5, 9)] * 4  # image i's square corner


def square_data():
  images = (square_images(CORNERS, size=SIZE, side=4) * 255).astype(np.uint8)
  labels = np.repeat(np.arange(K), PER_CLASS).astype(np.int32)
  return recipe.DeviceDataset(jnp.asarray(images), jnp.asarray(labels),
                              samplers.build_class_index(labels, K))


class Linear:
  """A 'model' with logits = flat(x)[:, :K] (the loss value is not under test here)."""

  def __call__(self, variables, x, train, **_):
    del variables, train
    flat = x.reshape(x.shape[0], -1)
    return {"logits": flat[:, :K], "features": flat}


def boxes_of(rcp, seed):
  """The boxes and foreground indices of one jitted `rcp.loss` step on `square_data`."""
  data = square_data()

  @jax.jit
  def step(key):
    ctx = recipe.StepContext(
        key=key, step=jnp.int32(0), epoch=jnp.int32(0), num_epochs=10, batch_size=B,
        clean_indices=jnp.arange(B, dtype=jnp.int32) * 3, data=data,
        load=lambda _, idx: (data.images[idx].astype(jnp.float32) / 255.0, data.labels[idx]))
    _, out = rcp.loss(recipe.Forward(Linear(), {}, {}, True), ctx, rcp.init_state(
        jnp.full((K,), PER_CLASS)))
    return out.draws["box"], out.draws["indices_fore"]

  box, fore = step(jax.random.key(seed))
  return np.asarray(box), np.asarray(fore)


def covers_square(box, index, side=4):
  """Whether the box holds all of image `index`'s square (an 11 x 11 box centred on a pixel
  of a 4 x 4 square does, clipped or not)."""
  y0, y1, x0, x1 = (int(b) for b in box)
  r, c = CORNERS[index]
  return y0 <= r and r + side <= y1 and x0 <= c and c + side <= x1


@pytest.mark.parametrize("per_sample", [False, True])
def test_otmix_saliency_places_the_box_on_the_foreground_peak(per_sample):
  rcp = methods.get_recipe("otmix_saliency", num_epochs=10, ot=False, alpha=1e4,
                           per_sample_box=per_sample)  # lam ~ 1/2: an 11 x 11 box
  assert rcp.box_placement == "saliency"
  box, fore = boxes_of(rcp, seed=0)
  if per_sample:  # one box per foreground, on its own square
    assert box.shape == (B, 4)
    assert all(covers_square(box[i], fore[i]) for i in range(B))
  else:  # one box for the batch, on the first foreground's square (SaliencyMix code)
    assert box.shape == (4,) and covers_square(box, fore[0])


def test_otmix_default_box_is_uniform_and_placement_is_checked():
  assert methods.get_recipe("otmix", num_epochs=10).box_placement == "uniform"
  rcp = methods.get_recipe("otmix", num_epochs=10, ot=False, alpha=1e4)
  hits = [covers_square(box, fore[0]) for box, fore in (boxes_of(rcp, s) for s in range(8))]
  assert not all(hits)  # a uniform centre misses the 4 x 4 square most of the time
  with pytest.raises(ValueError, match="box_placement"):
    methods.OTmix(box_placement="peak")
