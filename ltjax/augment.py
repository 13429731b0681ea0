"""On-device image augmentation and normalisation (jit-safe, vectorised over the batch).

CIFAR training augmentation (He et al. 2016, used by every paper in SPEC section 1):
zero-pad `pad` pixels on each side, take a random HxW crop, flip horizontally with
probability 1/2, each sample independently; then normalise with
(x / 255 - mean) / std. Works for any HxW and channel count (e.g. 8x8 digits with pad 1,
28x28x1 Fashion-MNIST). Evaluation uses the "center" mode: normalisation only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MODES = ("random", "center")


def _check_images(images: ArrayLike) -> None:
  if jnp.ndim(images) != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {jnp.shape(images)}.")


def random_crop_flip(key: jax.Array, images: ArrayLike, pad: int = 4,
                     flip: bool = True) -> jax.Array:
  """Random shifted crop of the zero-padded image and random horizontal flip, per sample.

  out_b = window of size (H, W) at offset (dy_b, dx_b) of zero_pad(x_b, pad),
  dy_b, dx_b ~ U{0, ..., 2 * pad}, then mirrored left-right with probability 1/2 (if `flip`).
  pad = 0 and flip = False is the identity.

  Args:
    key: PRNG key.
    images: (B, H, W, C) images (uint8 in practice; any dtype is kept).
    pad: zero padding on each side, >= 0 (static).
    flip: whether to apply random horizontal flips (static).

  Returns:
    (B, H, W, C) augmented images, same dtype as `images`.
  """
  _check_images(images)
  if int(pad) != pad or pad < 0:
    raise ValueError(f"pad must be a non-negative integer, got {pad}.")
  images = jnp.asarray(images)
  batch, height, width, channels = images.shape
  key_crop, key_flip = jax.random.split(key)
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key_crop, (batch, 2), 0, 2 * pad + 1)
    images = jax.vmap(lambda image, off: jax.lax.dynamic_slice(
        image, (off[0], off[1], 0), (height, width, channels)))(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(key_flip, 0.5, (batch, 1, 1, 1))
    images = jnp.where(mirror, images[:, :, ::-1, :], images)
  return images


def normalize(images: ArrayLike, mean: ArrayLike = CIFAR_MEAN,
              std: ArrayLike = CIFAR_STD) -> jax.Array:
  """(x / 255 - mean) / std in float32; mean and std are per channel (C,) or scalars."""
  _check_images(images)
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def preprocess(key: jax.Array | None, images: ArrayLike, mean: ArrayLike = CIFAR_MEAN,
               std: ArrayLike = CIFAR_STD, *, mode: str = "random", pad: int = 4,
               flip: bool = True) -> jax.Array:
  """Training ("random": crop + flip + normalise) or evaluation ("center": normalise only).

  Args:
    key: PRNG key (unused, may be None, in "center" mode).
    images: (B, H, W, C) uint8 images.
    mean, std: per-channel normalisation constants.
    mode: "random" or "center" (static).
    pad, flip: augmentation settings of the "random" mode.

  Returns:
    (B, H, W, C) float32 network inputs.
  """
  if mode == "random":
    if key is None:
      raise ValueError("mode='random' needs a PRNG key.")
    images = random_crop_flip(key, images, pad, flip)
  elif mode != "center":
    raise ValueError(f"Unknown augmentation mode {mode!r}; valid: {', '.join(MODES)}.")
  return normalize(images, mean, std)
