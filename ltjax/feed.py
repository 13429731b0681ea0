"""Batches fed to the compiled step from the host (the streamed input path).

When the training set does not fit on the device (ImageNet-LT, iNaturalist, Places-LT),
`ltjax.data.stream` reads each step's images on the host and the step receives them as a
`Feed`: the clean (instance-balanced) batch, one batch per class-law slot that the recipe
declares (`Recipe.requirements().draws`, `samplers.Law.slot`), and, for recipes that choose
classes on the device (CP-Mix's confusion pairs), a class-balanced batch that refills a
device-resident `ClassBank`. Everything here is a pure function of arrays.

ClassBank semantics: the bank holds S images of every class, each an independent uniform
draw from its class (the initial fill draws S per class; every refill image is drawn by the
class-balanced law, then uniformly inside its class). A refill writes image j of class c
into slot (written[c] + r_j) mod S, r_j the number of earlier refill images of class c in
the batch; images beyond the S-th of one class in one refill are dropped (so no two writes
hit one slot). `take` picks a slot uniformly, so every image it returns is marginally a
uniform draw from the requested class, as `samplers.draw_from_classes` on the whole
training set; images are re-used until overwritten (about K S / R steps for R refill
images per step) and keep the augmentation they were decoded with.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class FedBatch(NamedTuple):
  """A batch read on the host.

  Attributes:
    images: (B, H, W, C) uint8 images, augmented by the host transforms.
    labels: (B,) int32 labels.
    indices: (B,) int32 training-set indices.
  """
  images: jax.Array
  labels: jax.Array
  indices: jax.Array


class Feed(NamedTuple):
  """The host-fed batches of one step.

  Attributes:
    clean: the step's instance-balanced batch (the epoch permutation's row).
    draws: one batch per class-law slot ("class_balanced/0", "reverse/0", ...).
    refill: class-balanced images written into the class bank before the step, or None.
  """
  clean: FedBatch
  draws: dict[str, FedBatch]
  refill: FedBatch | None = None


class ClassBank(NamedTuple):
  """S images of every class, resident on the device (module docstring).

  Attributes:
    images: (K, S, H, W, C) uint8.
    indices: (K, S) int32 training-set indices of those images.
    written: (K,) int32 images written into each class so far.
  """
  images: jax.Array
  indices: jax.Array
  written: jax.Array

  @property
  def per_class(self) -> int:
    return self.indices.shape[1]

  def take(self, key: jax.Array, classes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One image of each requested class, its slot uniform: (images, indices)."""
    slots = jax.random.randint(key, classes.shape, 0, self.per_class, jnp.int32)
    return self.images[classes, slots], self.indices[classes, slots]


def bank_from_batch(batch: FedBatch, num_classes: int, per_class: int) -> ClassBank:
  """The initial bank from a batch of K * S images sorted by class (S per class)."""
  expected = num_classes * per_class
  if batch.labels.shape[0] != expected:
    raise ValueError(f"the initial class bank needs {num_classes} x {per_class} = {expected} "
                     f"images, got {batch.labels.shape[0]}.")
  shape = (num_classes, per_class)
  return ClassBank(images=batch.images.reshape(shape + batch.images.shape[1:]),
                   indices=batch.indices.reshape(shape).astype(jnp.int32),
                   written=jnp.full((num_classes,), per_class, jnp.int32))


def refill(bank: ClassBank, batch: FedBatch) -> ClassBank:
  """`bank` with `batch`'s images written into their classes' ring slots (module docstring)."""
  labels = batch.labels.astype(jnp.int32)
  same = labels[:, None] == labels[None, :]
  rank = jnp.sum(jnp.tril(same, k=-1), axis=1)  # earlier images of the same class
  keep = rank < bank.per_class
  slot = (bank.written[labels] + rank) % bank.per_class
  # Dropped images write to an out-of-range class, which mode="drop" ignores.
  target = jnp.where(keep, labels, bank.indices.shape[0])
  images = bank.images.at[target, slot].set(batch.images, mode="drop")
  indices = bank.indices.at[target, slot].set(batch.indices.astype(jnp.int32), mode="drop")
  added = jnp.zeros_like(bank.written).at[target].add(1, mode="drop")
  return ClassBank(images=images, indices=indices, written=bank.written + added)
