"""The compiled training epoch: every step of an epoch in one `lax.scan`.

`make_train_epoch` returns `train_epoch(state, epoch) -> (state, metrics)`, one jitted call
per epoch. Inside it:

1. `recipe.begin_epoch(method_state, epoch, data, evaluate, fold_in(keys.epoch, e))`, with
   `evaluate` the model in inference mode under `stop_gradient`;
2. the instance-balanced permutation `samplers.epoch_permutation(fold_in(keys.permutation,
   e), N, B)`, with e = epoch_offset + epoch the run's global epoch;
3. `lax.scan` over its rows; step t (global) uses `key = fold_in(keys.step, t)`, builds a
   `StepContext`, differentiates `recipe.loss` w.r.t. the params, applies the optimiser and
   threads the BatchNorm statistics and the method state;
4. with `drop_last=False` (the PyTorch `DataLoader` default, which the LDAM-DRW, DBN-Mix,
   imbalanced-DL, CMO and OTmix code keep), one more step on the N mod B samples that the
   permutation's full rows leave out, by a second step function compiled for that batch
   size, outside the scan. Its `StepContext.batch_size` is N mod B, so a recipe's second
   batch ("of the same size") shrinks with it, as in the DBN-Mix code (its re-balancing
   sample is drawn per clean sample in `__getitem__`) and the CMO / OTmix code
   (`input2[:input.size()[0]]`). An epoch then has ceil(N / B) steps (`steps_per_epoch`),
   e.g. 97 on CIFAR-10-LT rho=100 (12,406 images, B = 128, last batch 118); a learning-rate
   schedule must count them so.

Sampling, augmentation and normalisation run on device inside the step; nothing goes back to
the host until the epoch's metrics are read. `epoch` is a traced int32, so every epoch of a
phase reuses one compilation, and the state argument is donated. The recipe (its numeric
hyperparameters) and the run's keys are arguments too (`StepInputs`), and the learning-rate
schedule lives in the optimiser state, so runs that differ only in seed, rates or such
hyperparameters compile to the same program (served once by the compilation cache).

`loop="steps"` runs the same step function as one jitted call per step from a host loop
(no host transfer either). It exists for XLA:CPU, which runs the convolutions of the
gradient as naive loops inside a while loop: its ConvCanonicalization pass, which rewrites
JAX's non-canonical gradient convolutions into the layout of its fast kernels, visits only
the entry computation (benchmarks/scan_slowdown.py, benchmarks/README.md: a ResNet-32 step
at batch 32 took 1.9 s jitted alone against 11.5 s inside `lax.scan`). The per-call
dispatch this costs is under 1 % of a ResNet-32 step. `loop="auto"` picks "steps" on the CPU
backend and "scan" elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ltjax import feed as feed_lib
from ltjax import recipe as recipe_lib
from ltjax import samplers
from ltjax.training import optim, sharding
from ltjax.training.state import RunKeys, TrainState, run_keys

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
NormalizeFn = Callable[[jax.Array], jax.Array]
Metrics = dict[str, jax.Array]
LOOPS = ("scan", "steps", "auto")
# fold_in(step key, DROPOUT_STREAM): the step's dropout key (`recipe.Forward.dropout_key`),
# apart from the recipe's `ctx.keys(...)` (fold_in of 0, 1, ...).
DROPOUT_STREAM = 0x64726F70


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool = True) -> int:
  """Steps of an epoch: N // B, or ceil(N / B) when the last partial batch is trained."""
  full, rest = divmod(num_samples, batch_size)
  return full + (0 if drop_last or not rest else 1)


def epoch_batches(key: jax.Array, num_samples: int, batch_size: int, drop_last: bool = True
                  ) -> tuple[jax.Array, jax.Array | None]:
  """An epoch's clean batches: the (N // B, B) full rows and the last partial batch.

  The rows are `samplers.epoch_permutation(key, N, B)`, i.e. the first (N // B) * B entries
  of `jax.random.permutation(key, N)`; the last batch is the rest of that permutation,
  (N mod B,) indices, or None with `drop_last` or when B divides N.
  """
  grid = samplers.epoch_permutation(key, num_samples, batch_size)
  if drop_last or grid.size == num_samples:
    return grid, None
  return grid, jax.random.permutation(key, num_samples)[grid.size:].astype(jnp.int32)


def resolve_loop(loop: str) -> str:
  """"scan" or "steps" ("auto": "steps" on the CPU backend, see the module docstring)."""
  if loop not in LOOPS:
    raise ValueError(f"Unknown loop {loop!r}; valid: {', '.join(LOOPS)}.")
  if loop == "auto":
    return "steps" if jax.default_backend() == "cpu" else "scan"
  return loop


def make_load(data: recipe_lib.DeviceDataset, augment_fn: AugmentFn | None,
              normalize_fn: NormalizeFn, mesh: Mesh | None = None
              ) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """The `StepContext.load` of the engine: gather, augment, normalise, shard.

  Args:
    data: the on-device training set.
    augment_fn: `augment_fn(key, uint8 images) -> uint8 images`, or None for no augmentation.
    normalize_fn: `normalize_fn(uint8 images) -> float32 inputs`.
    mesh: with a mesh, the batch is constrained to `P("data")` (split over devices).

  Returns:
    `load(key, indices) -> (x float32 (B, H, W, C), labels int32 (B,))`.
  """
  transform = make_transform(augment_fn, normalize_fn, mesh)

  def load(key: jax.Array, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    labels = data.labels[indices].astype(jnp.int32)
    return transform(key, data.images[indices]), sharding.shard_batch(labels, mesh)

  return load


def make_transform(augment_fn: AugmentFn | None, normalize_fn: NormalizeFn,
                   mesh: Mesh | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`transform(key, uint8 images) -> float32 inputs`: augment, normalise, shard."""
  def transform(key: jax.Array, images: jax.Array) -> jax.Array:
    if augment_fn is not None:
      images = augment_fn(key, images)
    return sharding.shard_batch(jnp.asarray(normalize_fn(images), jnp.float32), mesh)

  return transform


def make_evaluate(apply_fn: Callable[..., Any], params: Any, batch_stats: Any,
                  normalize_fn: NormalizeFn) -> Callable[[jax.Array], recipe_lib.Outputs]:
  """The `evaluate` of `Recipe.begin_epoch`: the model in inference mode, no gradient.

  It takes uint8 images (e.g. `data.images[idx]`, normalised here with `normalize_fn`, not
  augmented) or inputs that are already float.
  """
  forward = recipe_lib.Forward(apply_fn, params, batch_stats, train=False)

  def evaluate(x: jax.Array) -> recipe_lib.Outputs:
    if x.dtype == jnp.uint8:
      x = normalize_fn(x)
    outputs, _ = forward(x)
    return jax.tree.map(jax.lax.stop_gradient, outputs)

  return evaluate


@dataclasses.dataclass(frozen=True)
class TrainEpoch:
  """A compiled epoch bound to its dataset: `train_epoch(state, epoch) -> (state, metrics)`.

  Attributes:
    jitted: loop "scan": the jitted `(inputs, state, data, epoch) -> (state, metrics)`;
      loop "steps": the jitted `(inputs, state, data, epoch) -> (state, rows, last batch or
      None)` that starts the epoch. `state` is donated.
    inputs: the run's `StepInputs` passed to every call.
    data: the training set passed to every call.
    steps_per_epoch: N // B, or ceil(N / B) with drop_last=False.
    step: loop "steps" only: the jitted `(inputs, state, data, epoch, indices) -> (state,
      metrics)`.
    last_step: loop "steps" with a last partial batch only: `step` compiled for its size.
  """
  jitted: Callable[..., Any]
  inputs: "StepInputs"
  data: recipe_lib.DeviceDataset
  steps_per_epoch: int
  step: Callable[..., tuple[TrainState, Metrics]] | None = None
  last_step: Callable[..., tuple[TrainState, Metrics]] | None = None

  def __call__(self, state: TrainState, epoch: jax.Array | int,
               on_step: Callable[[Metrics], None] | None = None
               ) -> tuple[TrainState, Metrics]:
    """Runs one epoch. Metrics: (steps,) arrays `loss`, `lr` and the recipe's metrics.

    Args:
      state: the train state (donated).
      epoch: the phase-local epoch.
      on_step: loop "steps" only: called with each step's metrics right after the step is
        dispatched (device arrays that may not be computed yet; waiting for them is the
        hook's choice). Loop "scan" runs the epoch as one call and never calls it.
    """
    if not isinstance(epoch, jax.Array):
      epoch = jnp.asarray(epoch, jnp.int32)
    if self.step is None:
      return self.jitted(self.inputs, state, self.data, epoch)
    state, perm, last = self.jitted(self.inputs, state, self.data, epoch)
    calls = [(self.step, indices) for indices in perm]  # one device-side unstack
    if last is not None:
      calls.append((self.last_step, last))
    history = []
    for step, indices in calls:
      state, metrics = step(self.inputs, state, self.data, epoch, indices)
      history.append(metrics)
      if on_step is not None:
        on_step(metrics)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)


def as_input(fn: Callable[..., Any]) -> Any:
  """`fn` as an argument of a compiled function: a pytree callable (e.g.
  `augment.Normalize`) as it is, its numbers traced; a plain function as a
  `jax.tree_util.Partial` (static)."""
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(fn)):
    return jax.tree_util.Partial(fn)
  return fn


class StepInputs(NamedTuple):
  """The values of a run that are arguments of its compiled functions, not constants.

  Attributes:
    recipe: the method, a pytree whose numeric hyperparameters (alpha, beta, temperatures,
      loss weights, DRW / deferral / stage-2 epochs) are leaves (`recipe.Hyperparameters`).
    keys: the run's `RunKeys` (from its seed).
    normalize_fn: the input normalisation (`as_input`; `augment.Normalize` keeps a
      dataset's statistics out of the executable).

  With the learning-rate schedule held in the optimiser state (`optim.sgd`), runs that
  differ only in these values (another seed, alpha or learning rate) trace to the same
  program, so JAX's compilation cache serves them one executable.
  """
  recipe: recipe_lib.Recipe
  keys: RunKeys
  normalize_fn: Any


def train_step(inputs: StepInputs, state: TrainState, data: recipe_lib.DeviceDataset,
               epoch: jax.Array, indices: jax.Array, feed: feed_lib.Feed | None = None, *,
               apply_fn: Callable[..., Any], tx: optax.GradientTransformation,
               batch_size: int, num_epochs: int, augment_fn: AugmentFn | None,
               mesh: Mesh | None = None, train_batch_stats: bool = True
               ) -> tuple[TrainState, Metrics, Metrics]:
  """One training step: `(state, metrics, draws)` after training on the clean `indices`.

  The step's key is `fold_in(inputs.keys.step, state.step)`; it builds a `StepContext`,
  differentiates `inputs.recipe.loss` w.r.t. the params, applies the optimiser and threads
  the BatchNorm statistics and the method state. `draws` are the recipe's random outcomes
  (`LossOutput.draws`), so that a step can be replayed outside ltjax; the epoch loop drops
  them. Not jitted: `make_train_epoch` compiles it.

  Args: as `make_train_epoch` (without `epoch_offset`, `loop` and `drop_last`; the
    normalisation is `inputs.normalize_fn`); `batch_size` is the number of clean `indices`
    of every call (`StepContext.batch_size`). `feed`: the streamed path's host-fed batches
    of this step (`ltjax.feed.Feed`; `indices` are then its clean batch's), whose refill
    goes into the class bank `state.input_state` before the recipe runs.
  """
  if indices.shape != (batch_size,):
    raise ValueError(f"this step trains batches of {batch_size} indices, got shape "
                     f"{indices.shape}.")
  recipe = inputs.recipe
  bank = state.input_state or None
  if feed is not None and feed.refill is not None:
    bank = feed_lib.refill(bank, feed.refill)
  ctx = recipe_lib.StepContext(
      key=jax.random.fold_in(inputs.keys.step, state.step), step=state.step, epoch=epoch,
      num_epochs=num_epochs, batch_size=batch_size, clean_indices=indices, data=data,
      load=make_load(data, augment_fn, inputs.normalize_fn, mesh), feed=feed, bank=bank,
      transform=make_transform(augment_fn, inputs.normalize_fn, mesh))

  def loss_fn(params: Any) -> tuple[jax.Array, recipe_lib.LossOutput]:
    forward = recipe_lib.Forward(apply_fn, params, state.batch_stats,
                                 dropout_key=jax.random.fold_in(ctx.key, DROPOUT_STREAM))
    return recipe.loss(forward, ctx, state.method_state)

  (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=out.forward.batch_stats if train_batch_stats else state.batch_stats,
      opt_state=opt_state, method_state=out.method_state,
      input_state=state.input_state if bank is None else bank)
  metrics = {**out.metrics, "loss": loss, "lr": optim.current_lr(opt_state)}
  return new_state, metrics, dict(out.draws)


def make_train_step(recipe: recipe_lib.Recipe, apply_fn: Callable[..., Any],
                    tx: optax.GradientTransformation, *, batch_size: int, num_epochs: int,
                    augment_fn: AugmentFn | None, normalize_fn: NormalizeFn, seed: int,
                    mesh: Mesh | None = None, train_batch_stats: bool = True
                    ) -> Callable[..., tuple[TrainState, Metrics, Metrics]]:
  """`train_step` bound to a recipe and a seed: `step(state, data, epoch, indices) ->
  (state, metrics, draws)` (for replaying single steps; not jitted)."""
  return functools.partial(
      train_step, StepInputs(recipe, run_keys(seed), as_input(normalize_fn)),
      apply_fn=apply_fn, tx=tx, batch_size=batch_size, num_epochs=num_epochs,
      augment_fn=augment_fn, mesh=mesh, train_batch_stats=train_batch_stats)


def make_train_epoch(recipe: recipe_lib.Recipe, apply_fn: Callable[..., Any],
                     tx: optax.GradientTransformation, data: recipe_lib.DeviceDataset, *,
                     batch_size: int, num_epochs: int, augment_fn: AugmentFn | None,
                     normalize_fn: NormalizeFn, seed: int, mesh: Mesh | None = None,
                     epoch_offset: int = 0, train_batch_stats: bool = True,
                     loop: str = "scan", drop_last: bool = True) -> TrainEpoch:
  """Builds the compiled epoch of one training phase.

  Args:
    recipe: the method (its `loss` is differentiated w.r.t. the params).
    apply_fn: the model's `apply` (Flax `model.apply`).
    tx: the phase's optimiser (an `optim.sgd`, whose learning rate is logged).
    data: on-device training set.
    batch_size: B (static); with a mesh, divisible by its number of devices.
    num_epochs: epochs of this phase (`StepContext.num_epochs`).
    augment_fn: `(key, uint8 images) -> uint8 images` or None.
    normalize_fn: `uint8 images -> float32`.
    seed: run seed; every key derives from it (`state.run_keys`).
    mesh: optional data-parallel mesh (axis "data"); state and data must be replicated on it.
    epoch_offset: global epoch of this phase's epoch 0 (keys use the global epoch, the
      recipe sees the phase epoch).
    train_batch_stats: False keeps the BatchNorm statistics fixed (frozen-backbone phases).
    loop: "scan" (the epoch is one compiled loop), "steps" (one compiled call per step) or
      "auto" (see the module docstring); the same steps and keys either way.
    drop_last: True (default) drops the N mod B samples that the epoch permutation's full
      batches leave out; False trains them as one more, smaller step at the end of the
      epoch (module docstring, point 4; with a mesh, N mod B must be divisible by its
      number of devices).

  Returns:
    A TrainEpoch.
  """
  if num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
  if not 1 <= batch_size <= data.num_samples:
    raise ValueError(f"batch_size must be in [1, {data.num_samples}], got {batch_size}.")
  last_size = 0 if drop_last else data.num_samples % batch_size
  if mesh is not None:
    sharding.check_divisible(batch_size, mesh)
    if last_size:
      try:
        sharding.check_divisible(last_size, mesh)
      except ValueError as e:
        raise ValueError(f"drop_last=False trains a last batch of N mod B = {last_size} "
                         f"samples, which the mesh cannot split: {e}") from e
  loop = resolve_loop(loop)

  def epoch_step(size: int) -> Callable[..., tuple[TrainState, Metrics]]:
    """`(inputs, state, data, epoch, indices) -> (state, metrics)` for batches of `size`."""

    def step(inputs: StepInputs, state: TrainState, data: recipe_lib.DeviceDataset,
             epoch: jax.Array, indices: jax.Array) -> tuple[TrainState, Metrics]:
      state, metrics, _ = train_step(
          inputs, state, data, epoch, indices, apply_fn=apply_fn, tx=tx, batch_size=size,
          num_epochs=num_epochs, augment_fn=augment_fn, mesh=mesh,
          train_batch_stats=train_batch_stats)
      return state, metrics

    return step

  full_step = epoch_step(batch_size)
  last_step = epoch_step(last_size) if last_size else None

  def begin_epoch(inputs: StepInputs, state: TrainState, data: recipe_lib.DeviceDataset,
                  epoch: jax.Array) -> tuple[TrainState, jax.Array, jax.Array | None]:
    """The recipe's epoch hook and the epoch's clean batches (`epoch_batches`)."""
    epoch = jnp.asarray(epoch, jnp.int32)
    global_epoch = epoch + epoch_offset
    evaluate = make_evaluate(apply_fn, state.params, state.batch_stats,
                             inputs.normalize_fn)
    method_state = inputs.recipe.begin_epoch(
        state.method_state, epoch, data, evaluate,
        jax.random.fold_in(inputs.keys.epoch, global_epoch), num_epochs=num_epochs)
    perm, last = epoch_batches(jax.random.fold_in(inputs.keys.permutation, global_epoch),
                               data.num_samples, batch_size, drop_last)
    return state.replace(method_state=method_state), perm, last

  def train_epoch(inputs: StepInputs, state: TrainState, data: recipe_lib.DeviceDataset,
                  epoch: jax.Array) -> tuple[TrainState, Metrics]:
    epoch = jnp.asarray(epoch, jnp.int32)
    state, perm, last = begin_epoch(inputs, state, data, epoch)
    state, metrics = jax.lax.scan(lambda s, idx: full_step(inputs, s, data, epoch, idx),
                                  state, perm)
    if last is None:
      return state, metrics
    state, last_metrics = last_step(inputs, state, data, epoch, last)
    return state, jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), metrics,
                               last_metrics)

  def compile_fn(fn: Callable[..., Any], num_args: int) -> Callable[..., Any]:
    if mesh is None:
      return jax.jit(fn, donate_argnums=1)
    rep = sharding.replicated(mesh)
    return jax.jit(fn, in_shardings=(rep,) * num_args, out_shardings=rep, donate_argnums=1)

  steps = steps_per_epoch(data.num_samples, batch_size, drop_last)
  inputs = StepInputs(recipe, run_keys(seed), as_input(normalize_fn))  # weak types kept
  inputs = jax.device_put(inputs) if mesh is None else sharding.replicate(inputs, mesh)
  if loop == "scan":
    return TrainEpoch(jitted=compile_fn(train_epoch, 4), inputs=inputs, data=data,
                      steps_per_epoch=steps)
  return TrainEpoch(jitted=compile_fn(begin_epoch, 4), inputs=inputs, data=data,
                    steps_per_epoch=steps, step=compile_fn(full_step, 5),
                    last_step=None if last_step is None else compile_fn(last_step, 5))
