"""The training state and the PRNG keys of a run.

Everything that changes during training lives in one pytree, `TrainState`, so an epoch is a
pure function `(state, epoch) -> (state, metrics)` and a checkpoint is that pytree (the
method states that finished phases left behind included, `TrainState.phase_states`, so a run
resumed in a later phase still has them). The
optimiser (`optax.GradientTransformation`) and the model's `apply_fn` are not part of it: they
are static and passed to the engine separately.

Every random number of a run derives from one integer seed through `run_keys`, and the
per-step key from the global step, so a run resumed from a checkpoint draws exactly the
numbers the uninterrupted run would have drawn.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ltjax import recipe as recipe_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """All mutable training state (a pytree).

  Attributes:
    step: global optimisation step (int32 scalar), counted over all phases of a run.
    params: model parameters.
    batch_stats: BatchNorm running statistics ({} for models without BatchNorm).
    opt_state: optimiser state of the current phase.
    method_state: the recipe's state (e.g. CP-Mix confusion counts), () when it has none.
    phase_states: the final method state of every finished phase, in phase order (`end_phase`);
      () in the first phase.
    input_state: state of the input path that the step threads: the streamed path's class
      bank (`ltjax.feed.ClassBank`) for recipes that draw images of chosen classes; ()
      otherwise.
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  method_state: PyTree
  phase_states: tuple[PyTree, ...] = ()
  input_state: PyTree = ()


class RunKeys(NamedTuple):
  """Independent PRNG keys of a run, all derived from its seed.

  Attributes:
    init: model initialisation.
    permutation: epoch permutations (`fold_in(permutation, epoch)`).
    step: per-step keys (`fold_in(step, global_step)`).
    epoch: keys of `Recipe.begin_epoch` (`fold_in(epoch, epoch)`).
  """
  init: jax.Array
  permutation: jax.Array
  step: jax.Array
  epoch: jax.Array


def run_keys(seed: int) -> RunKeys:
  """Derives the run's keys: `fold_in(key(seed), i)` for i = 0..3 in `RunKeys` order."""
  root = jax.random.key(seed)
  return RunKeys(*(jax.random.fold_in(root, i) for i in range(len(RunKeys._fields))))


def create_state(model: Any, recipe: recipe_lib.Recipe, tx: optax.GradientTransformation,
                 sample_input: ArrayLike, key: jax.Array,
                 class_counts: ArrayLike) -> TrainState:
  """Initialises the model, the optimiser and the recipe's state.

  Args:
    model: a Flax Linen module with `__call__(x, train)`.
    recipe: the method; its `init_state(class_counts)` gives the method state.
    tx: optimiser of the first phase.
    sample_input: a (B, H, W, C) float32 batch with the input shape (values unused).
    key: model initialisation key (`run_keys(seed).init`).
    class_counts: (K,) training class counts n_k.

  Returns:
    TrainState at step 0.
  """
  init = jax.jit(model.init, static_argnames="train")
  variables = init(key, jnp.asarray(sample_input, jnp.float32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    method_state=recipe.init_state(jnp.asarray(class_counts)))


def start_phase(state: TrainState, recipe: recipe_lib.Recipe,
                tx: optax.GradientTransformation, class_counts: ArrayLike) -> TrainState:
  """A fresh optimiser and recipe state for a new training phase; params, step and
  `phase_states` are kept (call `end_phase` first to keep the finished phase's state)."""
  return state.replace(opt_state=tx.init(state.params),
                       method_state=recipe.init_state(jnp.asarray(class_counts)))


def end_phase(state: TrainState) -> TrainState:
  """`state` with its method state appended to `phase_states` (the phase is finished)."""
  return state.replace(phase_states=(*state.phase_states, state.method_state))
