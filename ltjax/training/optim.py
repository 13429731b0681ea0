"""SGD as in the PyTorch reference code, with an optional frozen part of the model.

PyTorch `SGD(momentum=mu, weight_decay=wd, nesterov=...)` couples weight decay with the
gradient before the momentum buffer, and the reference code decays every parameter
(BatchNorm scales and biases included):

  g_t = grad_t + wd * theta_t
  b_t = mu * b_{t-1} + g_t                     (b_0 = g_0)
  theta_{t+1} = theta_t - lr_t * b_t           (Nesterov: - lr_t * (g_t + mu * b_t))

which is `optax.chain(add_decayed_weights(wd), sgd(lr, mu, nesterov))`. The learning rate is
injected (`optax.inject_hyperparams`) so the engine can log the rate of every step
(`current_lr`). A `schedules` schedule (or a float) lives in the optimiser state, so the
learning-rate values are inputs of the compiled step: runs that differ only in them share
one executable. A `trainable` mask freezes the rest of the model: frozen leaves get a zero
update (`optax.set_to_zero`), no weight decay and no momentum, so they stay bit-identical
(CP-Mix classifier fine-tuning).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax.training import schedules

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree]


def _sgd_chain(learning_rate: float, momentum: float, weight_decay: float,
               nesterov: bool) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


class ScheduledState(NamedTuple):
  """State of `sgd` with a pytree schedule: the schedule's numbers and the inner state.

  Attributes:
    schedule: the `schedules` dataclass; its leaves (base rate, milestones, ...) are
      inputs of the compiled step, so another rate reuses the executable.
    inner: the `optax.inject_hyperparams` state; `hyperparams["learning_rate"]` is the rate
      of the last update (the step-0 rate before any).
  """
  schedule: Any
  inner: optax.OptState


def _scheduled(schedule: Any, inner: optax.GradientTransformation
               ) -> optax.GradientTransformation:
  """`inner` (an injected-hyperparameter SGD) with its rate read from a schedule held in
  the optimiser state: lr_t = schedule(t), t the count of updates so far."""

  def set_rate(schedule: Any, state: Any) -> Any:
    rate = jnp.array(schedule(state.count), jnp.float32)  # a copy: no buffer shared with
    # the schedule (e.g. `Constant`), which would be donated twice
    return state._replace(hyperparams={**state.hyperparams, "learning_rate": rate})

  def init(params: PyTree) -> ScheduledState:
    # Fresh buffers: a donated state must not delete the arrays this closure holds.
    held = jax.tree.map(jnp.array, schedule)
    return ScheduledState(held, set_rate(held, inner.init(params)))

  def update(updates: PyTree, state: ScheduledState, params: PyTree | None = None
             ) -> tuple[PyTree, ScheduledState]:
    updates, inner_state = inner.update(updates, set_rate(state.schedule, state.inner),
                                        params)
    return updates, ScheduledState(state.schedule, inner_state)

  return optax.GradientTransformation(init, update)


def sgd(learning_rate: float | schedules.Schedule | optax.Schedule, momentum: float = 0.9,
        nesterov: bool = False, weight_decay: float = 0.0,
        trainable: Mask | None = None) -> optax.GradientTransformation:
  """PyTorch-style SGD with coupled weight decay on all (trainable) parameters.

  Args:
    learning_rate: a float, a `schedules` schedule (kept in the optimiser state, so its
      numbers are inputs of the compiled step: `ScheduledState`), or any other function of
      the optimiser's step count (a constant of the compiled step). The count restarts
      with every fresh optimiser, i.e. at every phase.
    momentum: mu in [0, 1); 0 disables the momentum buffer.
    nesterov: Nesterov momentum.
    weight_decay: wd >= 0, added to the gradient as `wd * theta`.
    trainable: optional bool pytree over the params (or a function params -> such a tree,
      e.g. `path_mask(("head",))`); False leaves are frozen.

  Returns:
    An optax GradientTransformation.
  """
  if not callable(learning_rate):
    _checks.check_positive(learning_rate, "learning_rate", allow_zero=True)
    learning_rate = schedules.Constant(jnp.asarray(learning_rate, jnp.float32))
  _checks.check_in_range(momentum, "momentum", 0.0, 0.999999)
  _checks.check_positive(weight_decay, "weight_decay", allow_zero=True)
  if nesterov and momentum == 0:
    raise ValueError("nesterov momentum needs momentum > 0.")
  held = isinstance(learning_rate, schedules.Schedule)
  tx = optax.inject_hyperparams(_sgd_chain, static_args=("momentum", "weight_decay", "nesterov"))(
      learning_rate=0.0 if held else learning_rate, momentum=momentum,
      weight_decay=weight_decay, nesterov=nesterov)
  if held:
    tx = _scheduled(learning_rate, tx)
  if trainable is None:
    return tx

  def labels(params: PyTree) -> PyTree:
    mask = trainable(params) if callable(trainable) else trainable
    return jax.tree.map(lambda m: "train" if m else "freeze", mask)

  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def path_mask(names: Sequence[str]) -> Callable[[PyTree], PyTree]:
  """A trainable mask: True for leaves whose parameter path contains one of `names`.

  `path_mask(("head",))(params)` marks only the parameters under a module called "head".
  """
  names = frozenset(names)
  if not names:
    raise ValueError("path_mask needs at least one module name.")

  def mask(params: PyTree) -> PyTree:
    def leaf(path, _):
      return any(getattr(k, "key", getattr(k, "name", None)) in names for k in path)
    return jax.tree_util.tree_map_with_path(leaf, params)

  return mask


def phase_mask(trainable: Sequence[str] | None, frozen: Sequence[str] = ()
               ) -> Callable[[PyTree], PyTree] | None:
  """The trainable mask of `Requirements.trainable` / `frozen`: the leaves under a module
  named in `trainable` (all when None) and under none named in `frozen`; None: no mask."""
  if trainable is None and not frozen:
    return None
  keep = None if trainable is None else path_mask(trainable)
  drop = path_mask(frozen) if frozen else None

  def mask(params: PyTree) -> PyTree:
    kept = jax.tree.map(lambda _: True, params) if keep is None else keep(params)
    if drop is None:
      return kept
    return jax.tree.map(lambda k, d: k and not d, kept, drop(params))

  return mask


def current_lr(opt_state: PyTree) -> jax.Array:
  """Learning rate of the last update of an `sgd` optimiser (the step-0 rate before any)."""
  rates = [s.hyperparams["learning_rate"]
           for s in jax.tree.leaves(opt_state, is_leaf=_is_injected) if _is_injected(s)]
  if len(rates) != 1:
    raise ValueError(f"expected one injected learning rate in the optimiser state, "
                     f"found {len(rates)}.")
  return jnp.asarray(rates[0], jnp.float32)


def _is_injected(x: Any) -> bool:
  return isinstance(getattr(x, "hyperparams", None), dict) and (
      "learning_rate" in x.hyperparams)
