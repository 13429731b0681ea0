"""Learning-rate schedules over the global step: callables whose numbers are pytree leaves.

A schedule is a `flax.struct` dataclass with `__call__(step) -> lr`, so it works wherever
an optax schedule does, and `optim.sgd` keeps it in the optimiser state: the base rate,
warm-up, milestones and factors are then inputs of the compiled step, not constants baked
into it, and a run with another learning rate reuses the compiled executable. Schedules
compare and hash by identity (`eq=False`), so `jax.jit(schedule)` works.

Warm-up over the first `warmup_epochs` epochs, linear in one of two units or constant:

- `warmup_unit="epoch"` (default; LDAM-DRW / ImbalancedDL / CMO `adjust_learning_rate`,
  set once per epoch): for epoch e < warmup_epochs (0-based),
  `lr = base_lr * (e + 1) / warmup_epochs`, constant inside the epoch.
- `warmup_unit="step"` (DBN-Mix code, soony1213/DBN-Mix main.py `warmup_step_schedule`, a
  `LambdaLR` stepped after every optimiser step): for global step t < W = warmup_epochs *
  steps_per_epoch, `lr = base_lr * t / W`, so the first step trains at lr 0. The code's
  steps_per_epoch is `len(train_loader)` = ceil(N / B) (drop_last=False).
- `warmup_unit="constant"` (BC-learning code, mil-tokyo/bc_learning_sound train.py
  `lr_schedule`: `if epoch <= warmup: decay = 1` on its 1-based epoch): a constant warm-up,
  `lr = CONSTANT_WARMUP_FACTOR * base_lr` (0.1) for epochs e < warmup_epochs, then base_lr.

A milestone m (0-based epoch) applies from the first step of epoch m on, which is what
`if epoch > 160` on the reference's 1-based epoch counter does, and what the DBN-Mix code's
`step < milestones[0] * steps_per_epoch` does.

  multistep: lr(e) = base_lr * f_j for m_j <= e < m_{j+1}   (f_j the cumulative factor)
  cosine:    lr(t) = final + (base - final) * (1 + cos(pi * (t - t_w) / (T - t_w))) / 2
             over steps t after the warm-up t_w, T the total number of steps.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from ltjax import _checks

SCHEDULES = ("multistep", "cosine", "constant")
WARMUP_UNITS = ("epoch", "step", "constant")
CONSTANT_WARMUP_FACTOR = 0.1  # warmup_unit="constant": the BC-learning code's LR * 0.1


def _check_common(base_lr: float, steps_per_epoch: int, warmup_epochs: int,
                  warmup_unit: str) -> None:
  _checks.check_positive(base_lr, "base_lr")
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
  if warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
  if warmup_unit not in WARMUP_UNITS:
    raise ValueError(f"Unknown warmup_unit {warmup_unit!r}; valid: {', '.join(WARMUP_UNITS)}.")


def _warmup_factor(step: jax.Array, steps_per_epoch: jax.Array, warmup_epochs: jax.Array,
                   warmup_unit: str) -> jax.Array:
  """Linear warm-up factor of a global step (see the module docstring), 1 after it.

  "epoch": (e + 1) / warmup_epochs with e = step // steps_per_epoch; "step":
  step / (warmup_epochs * steps_per_epoch); "constant": 0.1 for e < warmup_epochs; 1
  throughout when warmup_epochs is 0.
  """
  warmup = jnp.maximum(warmup_epochs, 1).astype(jnp.float32)
  if warmup_unit == "constant":
    return jnp.where(step // steps_per_epoch < warmup_epochs, CONSTANT_WARMUP_FACTOR, 1.0)
  if warmup_unit == "epoch":
    progress = (step // steps_per_epoch + 1).astype(jnp.float32) / warmup
  else:
    progress = step.astype(jnp.float32) / (warmup * steps_per_epoch)
  return jnp.where(warmup_epochs > 0, jnp.minimum(progress, 1.0), 1.0)


@flax.struct.dataclass(eq=False)
class WarmupMultistep:
  """`warmup_multistep`'s schedule: its numbers are pytree leaves (inputs of a compiled
  step, not constants in it); `warmup_unit` is static."""
  base_lr: jax.Array
  steps_per_epoch: jax.Array
  warmup_epochs: jax.Array
  milestones: jax.Array
  factors: jax.Array  # (1, f_1, ..., f_J): the cumulative factor before / after each milestone
  warmup_unit: str = flax.struct.field(pytree_node=False, default="epoch")

  def __call__(self, step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.int32)
    decay = self.factors[jnp.sum(step // self.steps_per_epoch >= self.milestones)]
    return self.base_lr * _warmup_factor(step, self.steps_per_epoch, self.warmup_epochs,
                                         self.warmup_unit) * decay


@flax.struct.dataclass(eq=False)
class WarmupCosine:
  """`warmup_cosine`'s schedule (numbers as pytree leaves, `warmup_unit` static)."""
  base_lr: jax.Array
  final_lr: jax.Array
  steps_per_epoch: jax.Array
  warmup_epochs: jax.Array
  total_epochs: jax.Array
  warmup_unit: str = flax.struct.field(pytree_node=False, default="epoch")

  def __call__(self, step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.int32)
    start = self.warmup_epochs * self.steps_per_epoch
    length = (self.total_epochs - self.warmup_epochs) * self.steps_per_epoch
    t = jnp.clip(step - start, 0, length).astype(jnp.float32) / length
    cosine = self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t))
    warm = self.base_lr * _warmup_factor(step, self.steps_per_epoch, self.warmup_epochs,
                                         self.warmup_unit)
    return jnp.where(step < start, warm, cosine)


@flax.struct.dataclass(eq=False)
class Constant:
  """lr = base_lr at every step (a pytree leaf)."""
  base_lr: jax.Array

  def __call__(self, step: jax.Array) -> jax.Array:
    del step
    return self.base_lr


Schedule = WarmupMultistep | WarmupCosine | Constant


def _f32(value: float) -> jax.Array:
  return jnp.asarray(value, jnp.float32)


def _i32(value: int | Sequence[int]) -> jax.Array:
  return jnp.asarray(value, jnp.int32)


def warmup_multistep(base_lr: float, steps_per_epoch: int, warmup_epochs: int,
                     milestones: Sequence[int], factors: Sequence[float] | None = None,
                     gamma: float = 0.1, warmup_unit: str = "epoch") -> WarmupMultistep:
  """Linear warm-up, then piecewise-constant decay at epoch milestones.

  Args:
    base_lr: peak learning rate.
    steps_per_epoch: optimisation steps per epoch (ceil(N / B) when the last partial
      batch is trained, as in the LDAM-DRW and DBN-Mix code).
    warmup_epochs: warm-up length in epochs (0: none).
    milestones: increasing 0-based epochs where the rate drops (e.g. (160, 180)).
    factors: cumulative multipliers of base_lr from each milestone on (MAMix / ImbalancedDL:
      (0.01, 1e-4)); default `gamma ** (j + 1)` (DBN-Mix: x0.1 at 160 and 180).
    gamma: decay per milestone when `factors` is None.
    warmup_unit: "epoch" (paper-era reference loops, default) or "step" (DBN-Mix code:
      per iteration from lr 0); see the module docstring.

  Returns:
    A schedule `step -> lr` (float32) whose numbers are pytree leaves.
  """
  _check_common(base_lr, steps_per_epoch, warmup_epochs, warmup_unit)
  milestones = tuple(int(m) for m in milestones)
  if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(m < 0 for m in milestones):
    raise ValueError(f"milestones must be increasing non-negative epochs, got {milestones}.")
  if factors is None:
    _checks.check_positive(gamma, "gamma")
    factors = tuple(gamma ** (j + 1) for j in range(len(milestones)))
  factors = tuple(float(f) for f in factors)
  if len(factors) != len(milestones):
    raise ValueError(f"need one factor per milestone, got {len(factors)} factors for "
                     f"{len(milestones)} milestones.")
  return WarmupMultistep(_f32(base_lr), _i32(steps_per_epoch), _i32(warmup_epochs),
                         _i32(milestones), _f32((1.0,) + factors), warmup_unit)


def warmup_cosine(base_lr: float, steps_per_epoch: int, warmup_epochs: int,
                  total_epochs: int, final_lr: float = 0.0, warmup_unit: str = "epoch"
                  ) -> WarmupCosine:
  """Linear warm-up (`warmup_unit` as in `warmup_multistep`), then cosine decay per step
  to `final_lr` at the last step.

  With warmup_epochs=0 this is PyTorch's `CosineAnnealingLR(T_max=total steps)` stepped
  per iteration, the DBN-Mix code's "cosine" scheduler (which has no warm-up).
  """
  _check_common(base_lr, steps_per_epoch, warmup_epochs, warmup_unit)
  _checks.check_positive(final_lr, "final_lr", allow_zero=True)
  if total_epochs <= warmup_epochs:
    raise ValueError(f"total_epochs ({total_epochs}) must exceed warmup_epochs "
                     f"({warmup_epochs}).")
  return WarmupCosine(_f32(base_lr), _f32(final_lr), _i32(steps_per_epoch),
                      _i32(warmup_epochs), _i32(total_epochs), warmup_unit)


def constant(base_lr: float) -> Constant:
  """lr = base_lr at every step (e.g. CP-Mix classifier fine-tuning)."""
  _checks.check_positive(base_lr, "base_lr")
  return Constant(_f32(base_lr))


def get_schedule(name: str, **kwargs) -> Schedule:
  """Schedule by config name: "multistep", "cosine" or "constant" with its keyword args."""
  builders = {"multistep": warmup_multistep, "cosine": warmup_cosine, "constant": constant}
  if name not in builders:
    raise ValueError(f"Unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}.")
  return builders[name](**kwargs)
