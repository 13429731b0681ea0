"""The streamed training epoch: the compiled step fed batch by batch from the host.

`make_streamed_epoch` is `loop.make_train_epoch` for a `ltjax.data.stream.StreamedDataset`:
it returns `train_epoch(state, epoch, on_step) -> (state, metrics)` with the same step
function (`loop.train_step`, given the step's `ltjax.feed.Feed`), the same keys and the same
clean batches (the epoch permutation), so every recipe trains from it unchanged. Per epoch:

1. if the recipe reads predictions in its epoch hook (`Recipe.epoch_subset`, OTmix's
   F_hat), the engine reads that subset with the evaluation transforms and predicts it in
   batches (inference mode), then runs `recipe.begin_epoch(..., predictions=...)` compiled;
2. grain reads the steps ahead (`stream.FeedStream`: one pipeline for the phase's epochs,
   so its worker processes and read-ahead carry over epoch boundaries) while the device
   trains; each feed goes to the device (`jax.device_put` on one process, split over the mesh's data
   axis; `sharding.host_local_to_global` over several processes) and one compiled call
   trains it; a last partial batch (drop_last=False) has its own compiled step. The host
   dispatches at most IN_FLIGHT_STEPS steps ahead of the device (it waits for the oldest),
   so the next batches are copied while a step runs but a fast reader cannot fill the
   device memory with a whole epoch of batches.

What limits it: the host reads (decode and augmentation in grain workers) and one
host-to-device copy per step; the compiled step is the in-memory path's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ltjax import feed as feed_lib
from ltjax import recipe as recipe_lib
from ltjax.data import stream as stream_lib
from ltjax.training import evaluation, loop, sharding
from ltjax.training.state import TrainState, run_keys

Metrics = dict[str, jax.Array]
IN_FLIGHT_STEPS = 2  # steps dispatched ahead of the oldest unfinished one (device memory)


def to_device(tree: Any, mesh: Mesh | None) -> Any:
  """Host batches on the device: whole on one device, split over the mesh's data axis,
  assembled from every process's part when there are several processes."""
  if mesh is None:
    return jax.device_put(tree)
  if jax.process_count() > 1:
    return sharding.host_local_to_global(tree, mesh)
  return jax.device_put(tree, sharding.batch_sharding(mesh))


def with_bank(state: TrainState, data: stream_lib.StreamedDataset, recipe: recipe_lib.Recipe,
              seed: int, mesh: Mesh | None) -> TrainState:
  """`state` holding the initial class bank when the recipe draws "confusion" pairs."""
  if not stream_lib.feed_laws(recipe.requirements())[1]:
    return state
  bank = feed_lib.bank_from_batch(stream_lib.initial_bank(data, seed), data.num_classes,
                                  data.bank_per_class)
  bank = jax.device_put(bank) if mesh is None else sharding.replicate(bank, mesh)
  return state.replace(input_state=bank)


@dataclasses.dataclass(frozen=True)
class StreamedEpoch:
  """A streamed epoch bound to its dataset: `train_epoch(state, epoch, on_step, start)`.

  Attributes:
    data: the streamed training set (host).
    device_data: its labels and class index on the device.
    inputs: the run's `loop.StepInputs`.
    feeds: the phase's `stream.FeedStream` (its grain iterator is host state).
    begin: the compiled epoch hook `(inputs, state, data, epoch, predictions) -> state`.
    step: the compiled `(inputs, state, data, epoch, feed) -> (state, metrics)`.
    last_step: `step` for the last partial batch, or None.
    predict: `predict(state) -> predictions` of the recipe's epoch subset, or None.
    steps_per_epoch: ceil(N / B) or N // B.
    mesh: the data-parallel mesh, or None.
  """
  data: stream_lib.StreamedDataset
  device_data: recipe_lib.DeviceDataset
  inputs: loop.StepInputs
  feeds: stream_lib.FeedStream
  begin: Callable[..., TrainState]
  step: Callable[..., tuple[TrainState, Metrics]]
  last_step: Callable[..., tuple[TrainState, Metrics]] | None
  predict: Callable[[TrainState], jax.Array] | None
  steps_per_epoch: int
  mesh: Mesh | None

  def __call__(self, state: TrainState, epoch: int,
               on_step: Callable[[Metrics], None] | None = None, start: int = 0,
               stop: int | None = None) -> tuple[TrainState, Metrics]:
    """Trains steps [start, stop) of the phase-local `epoch` (default: all of them).

    The epoch hook runs when `start` is 0; a later `start` continues an epoch whose hook
    already ran (a run resumed inside it: the stream position is the step, so nothing else
    is restored). Metrics: (steps,) arrays.
    """
    epoch_arr = jnp.asarray(epoch, jnp.int32)
    if start == 0:
      predictions = None if self.predict is None else self.predict(state)
      state = self.begin(self.inputs, state, self.device_data, epoch_arr, predictions)
    history = []
    for t, fed in enumerate(self.feeds.feeds(epoch, start, stop), start):
      last = self.last_step is not None and t == self.steps_per_epoch - 1
      step = self.last_step if last else self.step
      state, metrics = step(self.inputs, state, self.device_data, epoch_arr,
                            to_device(fed, self.mesh))
      history.append(metrics)
      if len(history) > IN_FLIGHT_STEPS:
        history[-1 - IN_FLIGHT_STEPS]["loss"].block_until_ready()
      if on_step is not None:
        on_step(metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)

  def close(self) -> None:
    """Stops the stream's grain workers (at the end of the phase)."""
    self.feeds.close()


def make_streamed_epoch(recipe: recipe_lib.Recipe, apply_fn: Callable[..., Any],
                        tx: optax.GradientTransformation, data: stream_lib.StreamedDataset, *,
                        batch_size: int, num_epochs: int, augment_fn: loop.AugmentFn | None,
                        normalize_fn: loop.NormalizeFn, seed: int, mesh: Mesh | None = None,
                        epoch_offset: int = 0, train_batch_stats: bool = True,
                        drop_last: bool = True,
                        eval_batch_size: int = 256) -> StreamedEpoch:
  """Builds the streamed epoch of one training phase.

  Args: as `loop.make_train_epoch`, with `data` a StreamedDataset, and
    eval_batch_size: batch size of the epoch-subset predictions (with a mesh, divisible by
      its devices).

  A recipe that draws "confusion" pairs gets B class-balanced images per step into the
  class bank (`state.input_state`, see `with_bank`).

  Returns:
    A StreamedEpoch.
  """
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
  if not 1 <= batch_size <= data.num_samples:
    raise ValueError(f"batch_size must be in [1, {data.num_samples}], got {batch_size}.")
  processes = jax.process_count()
  last_size = 0 if drop_last else data.num_samples % batch_size
  for size in (batch_size, last_size) if last_size else (batch_size,):
    if size % processes:
      raise ValueError(f"a batch of {size} (N = {data.num_samples}, B = {batch_size}, "
                       f"drop_last={drop_last}) does not split over the {processes} "
                       "processes.")
    if mesh is not None:
      sharding.check_divisible(size, mesh)
  laws, banked = stream_lib.feed_laws(recipe.requirements())
  steps = loop.steps_per_epoch(data.num_samples, batch_size, drop_last)
  keys = run_keys(seed)
  device_data = data.device_data()
  if mesh is not None:
    device_data = sharding.replicate(device_data, mesh)

  def plan(epoch: int) -> stream_lib.EpochPlan:
    grid, last = loop.epoch_batches(jax.random.fold_in(keys.permutation, epoch_offset + epoch),
                                    data.num_samples, batch_size, drop_last)
    rows = tuple(np.asarray(grid)) + (() if last is None else (np.asarray(last),))
    return stream_lib.EpochPlan(seed=seed, rows=rows, first_step=(epoch_offset + epoch) * steps,
                                laws=laws, refill=batch_size if banked else 0,
                                process_index=jax.process_index(), process_count=processes)

  def step_fn(size: int):
    def step(inputs, state, device_data, epoch, fed):
      state, metrics, _ = loop.train_step(
          inputs, state, device_data, epoch, fed.clean.indices, fed, apply_fn=apply_fn,
          tx=tx, batch_size=size, num_epochs=num_epochs, augment_fn=augment_fn, mesh=mesh,
          train_batch_stats=train_batch_stats)
      return state, metrics
    return step

  def begin(inputs, state, device_data, epoch, predictions):
    evaluate = loop.make_evaluate(apply_fn, state.params, state.batch_stats,
                                  inputs.normalize_fn)
    method_state = inputs.recipe.begin_epoch(
        state.method_state, epoch, device_data, evaluate,
        jax.random.fold_in(inputs.keys.epoch, epoch + epoch_offset), num_epochs=num_epochs,
        predictions=predictions)
    return state.replace(method_state=method_state)

  subset = recipe.epoch_subset(device_data.index)
  predict = None
  if subset is not None:
    subset = np.asarray(subset)
    evaluator = evaluation.make_eval_fn(apply_fn, recipe, eval_batch_size, normalize_fn,
                                        mesh=mesh)

    def predict(state: TrainState) -> jax.Array:
      logits = [evaluator(state.params, state.batch_stats, fed.images)
                for fed in stream_lib.read_batches(data, subset, eval_batch_size)]
      predictions = np.argmax(np.concatenate(logits), axis=-1).astype(np.int32)
      return jax.device_put(predictions) if mesh is None else sharding.replicate(predictions,
                                                                                 mesh)

  inputs = loop.StepInputs(recipe, keys, loop.as_input(normalize_fn))
  inputs = jax.device_put(inputs) if mesh is None else sharding.replicate(inputs, mesh)
  return StreamedEpoch(
      data=data, device_data=device_data, inputs=inputs,
      feeds=stream_lib.FeedStream(data, plan, num_epochs, steps),
      begin=jax.jit(begin, donate_argnums=1), step=jax.jit(step_fn(batch_size), donate_argnums=1),
      last_step=jax.jit(step_fn(last_size), donate_argnums=1) if last_size else None,
      predict=predict, steps_per_epoch=steps, mesh=mesh)
