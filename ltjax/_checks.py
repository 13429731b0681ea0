"""Input validation shared by every ltjax module.

Static properties (shapes, hyperparameters) are checked at trace time, so they also run
under `jit`. Value checks (labels in range, non-empty classes) need concrete arrays: they
run when the input is concrete and are skipped under `jit`, where the values are not known
yet. Shape checks use chex's assertions and raise ValueError naming the argument.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def check_positive(value: Any, name: str, *, allow_zero: bool = False,
                   allow_inf: bool = False) -> None:
  """Raises ValueError unless the Python scalar `value` is > 0 (or >= 0)."""
  if not is_concrete(value):
    return
  v = float(value)
  if math.isnan(v) or (math.isinf(v) and not allow_inf):
    raise ValueError(f"{name} must be finite, got {value}.")
  if v < 0 or (v == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be {bound}, got {value}.")


def check_in_range(value: Any, name: str, low: float, high: float) -> None:
  """Raises ValueError unless low <= value <= high (for concrete values)."""
  if not is_concrete(value):
    return
  arr = np.asarray(value, dtype=np.float64)
  if arr.size and (np.isnan(arr).any() or arr.min() < low or arr.max() > high):
    raise ValueError(f"{name} must lie in [{low}, {high}], got values in "
                     f"[{arr.min()}, {arr.max()}].")


def check_labels(labels: Any, num_classes: int, name: str = "labels") -> None:
  """Raises ValueError for non-integer labels or labels outside [0, num_classes)."""
  dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} must be integer class ids, got dtype {dtype}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if not is_concrete(labels):
    return
  arr = np.asarray(labels)
  if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
    bad = arr[(arr < 0) | (arr >= num_classes)]
    raise ValueError(f"{name} out of range [0, {num_classes}): found {bad[:5].tolist()}"
                     f"{' ...' if bad.size > 5 else ''}.")


def check_counts(counts: Any, name: str = "class_counts",
                 allow_empty: bool = False) -> None:
  """Raises ValueError for a class-count vector that is not 1-D, negative or has empty classes."""
  shape = jnp.shape(counts)
  if len(shape) != 1 or shape[0] < 1:
    raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {shape}.")
  if not is_concrete(counts):
    return
  arr = np.asarray(counts)
  if (arr < 0).any():
    raise ValueError(f"{name} must be non-negative, got {arr.tolist()}.")
  if not allow_empty and (arr == 0).any():
    empty = np.flatnonzero(arr == 0).tolist()
    raise ValueError(f"{name} has empty classes {empty}: every class needs at least "
                     "one sample.")


def check_same_leading(name_a: str, a: Any, name_b: str, b: Any) -> None:
  """Raises ValueError unless a and b have the same leading (batch) dimension."""
  sa, sb = jnp.shape(a), jnp.shape(b)
  if not sa or not sb or sa[0] != sb[0]:
    raise ValueError(f"{name_a} and {name_b} must share the batch dimension, got "
                     f"shapes {sa} and {sb}.")


def _shape_struct(x: Any) -> jax.ShapeDtypeStruct:
  """The shape of x (array, tracer, Python scalar or list) as an abstract array for chex."""
  return jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32)


def check_shape(x: Any, shape: tuple[int | None, ...], name: str) -> None:
  """Raises ValueError unless x has the given shape (None matches any size)."""
  try:
    chex.assert_shape(_shape_struct(x), shape)
  except AssertionError:
    want = tuple("*" if s is None else s for s in shape)
    raise ValueError(f"{name} must have shape {want}, got {jnp.shape(x)}.") from None


def check_rank(x: Any, rank: int | set[int], name: str, what: str) -> None:
  """Raises ValueError unless x has the given rank (or one of a set of ranks).

  Args:
    x: array-like.
    rank: the allowed rank or set of ranks.
    name: the argument's name, for the message.
    what: the expected layout in words, e.g. "(B, H, W, C) images".
  """
  try:
    chex.assert_rank(_shape_struct(x), rank)
  except AssertionError:
    raise ValueError(f"{name} must be {what}, got shape {jnp.shape(x)}.") from None


def broadcast_shapes(**arrays: Any) -> tuple[int, ...]:
  """The broadcast shape of the named arrays; ValueError naming them when they do not broadcast.

  Args:
    **arrays: the arrays by argument name, e.g. `broadcast_shapes(lam=lam, n_a=n_a)`.

  Returns:
    The shape numpy broadcasting gives them together.
  """
  shapes = {name: jnp.shape(x) for name, x in arrays.items()}
  try:
    return jnp.broadcast_shapes(*shapes.values())
  except ValueError:
    listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    raise ValueError(f"{', '.join(shapes)} must have broadcast-compatible shapes (scalars or "
                     f"vectors of one batch size), got {listed}.") from None
