"""On-device image augmentation and normalisation (jit-safe, vectorised over the batch).

CIFAR training augmentation (He et al. 2016, used by every paper in SPEC section 1):
zero-pad `pad` pixels on each side, take a random HxW crop, flip horizontally with
probability 1/2, each sample independently; then normalise with
(x / 255 - mean) / std. Works for any HxW and channel count (e.g. 8x8 digits with pad 1,
28x28x1 Fashion-MNIST). Evaluation uses the "center" mode: normalisation only.

Padding modes (`pad_mode`) are torchvision's `RandomCrop(padding_mode=...)`: "constant"
(zeros; LDAM-DRW, imbalanced-DL, CMO and OTmix code), "reflect" (mirror without repeating
the edge pixel; DBN-Mix code, soony1213/DBN-Mix data/dataloader.py
`RandomCrop(32, padding=4, padding_mode='reflect')`), "edge" and "symmetric"; they equal
numpy's `np.pad` modes of the same names. The DBN-Mix code flips before it crops; for
these symmetric paddings a flip of the crop at column offset dx is the crop of the flipped
image at offset 2 * pad - dx, so crop-then-flip here gives the same distribution.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
MODES = ("random", "center")
PAD_MODES = ("constant", "reflect", "edge", "symmetric")


def _check_images(images: ArrayLike) -> None:
  if jnp.ndim(images) != 4:
    raise ValueError(f"images must have shape (B, H, W, C), got {jnp.shape(images)}.")


def random_crop_flip(key: jax.Array, images: ArrayLike, pad: int = 4,
                     flip: bool = True, pad_mode: str = "constant") -> jax.Array:
  """Random shifted crop of the padded image and random horizontal flip, per sample.

  out_b = window of size (H, W) at offset (dy_b, dx_b) of pad(x_b, pad, pad_mode),
  dy_b, dx_b ~ U{0, ..., 2 * pad}, then mirrored left-right with probability 1/2 (if `flip`).
  pad = 0 and flip = False is the identity.

  Args:
    key: PRNG key.
    images: (B, H, W, C) images (uint8 in practice; any dtype is kept).
    pad: padding on each side, >= 0 (static).
    flip: whether to apply random horizontal flips (static).
    pad_mode: one of PAD_MODES (static): "constant" (zeros, default) or "reflect" (the
      DBN-Mix code), see the module docstring.

  Returns:
    (B, H, W, C) augmented images, same dtype as `images`.
  """
  _check_images(images)
  if int(pad) != pad or pad < 0:
    raise ValueError(f"pad must be a non-negative integer, got {pad}.")
  if pad_mode not in PAD_MODES:
    raise ValueError(f"Unknown pad_mode {pad_mode!r}; valid: {', '.join(PAD_MODES)}.")
  images = jnp.asarray(images)
  batch, height, width, channels = images.shape
  key_crop, key_flip = jax.random.split(key)
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
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


@flax.struct.dataclass(eq=False)
class Normalize:
  """`normalize` as a callable whose mean and std are pytree leaves.

  The training engine and `evaluation.make_eval_fn` pass it to their compiled functions as
  an argument, so a dataset's own statistics (which change with the long-tailed subset's
  seed) are inputs of the executable, not constants in it.
  """
  mean: jax.Array
  std: jax.Array

  @classmethod
  def of(cls, mean: ArrayLike = CIFAR_MEAN, std: ArrayLike = CIFAR_STD) -> "Normalize":
    return cls(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))

  def __call__(self, images: ArrayLike) -> jax.Array:
    return normalize(images, self.mean, self.std)


def preprocess(key: jax.Array | None, images: ArrayLike, mean: ArrayLike = CIFAR_MEAN,
               std: ArrayLike = CIFAR_STD, *, mode: str = "random", pad: int = 4,
               flip: bool = True, pad_mode: str = "constant") -> jax.Array:
  """Training ("random": crop + flip + normalise) or evaluation ("center": normalise only).

  Args:
    key: PRNG key (unused, may be None, in "center" mode).
    images: (B, H, W, C) uint8 images.
    mean, std: per-channel normalisation constants.
    mode: "random" or "center" (static).
    pad, flip, pad_mode: augmentation settings of the "random" mode.

  Returns:
    (B, H, W, C) float32 network inputs.
  """
  if mode == "random":
    if key is None:
      raise ValueError("mode='random' needs a PRNG key.")
    images = random_crop_flip(key, images, pad, flip, pad_mode)
  elif mode != "center":
    raise ValueError(f"Unknown augmentation mode {mode!r}; valid: {', '.join(MODES)}.")
  return normalize(images, mean, std)
