"""Batched inference on a test set: logits and the metrics of `ltjax.metrics`.

The model runs in inference mode (BatchNorm running statistics) on fixed-size batches, so one
compilation serves the whole set; the last batch is filled up by repeating the last image and
the extra rows are masked out. Logits come from `recipe.logits(outputs)`, so dual-branch
models average their branches and training-only adjustments (temperatures, priors) never
apply. `evaluate` reduces each batch to `metrics.EvalCounts` on the device (per-class hits,
top-5 hits, summed loss, confusion counts up to `metrics.CONFUSION_MAX_CLASSES` classes), so
host memory does not grow with N x K.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.typing import ArrayLike

from ltjax import metrics
from ltjax import recipe as recipe_lib
from ltjax.training import loop

PyTree = Any


class EvalFn:
  """The compiled inference of a model on a test set, batch by batch.

  `eval_fn(params, batch_stats, images)` returns the (N, K) logits on the host (for
  analysis of small test sets); `eval_fn.counts(params, batch_stats, images, labels)`
  reduces each batch to `metrics.EvalCounts` on the device and sums them there, so no N x K
  array reaches the host (what `evaluate` uses). The last batch is padded with masked rows.
  """

  def __init__(self, apply_fn: Callable[..., Any], recipe: recipe_lib.Recipe,
               batch_size: int, normalize_fn: Callable[[jax.Array], jax.Array]):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    self.batch_size = batch_size
    # The recipe and the normalisation are arguments (their numbers are not constants of
    # the executable: another run of the same model reuses it).
    self._inputs = jax.device_put((recipe, loop.as_input(normalize_fn)))

    def batch_logits(inputs: tuple[recipe_lib.Recipe, Any], params: PyTree,
                     batch_stats: PyTree, images: jax.Array) -> jax.Array:
      recipe, normalize = inputs
      forward = recipe_lib.Forward(apply_fn, params, batch_stats, train=False)
      outputs, _ = forward(normalize(images))
      return recipe.logits(outputs)

    def batch_counts(inputs, params, batch_stats, images, labels, mask):
      logits = batch_logits(inputs, params, batch_stats, images)
      return metrics.batch_counts(logits, labels, mask)

    self._logits = jax.jit(batch_logits)
    self._counts = jax.jit(batch_counts)

  def _batches(self, num: int):
    """(rows, number of real rows) per batch; the last batch repeats row N-1 as padding."""
    for start in range(0, num, self.batch_size):
      rows = np.minimum(np.arange(start, start + self.batch_size), num - 1)
      yield rows, min(self.batch_size, num - start)

  def __call__(self, params: PyTree, batch_stats: PyTree, images: ArrayLike) -> np.ndarray:
    chunks = [np.asarray(self._logits(self._inputs, params, batch_stats, images[rows]))[:real]
              for rows, real in self._batches(images.shape[0])]
    return np.concatenate(chunks).astype(np.float32)

  def counts(self, params: PyTree, batch_stats: PyTree, images: ArrayLike,
             labels: ArrayLike) -> metrics.EvalCounts:
    """The test set's `EvalCounts`, summed on the device."""
    labels = np.asarray(labels)
    total = None
    for rows, real in self._batches(images.shape[0]):
      mask = np.arange(self.batch_size) < real
      batch = self._counts(self._inputs, params, batch_stats, images[rows], labels[rows], mask)
      total = batch if total is None else total + batch
    return total


def make_eval_fn(apply_fn: Callable[..., Any], recipe: recipe_lib.Recipe, batch_size: int,
                 normalize_fn: Callable[[jax.Array], jax.Array]) -> EvalFn:
  """Builds the `EvalFn` of a model.

  Args:
    apply_fn: the model's `apply`.
    recipe: gives the inference logits (`recipe.logits`).
    batch_size: images per compiled call.
    normalize_fn: `uint8 images -> float32 inputs` (no augmentation at test time).

  Returns:
    An EvalFn: `eval_fn(params, batch_stats, images)` -> (N, K) float32 numpy logits;
    `eval_fn.counts(params, batch_stats, images, labels)` -> device `EvalCounts`.
  """
  return EvalFn(apply_fn, recipe, batch_size, normalize_fn)


def evaluate(eval_fn: EvalFn | Callable[..., np.ndarray], params: PyTree, batch_stats: PyTree,
             images: ArrayLike, labels: ArrayLike, train_counts: ArrayLike) -> dict[str, Any]:
  """Test metrics of the model on `images`, `labels`, with groups from the training counts.

  Args:
    eval_fn: an `EvalFn` (counts accumulated on the device), or any function
      `(params, batch_stats, images) -> logits`.
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
