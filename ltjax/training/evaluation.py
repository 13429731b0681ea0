"""Batched inference on a test set: logits and the metrics of `ltjax.metrics`.

The model runs in inference mode (BatchNorm running statistics) on fixed-size batches, so one
compilation serves the whole set; the last batch is filled up by repeating the last image and
the extra rows are masked out. Logits come from `recipe.logits(outputs)`, so dual-branch
models average their branches and training-only adjustments (temperatures, priors) never
apply. `evaluate` reduces each batch to `metrics.EvalCounts` on the device (per-class hits,
top-5 hits, summed loss, confusion counts up to `metrics.CONFUSION_MAX_CLASSES` classes), so
host memory does not grow with N x K. With a mesh (`make_eval_fn(..., mesh=mesh)`) each
batch is split over the mesh's devices, in a multi-process run each process feeding its own
rows of it, and the summed counts are replicated, so every process reads the same metrics.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from ltjax import metrics
from ltjax import recipe as recipe_lib
from ltjax.training import loop, sharding

PyTree = Any


class EvalFn:
  """The compiled inference of a model on a test set, batch by batch.

  `eval_fn(params, batch_stats, images)` returns the (N, K) logits on the host (for
  analysis of small test sets); `eval_fn.counts(params, batch_stats, images, labels)`
  reduces each batch to `metrics.EvalCounts` on the device and sums them there, so no N x K
  array reaches the host (what `evaluate` uses). The last batch is padded with masked rows.

  With a mesh (axis "data") every batch is split over its devices and the counts (and the
  logits of `eval_fn(...)`) come back replicated. Each process feeds only its own rows of a
  batch (`sharding.process_rows`, assembled by `sharding.host_local_to_global`); the
  params and batch statistics are replicated on the mesh (as `fit` keeps them).
  """

  def __init__(self, apply_fn: Callable[..., Any], recipe: recipe_lib.Recipe,
               batch_size: int, normalize_fn: Callable[[jax.Array], jax.Array],
               mesh: Mesh | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self.batch_size = batch_size
    self.mesh = mesh
    # The recipe and the normalisation are arguments (their numbers are not constants of
    # the executable: another run of the same model reuses it).
    inputs = (recipe, loop.as_input(normalize_fn))
    if mesh is None:
      self._inputs = jax.device_put(inputs)
    else:
      self._rows = sharding.process_rows(batch_size, mesh)
      self._inputs = sharding.replicate(inputs, mesh)

    def batch_logits(inputs: tuple[recipe_lib.Recipe, Any], params: PyTree,
                     batch_stats: PyTree, images: jax.Array) -> jax.Array:
      recipe, normalize = inputs
      forward = recipe_lib.Forward(apply_fn, params, batch_stats, train=False)
      outputs, _ = forward(normalize(images))
      return recipe.logits(outputs)

    def batch_counts(inputs, params, batch_stats, images, labels, mask):
      logits = batch_logits(inputs, params, batch_stats, images)
      return metrics.batch_counts(logits, labels, mask)

    self._logits = self._compile(batch_logits, num_batch_args=1)
    self._counts = self._compile(batch_counts, num_batch_args=3)

  def _compile(self, fn: Callable[..., Any], num_batch_args: int) -> Callable[..., Any]:
    """`fn(inputs, params, batch_stats, *batch)` jitted; with a mesh, the batch split over
    its data axis and everything else (the result too) replicated."""
    if self.mesh is None:
      return jax.jit(fn)
    rep, split = sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh)
    return jax.jit(fn, in_shardings=(rep,) * 3 + (split,) * num_batch_args,
                   out_shardings=rep)

  def _batches(self, num: int):
    """(rows, number of real rows) per batch; the last batch repeats row N-1 as padding."""
    for start in range(0, num, self.batch_size):
      rows = np.minimum(np.arange(start, start + self.batch_size), num - 1)
      yield rows, min(self.batch_size, num - start)

  def _feed(self, *arrays: np.ndarray) -> tuple[Any, ...]:
    """A batch's host arrays as the compiled call takes them: as they are without a mesh,
    else this process's rows assembled into batch-sharded global arrays."""
    if self.mesh is None:
      return arrays
    return tuple(sharding.host_local_to_global(a[self._rows], self.mesh) for a in arrays)

  def __call__(self, params: PyTree, batch_stats: PyTree, images: ArrayLike) -> np.ndarray:
    chunks = [np.asarray(self._logits(self._inputs, params, batch_stats,
                                      *self._feed(np.asarray(images[rows]))))[:real]
              for rows, real in self._batches(images.shape[0])]
    return np.concatenate(chunks).astype(np.float32)

  def process_batches(self, num: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per batch of a test set of `num` images: (the rows this process feeds, their mask).

    Without a mesh, the whole batch; with one, this process's share of it
    (`sharding.process_rows`). Padding rows repeat row N-1 and are masked out.
    """
    for rows, real in self._batches(num):
      mask = np.arange(self.batch_size) < real
      if self.mesh is not None:
        rows, mask = rows[self._rows], mask[self._rows]
      yield rows, mask

  def local_counts(self, params: PyTree, batch_stats: PyTree, images: ArrayLike,
                   labels: ArrayLike, mask: ArrayLike) -> metrics.EvalCounts:
    """One batch's `EvalCounts` from this process's rows of it (`process_batches`), so
    that a process reads only those images (a streamed test set)."""
    local = (np.asarray(images), np.asarray(labels), np.asarray(mask))
    if self.mesh is not None:
      local = tuple(sharding.host_local_to_global(a, self.mesh) for a in local)
    return self._counts(self._inputs, params, batch_stats, *local)

  def counts(self, params: PyTree, batch_stats: PyTree, images: ArrayLike,
             labels: ArrayLike) -> metrics.EvalCounts:
    """The test set's `EvalCounts`, summed on the device (replicated with a mesh)."""
    labels = np.asarray(labels)
    total = None
    for rows, mask in self.process_batches(images.shape[0]):
      batch = self.local_counts(params, batch_stats, images[rows], labels[rows], mask)
      total = batch if total is None else total + batch
    return total


def make_eval_fn(apply_fn: Callable[..., Any], recipe: recipe_lib.Recipe, batch_size: int,
                 normalize_fn: Callable[[jax.Array], jax.Array], mesh: Mesh | None = None
                 ) -> EvalFn:
  """Builds the `EvalFn` of a model.

  Args:
    apply_fn: the model's `apply`.
    recipe: gives the inference logits (`recipe.logits`).
    batch_size: images per compiled call; with a mesh, divisible by its devices.
    normalize_fn: `uint8 images -> float32 inputs` (no augmentation at test time).
    mesh: data-parallel mesh (axis "data") to split every batch over, or None (one device).

  Returns:
    An EvalFn: `eval_fn(params, batch_stats, images)` -> (N, K) float32 numpy logits;
    `eval_fn.counts(params, batch_stats, images, labels)` -> device `EvalCounts`.

  Raises:
    ValueError: a batch size below 1, or one the mesh does not split evenly.
  """
  return EvalFn(apply_fn, recipe, batch_size, normalize_fn, mesh)


def evaluate(eval_fn: EvalFn | Callable[..., np.ndarray], params: PyTree, batch_stats: PyTree,
             images: ArrayLike, labels: ArrayLike, train_counts: ArrayLike) -> dict[str, Any]:
  """Test metrics of the model on `images`, `labels`, with groups from the training counts.

  Args:
    eval_fn: an `EvalFn` (counts accumulated on the device, split over its mesh when it
      has one), or any function `(params, batch_stats, images) -> logits`.
    params, batch_stats: the model's variables.
    images, labels: the test set.
    train_counts: (K,) training counts (many / medium / few groups).

  Returns:
    `ltjax.metrics.summarize_counts`: top1, top5, per_class, many / medium / few, loss (the
    mean test cross-entropy) and confusion (None above `metrics.CONFUSION_MAX_CLASSES`).
  """
  if isinstance(eval_fn, EvalFn):
    counts = eval_fn.counts(params, batch_stats, images, labels)
  else:
    counts = metrics.batch_counts(eval_fn(params, batch_stats, images), np.asarray(labels))
  return metrics.summarize_counts(counts, np.asarray(train_counts))
