"""Class-conditional samplers: PRNG key + class counts in, dataset indices out.

Every sampler is a law over classes followed by a uniform draw inside the chosen class
(the two-stage sampler of Kang et al. 2020 and of LOBM, Zhang et al. 2023, eq. 4-5).
The draws run under `jit` on the whole dataset, not on the current minibatch.

| sampler            | P(class k)                                   | used by                    |
|--------------------|----------------------------------------------|----------------------------|
| instance-balanced  | n_k / N                                      | ERM, mixup, OTmix backgrnd |
| class-balanced     | 1 / K                                        | LOBM (twice), DBN-Mix      |
| reverse(gamma)     | w_k / sum w, w_k = (n_max / n_k)^(1/gamma)   | BBN / DBN-Mix re-balancing |
| inverse power(r)   | n_k^-r / sum n^-r                            | OTmix / CMO foreground     |

Invalid inputs raise a ValueError when they are concrete (all-zero counts, negative or
non-finite probabilities, a positive probability on a class with no samples). Under `jit`
the values are not known when the function is traced, so nothing can be raised; there the
class laws of all-zero counts are NaN, `draw_indices` never draws a class with no samples
or a probability that is not > 0, and every index that cannot be drawn is -1 (mask it
with `idx >= 0` before gathering: a -1 gather wraps to the last sample).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ltjax import _checks

SAMPLERS = ("instance", "class_balanced", "reverse", "inverse_power")


class ClassIndex(NamedTuple):
  """Dataset indices grouped by class, for O(1) within-class draws on device.

  Attributes:
    order: (N,) dataset indices sorted by label (stable).
    starts: (K,) position in `order` where each class begins.
    counts: (K,) number of samples of each class (n_k).
  """
  order: jax.Array
  starts: jax.Array
  counts: jax.Array

  @property
  def num_classes(self) -> int:
    return self.counts.shape[0]


def build_class_index(labels: ArrayLike, num_classes: int,
                      allow_empty: bool = False) -> ClassIndex:
  """Groups dataset indices by label.

  Args:
    labels: (N,) integer labels in [0, num_classes).
    num_classes: K.
    allow_empty: accept classes with no sample (they can never be drawn).

  Returns:
    A ClassIndex.

  Raises:
    ValueError: labels out of range, or an empty class when `allow_empty` is False.
  """
  _checks.check_labels(labels, num_classes)
  labels = jnp.asarray(labels, jnp.int32)
  counts = jnp.bincount(labels, length=num_classes).astype(jnp.int32)
  _checks.check_counts(counts, allow_empty=allow_empty)
  order = jnp.argsort(labels, stable=True).astype(jnp.int32)
  starts = (jnp.cumsum(counts) - counts).astype(jnp.int32)
  return ClassIndex(order=order, starts=starts, counts=counts)


def _law_counts(counts: ArrayLike) -> jax.Array:
  """float32 counts of a class law, checked: 1-D, and non-negative, not all zero if concrete.

  Raises:
    ValueError: counts not a non-empty 1-D vector, negative, or all zero.
  """
  _checks.check_counts(counts, "counts", allow_empty=True)
  if _checks.is_concrete(counts) and not np.asarray(counts).any():
    raise ValueError("counts are all zero: a class law needs at least one class with "
                     "training samples.")
  return jnp.asarray(counts, jnp.float32)


def _normalise(weights: jax.Array) -> jax.Array:
  """weights / sum(weights); NaN everywhere when the sum is 0 (all-zero counts under jit)."""
  total = weights.sum()
  return jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), jnp.nan)


def instance_balanced_probs(counts: ArrayLike) -> jax.Array:
  """P(class k) = n_k / N.

  Args:
    counts: (K,) non-negative class counts, not all zero.

  Returns:
    (K,) float32 probabilities; NaN under `jit` for all-zero counts.

  Raises:
    ValueError: concrete counts that are negative or all zero.
  """
  return _normalise(_law_counts(counts))


def class_balanced_probs(counts: ArrayLike) -> jax.Array:
  """P(class k) = 1 / K over the non-empty classes (LOBM eq. 4).

  Args:
    counts: (K,) non-negative class counts, not all zero.

  Returns:
    (K,) float32 probabilities, 0 for empty classes; NaN under `jit` for all-zero counts.

  Raises:
    ValueError: concrete counts that are negative or all zero.
  """
  return _normalise((_law_counts(counts) > 0).astype(jnp.float32))


def reverse_probs(counts: ArrayLike, gamma: float = math.inf) -> jax.Array:
  """Reverse sampler of BBN / DBN-Mix: P(k) = w_k / sum_j w_j, w_k = (n_max / n_k)^(1/gamma).

  gamma = inf gives the class-balanced sampler; gamma = 1 the inverse-frequency one.
  Empty classes get probability 0; under `jit`, all-zero counts give NaN probabilities.

  Raises:
    ValueError: gamma not > 0, or concrete counts that are negative or all zero.
  """
  _checks.check_positive(gamma, "gamma", allow_inf=True)
  c = _law_counts(counts)
  present = c > 0
  safe = jnp.where(present, c, 1.0)
  w = jnp.where(present, (c.max() / safe) ** (1.0 / gamma), 0.0)
  return _normalise(w)


def inverse_power_probs(counts: ArrayLike, r: float = 1.0) -> jax.Array:
  """Inverse-frequency power sampler of CMO / OTmix: P(k) = n_k^-r / sum_j n_j^-r.

  r = 1 is inverse frequency, r = 1/2 square root, r = 0 class-balanced. Empty classes get
  probability 0; under `jit`, all-zero counts give NaN probabilities.

  Raises:
    ValueError: r negative, or concrete counts that are negative or all zero.
  """
  _checks.check_positive(r, "r", allow_zero=True)
  c = _law_counts(counts)
  present = c > 0
  w = jnp.where(present, jnp.where(present, c, 1.0) ** (-r), 0.0)
  return _normalise(w)


def class_probs(name: str, counts: ArrayLike, *, gamma: float = math.inf,
                r: float = 1.0) -> jax.Array:
  """Class law of the sampler called `name` (one of `SAMPLERS`)."""
  if name == "instance":
    return instance_balanced_probs(counts)
  if name == "class_balanced":
    return class_balanced_probs(counts)
  if name == "reverse":
    return reverse_probs(counts, gamma)
  if name == "inverse_power":
    return inverse_power_probs(counts, r)
  raise ValueError(f"Unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}.")


@flax.struct.dataclass
class Law:
  """A class law a recipe draws one batch from (`ltjax.recipe.StepContext.draw`).

  A pytree: `gamma` and `r` are leaves (traced inside a compiled step), `name` and `copy`
  are static. An input pipeline that feeds batches from the host (`ltjax.data.stream`)
  feeds one batch per `slot` and step, so a recipe that draws two independent batches of
  one law in a step (LOBM) names them `copy=0` and `copy=1`.

  Attributes:
    name: one of `SAMPLERS`, or "confusion" (CP-Mix's class pairs: images of classes the
      recipe chooses, `StepContext.from_classes`; no class law of its own).
    gamma: reverse-sampler exponent.
    r: inverse-power exponent.
    copy: which of this law's independent batches of a step.
  """
  name: str = flax.struct.field(pytree_node=False)
  gamma: float = math.inf
  r: float = 1.0
  copy: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def slot(self) -> str:
    """The name of this batch in a host-fed step ("class_balanced/1")."""
    return f"{self.name}/{self.copy}"

  def probs(self, counts: ArrayLike) -> jax.Array:
    """(K,) class probabilities of this law for the class counts (`class_probs`)."""
    return class_probs(self.name, counts, gamma=self.gamma, r=self.r)


def draw_from_classes(key: jax.Array, index: ClassIndex, classes: ArrayLike) -> jax.Array:
  """Draws one dataset index uniformly inside each requested class.

  Args:
    key: PRNG key.
    index: ClassIndex of the dataset.
    classes: (...,) class ids in [0, K); each must be non-empty.

  Returns:
    int32 dataset indices with the shape of `classes`; under `jit` (where empty classes
    cannot be rejected) -1 for a class with no samples.

  Raises:
    ValueError: concrete classes out of range or with no training samples.
  """
  _checks.check_labels(classes, index.num_classes, "classes")
  if _checks.is_concrete(classes) and _checks.is_concrete(index.counts):
    requested = np.asarray(classes)
    empty = np.unique(requested[np.asarray(index.counts)[requested] == 0])
    if empty.size:
      raise ValueError(f"classes {empty.tolist()} have no training samples and cannot be "
                       "drawn from.")
  classes = jnp.asarray(classes, jnp.int32)
  u = jax.random.uniform(key, classes.shape)
  n = index.counts[classes]
  offset = jnp.minimum(jnp.floor(u * n).astype(jnp.int32), jnp.maximum(n - 1, 0))
  return jnp.where(n > 0, index.order[index.starts[classes] + offset], -1)


def _check_probs(probs: ArrayLike, counts: ArrayLike) -> None:
  """Raises ValueError for concrete probs that are not a valid law over the drawable classes."""
  if not _checks.is_concrete(probs):
    return
  p = np.asarray(probs, np.float64)
  for problem, bad in (("non-finite", ~np.isfinite(p)), ("negative", p < 0)):
    if bad.any():
      raise ValueError(f"probs has {problem} entries at {np.flatnonzero(bad).tolist()}: "
                       f"{p[bad].tolist()}; class probabilities must be finite and >= 0.")
  if not (p > 0).any():
    raise ValueError("probs are all zero: at least one class needs a positive probability.")
  if _checks.is_concrete(counts):
    empty = np.flatnonzero((np.asarray(counts) == 0) & (p > 0))
    if empty.size:
      listed = "; ".join(f"class {k} has no training samples but probability {p[k]:.3g}"
                         for k in empty)
      raise ValueError(f"{listed}. Give empty classes probability 0 (the class laws here "
                       "do).")


def draw_indices(key: jax.Array, index: ClassIndex, probs: ArrayLike,
                 num: int) -> jax.Array:
  """Two-stage draw: `num` classes from `probs`, then one index uniformly in each.

  Args:
    key: PRNG key.
    index: ClassIndex of the dataset.
    probs: (K,) class probabilities (e.g. from `class_probs`), >= 0, normalised or not;
      0 on every class with no samples.
    num: number of indices (static).

  Returns:
    (num,) int32 dataset indices, drawn with replacement. Under `jit`, where `probs` cannot
    be checked, classes with no samples or without a probability > 0 (negative, NaN) are
    never drawn (the law is renormalised over the others), and if no class is left every
    index is -1.

  Raises:
    ValueError: probs not of shape (K,) and, when concrete, with negative or non-finite
      entries, all zero, or positive on a class with no training samples.
  """
  _checks.check_shape(probs, (index.num_classes,), "probs")
  _check_probs(probs, index.counts)
  probs = jnp.asarray(probs)
  drawable = (probs > 0) & (index.counts > 0)
  logits = jnp.where(drawable, jnp.log(jnp.where(drawable, probs, 1.0)), -jnp.inf)
  key_class, key_item = jax.random.split(key)
  classes = jax.random.categorical(key_class, logits, shape=(num,))
  return jnp.where(drawable[classes], draw_from_classes(key_item, index, classes), -1)


def draw_instances(key: jax.Array, num_samples: int, num: int) -> jax.Array:
  """Instance-balanced draw with replacement: `num` indices uniform in [0, num_samples)."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  return jax.random.randint(key, (num,), 0, num_samples, dtype=jnp.int32)


def epoch_permutation(key: jax.Array, num_samples: int, batch_size: int) -> jax.Array:
  """Instance-balanced epoch without replacement, as a (steps, batch_size) index grid.

  The reference PyTorch loops shuffle the dataset each epoch and drop the last partial
  batch; this does the same: steps = num_samples // batch_size.
  """
  if batch_size < 1 or batch_size > num_samples:
    raise ValueError(f"batch_size must be in [1, {num_samples}], got {batch_size}.")
  steps = num_samples // batch_size
  perm = jax.random.permutation(key, num_samples)[:steps * batch_size]
  return perm.reshape(steps, batch_size).astype(jnp.int32)


def numpy_class_index(labels: np.ndarray, num_classes: int) -> ClassIndex:
  """Host-side ClassIndex (numpy arrays) for input pipelines such as grain."""
  index = build_class_index(np.asarray(labels), num_classes)
  return ClassIndex(*(np.asarray(a) for a in index))
