"""Input mixing: mixup and CutMix, with the mixing factor drawn from Beta(alpha, alpha).

Mixup (Zhang et al. 2018, used by every method here):

  lam ~ Beta(alpha, alpha),   x = lam * x_a + (1 - lam) * x_b,   y = lam_y * y_a + (1 - lam_y) * y_b

where `lam_y` comes from a label rule (`ltjax.label_rules`). CutMix (Yun et al. 2019, used
by OTmix, Gao et al.) pastes a box of side (H * sqrt(1 - lam), W * sqrt(1 - lam)) with a
uniform centre from the foreground image onto the background image, clips it at the border
and recomputes lam from the clipped area.

SaliencyMix (Uddin et al. 2021, used by "OTmix (SaliencyMix)", OTmix Table 3) pastes a box
of the same side centred on the most salient pixel of the foreground image instead of a
uniform one (`saliency_box`; saliency: `spectral_residual_saliency`, Hou & Zhang 2007).

The reference code draws one lambda (and one CutMix box) per batch; per-sample lambdas and
boxes are an option (`shape=(B,)`, `per_sample=True`). Everything is jit/vmap-safe: boxes
become masks through iota comparisons, never dynamic slices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ltjax import _checks

Box = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


def sample_lambda(key: jax.Array, alpha: float, shape: tuple[int, ...] = ()) -> jax.Array:
  """Draws mixing factors lam ~ Beta(alpha, alpha) (mixup, Zhang et al. 2018).

  Args:
    key: PRNG key.
    alpha: float >= 0 (may be traced: a recipe's hyperparameter). alpha = 0 means no
      mixing and returns ones (the reference code's `lam = 1` when alpha <= 0; here a
      negative concrete alpha is an error).
    shape: `()` for one lambda per batch (reference code), `(B,)` for one per sample.

  Returns:
    float32 array of `shape` with values in [0, 1].

  Raises:
    ValueError: alpha negative, infinite or NaN.
  """
  _checks.check_positive(alpha, "alpha", allow_zero=True)
  lam = jax.random.beta(key, alpha, alpha, shape, dtype=jnp.float32)
  return jnp.where(jnp.asarray(alpha) > 0, lam, jnp.ones(shape, jnp.float32))


def _float_dtype(*arrays: jax.Array) -> jnp.dtype:
  """The floating dtype the mixed result is computed in (float32 for integer inputs)."""
  dtype = jnp.result_type(*arrays)
  return dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.dtype(jnp.float32)


def _broadcast_lam(lam: ArrayLike, x: jax.Array, dtype: jnp.dtype,
                   name: str = "lam") -> jax.Array:
  """Reshapes a scalar or (B,) lam so that it broadcasts over the trailing dims of x."""
  lam = jnp.asarray(lam, dtype)
  if lam.ndim == 0:
    return lam
  if lam.ndim != 1 or x.ndim < 1 or lam.shape[0] != x.shape[0]:
    raise ValueError(f"{name} must be a scalar or have shape ({x.shape[0] if x.ndim else 1},)"
                     f", got shape {lam.shape} for inputs of shape {x.shape}.")
  return lam.reshape(lam.shape + (1,) * (x.ndim - 1))


def _check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} "
                     f"and {b.shape}.")


def _mix(a: ArrayLike, b: ArrayLike, lam: ArrayLike,
         names: tuple[str, str, str]) -> jax.Array:
  """lam * a + (1 - lam) * b, with lam scalar or per leading index; `names` of (a, b, lam)."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_same_shape(names[0], a, names[1], b)
  _checks.check_in_range(lam, names[2], 0.0, 1.0)
  dtype = _float_dtype(a, b)
  lam = _broadcast_lam(lam, a, dtype, names[2])
  return lam * a.astype(dtype) + (1 - lam) * b.astype(dtype)


def mix_inputs(x_a: ArrayLike, x_b: ArrayLike, lam: ArrayLike) -> jax.Array:
  """Mixup of inputs: x = lam * x_a + (1 - lam) * x_b (Zhang et al. 2018, eq. 1).

  Args:
    x_a, x_b: (B, ...) inputs of the same shape.
    lam: scalar (one factor per batch) or (B,) (one per sample), values in [0, 1].

  Returns:
    (B, ...) mixed inputs in the floating dtype of the inputs (float32 for integers).
  """
  return _mix(x_a, x_b, lam, ("x_a", "x_b", "lam"))


def mix_labels(y_a: ArrayLike, y_b: ArrayLike, lam_y: ArrayLike) -> jax.Array:
  """Label mixing: y = lam_y * y_a + (1 - lam_y) * y_b (lam_y from `ltjax.label_rules`).

  Args:
    y_a, y_b: (B, K) one-hot or soft labels.
    lam_y: scalar or (B,) label factors in [0, 1].

  Returns:
    (B, K) soft labels.
  """
  return _mix(y_a, y_b, lam_y, ("y_a", "y_b", "lam_y"))


class MixedLabels(NamedTuple):
  """The labels of a (possibly mixed) batch: `y = lam y_a + (1 - lam) y_b`.

  Kept as the two hard sides and the factor, because the reference codes compute their
  loss per side (`lam * L(z, y_a) + (1 - lam) * L(z, y_b)`), which differs from the loss of
  the soft label for LDAM margins and for class-weighted reductions (`ltjax.losses`).

  Attributes:
    labels_a, labels_b: (B,) integer labels of the two sides.
    lam: scalar or (B,) label factor lam_y in [0, 1] (1: the label is labels_a).
  """
  labels_a: jax.Array
  labels_b: jax.Array
  lam: jax.Array

  @classmethod
  def hard(cls, labels: ArrayLike) -> "MixedLabels":
    """Unmixed labels: both sides `labels`, lam = 1."""
    labels = jnp.asarray(labels)
    return cls(labels, labels, jnp.ones((), jnp.float32))

  def soft(self, num_classes: int) -> jax.Array:
    """(B, K) float32 soft labels `lam e_a + (1 - lam) e_b`."""
    _checks.check_shape(self.labels_b, jnp.shape(self.labels_a), "labels_b")
    one_hot = lambda y: jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    return mix_labels(one_hot(self.labels_a), one_hot(self.labels_b), self.lam)


def _check_image_size(height: int, width: int) -> None:
  if int(height) < 1 or int(width) < 1:
    raise ValueError(f"height and width must be >= 1, got {height} and {width}.")


def _check_images(x_back: jax.Array, x_fore: jax.Array) -> None:
  """Both (B, H, W, C) and of the same shape."""
  for name, x in (("x_back", x_back), ("x_fore", x_fore)):
    _checks.check_rank(x, 4, name, "(B, H, W, C) images")
  _check_same_shape("x_back", x_back, "x_fore", x_fore)


def _as_box(box: Box) -> Box:
  """The box's four bounds as int arrays of one shape, () or (B,)."""
  if len(box) != 4:
    raise ValueError(f"box must be (y0, y1, x0, x1), got {len(box)} entries.")
  bounds = tuple(jnp.asarray(b) for b in box)
  for name, b in zip(("y0", "y1", "x0", "x1"), bounds):
    _checks.check_rank(b, {0, 1}, f"box bound {name}", "a scalar or a (B,) vector")
    _checks.check_shape(b, bounds[0].shape, f"box bound {name}")
  return bounds


def _cut_sides(lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """CutMix's unclipped box sides: floor(H sqrt(1 - lam)), floor(W sqrt(1 - lam)) (int32)."""
  ratio = jnp.sqrt(jnp.clip(1.0 - lam, 0.0, 1.0))
  return (jnp.floor(height * ratio).astype(jnp.int32),
          jnp.floor(width * ratio).astype(jnp.int32))


def _centred_box(cy: jax.Array, cx: jax.Array, cut_h: jax.Array, cut_w: jax.Array,
                 height: int, width: int) -> Box:
  """The box of sides (cut_h, cut_w) from (cy - cut_h // 2, cx - cut_w // 2), clipped."""
  y0, x0 = cy - cut_h // 2, cx - cut_w // 2
  return (jnp.clip(y0, 0, height), jnp.clip(y0 + cut_h, 0, height),
          jnp.clip(x0, 0, width), jnp.clip(x0 + cut_w, 0, width))


def _check_lam(lam: ArrayLike) -> jax.Array:
  """A scalar or (B,) float32 lam in [0, 1]."""
  _checks.check_rank(lam, {0, 1}, "lam", "a scalar or a (B,) vector")
  _checks.check_in_range(lam, "lam", 0.0, 1.0)
  return jnp.asarray(lam, jnp.float32)


def cutmix_box(key: jax.Array, lam: ArrayLike, height: int, width: int) -> Box:
  """Draws CutMix boxes (Yun et al. 2019): side (H sqrt(1-lam), W sqrt(1-lam)), clipped.

  The unclipped box has integer sides cut_h = floor(H * sqrt(1 - lam)) and
  cut_w = floor(W * sqrt(1 - lam)) and starts at (cy - cut_h // 2, cx - cut_w // 2) for a
  centre (cy, cx) uniform over the pixel grid; it is then clipped to the image. (The
  reference `rand_bbox` uses cy +- cut_h // 2, which rounds odd sides down to even ones;
  here the unclipped side is exactly cut_h.)

  Args:
    key: PRNG key.
    lam: scalar (one box) or (B,) (one box per sample) factors in [0, 1].
    height, width: image size H, W (static).

  Returns:
    (y0, y1, x0, x1) int32 arrays with the shape of `lam`: rows y0 <= r < y1 and columns
    x0 <= c < x1 lie inside the box (an empty box when lam = 1).
  """
  _check_image_size(height, width)
  lam = _check_lam(lam)
  cut_h, cut_w = _cut_sides(lam, height, width)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, lam.shape, 0, height, dtype=jnp.int32)
  cx = jax.random.randint(key_x, lam.shape, 0, width, dtype=jnp.int32)
  return _centred_box(cy, cx, cut_h, cut_w, height, width)


# ITU-R BT.601 luma weights of (R, G, B), the grey conversion of OpenCV's RGB2GRAY.
_LUMA = (0.299, 0.587, 0.114)
# Hou & Zhang 2007 smooth the saliency map with a Gaussian of sigma = 8 at their working
# image width of 64 pixels; `spectral_residual_saliency` scales it to the image.
_PAPER_SIGMA, _PAPER_WIDTH = 8.0, 64
# The log amplitude is log(A + _AMPLITUDE_FLOOR * mean(A)): finite at zero amplitudes.
_AMPLITUDE_FLOOR = 1e-3


def to_grey(images: ArrayLike) -> jax.Array:
  """(B, H, W) float32 grey images of (B, H, W, C) ones: BT.601 luma for C = 3, else the
  channel mean."""
  images = jnp.asarray(images, jnp.float32)
  _checks.check_rank(images, 4, "images", "(B, H, W, C) images")
  if images.shape[-1] == 3:
    return images @ jnp.asarray(_LUMA, jnp.float32)
  return images.mean(axis=-1)


def _mean_filter_3x3(x: jax.Array) -> jax.Array:
  """The 3x3 mean of each entry of (B, H, W) x, with periodic borders (a spectrum is periodic)."""
  shifted = [jnp.roll(x, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  return sum(shifted) / 9.0


def _gaussian_weights(size: int, sigma: float) -> jax.Array:
  """(size, size) row-normalised Gaussian weights: row i holds exp(-(i - j)^2 / (2 sigma^2))
  over the pixels j of the image, divided by their sum (a Gaussian-weighted mean that only
  reads pixels inside the image)."""
  offsets = jnp.arange(size, dtype=jnp.float32)
  weights = jnp.exp(-((offsets[:, None] - offsets[None, :]) ** 2) / (2.0 * sigma ** 2))
  return weights / weights.sum(axis=1, keepdims=True)


def spectral_residual_saliency(images: ArrayLike, sigma: float | None = None) -> jax.Array:
  """Spectral-residual saliency maps (Hou & Zhang 2007, "Saliency Detection: A Spectral
  Residual Approach", CVPR), of the grey images (`to_grey`).

  With F the 2-D DFT of the grey image I:

    A = |F|,  P = angle(F),  L = log(A + 1e-3 mean(A)),  R = L - h_3 * L,
    S = g_sigma * |F^-1[exp(R + i P)]|^2

  where h_3 is the 3x3 mean filter (periodic borders: the spectrum is periodic) and g_sigma
  a Gaussian smoothing, renormalised at the image border (each pixel a Gaussian-weighted
  mean of the pixels inside the image). The paper smooths with sigma = 8 at its working
  width of 64 pixels; `sigma=None` scales that to the image, 8 max(H, W) / 64 (4 on CIFAR's
  32 x 32). The floor 1e-3 mean(A) keeps L finite where the amplitude vanishes (the paper
  leaves log 0 open); it keeps S invariant to the image's scale, like the paper's formula.
  The paper also downsamples images to 64 pixels first; here the map has the image's size.

  Args:
    images: (B, H, W, C) images (any real dtype).
    sigma: Gaussian sigma in pixels (> 0), or None for the scaled paper value.

  Returns:
    (B, H, W) float32 saliency maps (non-negative, not normalised).
  """
  grey = to_grey(images)
  height, width = grey.shape[1:]
  sigma = _PAPER_SIGMA * max(height, width) / _PAPER_WIDTH if sigma is None else sigma
  _checks.check_positive(sigma, "sigma")
  spectrum = jnp.fft.fft2(grey)
  amplitude = jnp.abs(spectrum)
  floor = _AMPLITUDE_FLOOR * amplitude.mean(axis=(1, 2), keepdims=True)
  log_amplitude = jnp.log(amplitude + floor)
  residual = log_amplitude - _mean_filter_3x3(log_amplitude)
  energy = jnp.abs(jnp.fft.ifft2(jnp.exp(residual + 1j * jnp.angle(spectrum)))) ** 2
  return jnp.einsum("hi,bij,wj->bhw", _gaussian_weights(height, sigma), energy,
                    _gaussian_weights(width, sigma)).astype(jnp.float32)


def saliency_box(images: ArrayLike, lam: ArrayLike, sigma: float | None = None) -> Box:
  """SaliencyMix boxes (Uddin et al. 2021): CutMix's side, centred on the saliency peak.

  For each (foreground, i.e. patch-donor) image, the box of `cutmix_box`'s sides
  floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam)) starts at (cy - cut_h // 2,
  cx - cut_w // 2) with (cy, cx) = argmax of its spectral-residual saliency map
  (`spectral_residual_saliency`; ties: the first pixel in row-major order) and is clipped
  to the image. (The SaliencyMix code uses cy +- cut_h // 2, even sides, and OpenCV's
  `StaticSaliencyFineGrained` (Montabone & Soto 2010) as its saliency model.)

  Args:
    images: (B, H, W, C) foreground images.
    lam: scalar (one lam for every image) or (B,) factors in [0, 1].
    sigma: smoothing of the saliency map (`spectral_residual_saliency`).

  Returns:
    (y0, y1, x0, x1), each (B,) int32: one box per image.
  """
  saliency = spectral_residual_saliency(images, sigma)
  batch, height, width = saliency.shape
  lam = jnp.broadcast_to(_check_lam(lam), (batch,))
  peak = jnp.argmax(saliency.reshape(batch, -1), axis=1).astype(jnp.int32)
  cut_h, cut_w = _cut_sides(lam, height, width)
  return _centred_box(peak // width, peak % width, cut_h, cut_w, height, width)


def box_mask(box: Box, height: int, width: int) -> jax.Array:
  """Boolean mask of a box, True inside: y0 <= row < y1 and x0 <= col < x1.

  Args:
    box: (y0, y1, x0, x1) from `cutmix_box`, each scalar or (B,).
    height, width: image size (static).

  Returns:
    (H, W) mask for a scalar box, (B, H, W) for per-sample boxes.

  Raises:
    ValueError: a box without four bounds, or bounds not all scalars or all (B,).
  """
  _check_image_size(height, width)
  y0, y1, x0, x1 = (b[..., None, None] for b in _as_box(box))
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def cutmix(key: jax.Array, x_back: ArrayLike, x_fore: ArrayLike, lam: ArrayLike,
           per_sample: bool = False) -> tuple[jax.Array, jax.Array]:
  """CutMix: pastes a box of the foreground image onto the background image.

  x = M * x_fore + (1 - M) * x_back for the box mask M of `cutmix_box`, and
  lam_back = 1 - area(clipped box) / (H W) (Yun et al. 2019; OTmix, Gao et al., eq. 1).
  The mixed label is then lam_back * y_back + (1 - lam_back) * y_fore.

  Args:
    key: PRNG key; the box is `cutmix_box(key, lam, H, W)`.
    x_back: (B, H, W, C) background images.
    x_fore: (B, H, W, C) foreground images (patch donors).
    lam: box factor in [0, 1]: a scalar, or with `per_sample` a scalar or (B,).
    per_sample: False: one box for the whole batch (reference OTmix code); True: one
      independent box (own centre, own lam when lam is (B,)) per sample.

  Returns:
    (x_mixed, lam_back): x_mixed (B, H, W, C) with the dtype of the inputs; lam_back
    float32, shape () or (B,) with `per_sample`.

  Raises:
    ValueError: shapes mismatch, inputs not 4-D, or a (B,) lam without `per_sample`.
  """
  x_back, x_fore = jnp.asarray(x_back), jnp.asarray(x_fore)
  _check_images(x_back, x_fore)
  batch, height, width = x_back.shape[:3]
  lam = jnp.asarray(lam, jnp.float32)
  if per_sample:
    _broadcast_lam(lam, x_back, jnp.float32)
    lam = jnp.broadcast_to(lam, (batch,))
  elif lam.ndim != 0:
    raise ValueError(f"lam must be a scalar without per_sample=True, got shape {lam.shape}.")
  return paste_box(x_back, x_fore, cutmix_box(key, lam, height, width))


def paste_box(x_back: ArrayLike, x_fore: ArrayLike, box: Box) -> tuple[jax.Array, jax.Array]:
  """Pastes `box` of the foreground images onto the backgrounds (the CutMix paste).

  x = M * x_fore + (1 - M) * x_back for the box mask M, and
  lam_back = 1 - area(box) / (H W).

  Args:
    x_back, x_fore: (B, H, W, C) images of the same shape.
    box: (y0, y1, x0, x1), each scalar or (B,) (e.g. from `cutmix_box`).

  Returns:
    (x_mixed, lam_back) as in `cutmix`.

  Raises:
    ValueError: images not (B, H, W, C) of one shape, or box bounds not all scalars or
      all (B,).
  """
  x_back, x_fore = jnp.asarray(x_back), jnp.asarray(x_fore)
  _check_images(x_back, x_fore)
  batch, height, width = x_back.shape[:3]
  y0, y1, x0, x1 = box = _as_box(box)
  if y0.ndim:
    _checks.check_shape(y0, (batch,), "box bounds")
  mask = box_mask(box, height, width)[..., None]
  lam_back = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return jnp.where(mask, x_fore, x_back), lam_back
