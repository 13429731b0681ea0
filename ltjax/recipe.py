"""The contract between the training engine and the methods.

A method (ERM, LOBM, DBN-Mix, ...) is a `Recipe`: it builds its batch(es) from a
`StepContext` (keys, epoch, the on-device dataset and its samplers), runs the model through
a functional `Forward`, and returns a scalar loss. The engine owns everything else
(optimiser, schedules, the compiled epoch loop, sharding, checkpoints), so a new mixup
method is one small module that subclasses `Recipe`.

What a recipe needs from the engine and the model (branches, head, features, the class laws
it draws, the parameters it trains, the phases that follow it) is one typed object,
`Recipe.requirements()`; `ltjax.methods.check_compatible` and the experiment runner read
it, never the recipe's class.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from ltjax import _checks, samplers

PyTree = Any
Outputs = dict[str, jax.Array]


class Hyperparameters:
  """Mixin that makes a frozen dataclass of hyperparameters a pytree.

  Its fields declared `float`, the epoch fields named in `EPOCH_FIELDS` (ints or None) and nested
  `Hyperparameters` dataclasses (a recipe's `Criterion`) are the pytree's children; every
  other field (names, bools, shape-giving ints) is static. The engine passes a recipe to
  its compiled functions as an argument, so alpha, beta, temperatures, loss weights and
  the DRW / deferral / stage-2 epochs are inputs of the executable, not constants in it:
  runs that differ only in them compile once. Unflattening bypasses `__init__` (no
  validation of traced values); validation runs when a recipe is constructed.
  """
  EPOCH_FIELDS = ("drw_epoch", "defer_epoch", "stage2_epoch")

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    jax.tree_util.register_pytree_with_keys(cls, _flatten_with_keys, _unflatten_for(cls),
                                            _flatten)

  @classmethod
  def _traced_fields(cls) -> frozenset[str]:
    """Fields declared `float` and the EPOCH_FIELDS: decided by the class, never by a
    value (JAX rebuilds pytrees with placeholders in the leaves, e.g. when lowering)."""
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.type in ("float", float) or f.name in cls.EPOCH_FIELDS)


def _split(obj: Hyperparameters) -> tuple[list[tuple[str, Any]], tuple[Any, ...]]:
  traced = obj._traced_fields()  # pylint: disable=protected-access
  children, static = [], []
  for field in dataclasses.fields(obj):
    value = getattr(obj, field.name)
    if field.name in traced or isinstance(value, Hyperparameters):
      children.append((field.name, value))
    else:
      static.append((field.name, value))
  return children, (tuple(n for n, _ in children), tuple(static))


def _flatten(obj: Hyperparameters) -> tuple[list[Any], tuple[Any, ...]]:
  children, aux = _split(obj)
  return [v for _, v in children], aux


def _flatten_with_keys(obj: Hyperparameters) -> tuple[list[Any], tuple[Any, ...]]:
  children, aux = _split(obj)
  return [(jax.tree_util.GetAttrKey(n), v) for n, v in children], aux


def _unflatten_for(cls: type) -> Callable[[tuple[Any, ...], Any], Any]:
  def unflatten(aux: tuple[Any, ...], children: Any) -> Any:
    names, static = aux
    obj = object.__new__(cls)
    for name, value in (*static, *zip(names, children)):
      object.__setattr__(obj, name, value)
    return obj
  return unflatten


@flax.struct.dataclass
class DeviceDataset:
  """A small dataset that lives on the device for the compiled epoch loop.

  Attributes:
    images: (N, H, W, C) uint8 images.
    labels: (N,) int32 labels.
    index: the ClassIndex used by every class-conditional sampler.
  """
  images: jax.Array
  labels: jax.Array
  index: samplers.ClassIndex

  @classmethod
  def from_arrays(cls, images: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
                  num_classes: int) -> "DeviceDataset":
    """Puts host arrays (e.g. an `ltjax.data.ArrayDataset`'s train split) on the device."""
    labels = jnp.asarray(labels, jnp.int32)
    _checks.check_same_leading("images", images, "labels", labels)
    return cls(images=jnp.asarray(images), labels=labels,
               index=samplers.build_class_index(labels, num_classes))

  @property
  def num_samples(self) -> int:
    return self.labels.shape[0]

  @property
  def num_classes(self) -> int:
    return self.index.num_classes

  @property
  def class_counts(self) -> jax.Array:
    return self.index.counts


class Forward(NamedTuple):
  """A model application that threads mutable collections (batch statistics) functionally.

  `outputs, forward = forward(x)` runs the model in training mode on `x` and returns the
  model's output dict together with a Forward that carries the updated batch statistics.
  Model outputs: `logits` (B, K) and `features` (B, D); dual-branch models called with
  `x_rebalance=` also give `logits_c`, `logits_r`, `features_c`, `features_r`.
  """
  apply_fn: Callable[..., Any]
  params: PyTree
  batch_stats: PyTree
  train: bool = True

  def __call__(self, x: jax.Array, **kwargs) -> tuple[Outputs, "Forward"]:
    variables = {"params": self.params}
    if not self.train or not self.batch_stats:
      if self.batch_stats:
        variables["batch_stats"] = self.batch_stats
      return self.apply_fn(variables, x, train=self.train, **kwargs), self
    variables["batch_stats"] = self.batch_stats
    outputs, updates = self.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                     **kwargs)
    return outputs, self._replace(batch_stats=updates["batch_stats"])


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything a recipe may read in one training step (built inside the compiled step).

  Attributes:
    key: this step's PRNG key (derived from the run seed and the global step, so a resumed
      run draws the same numbers).
    step: global step (int32 scalar, traced).
    epoch: current epoch, 0-based (int32 scalar, traced).
    num_epochs: total epochs of the run (static).
    batch_size: the size of this step's clean batch (static): B, or N mod B on an epoch's
      last step with `drop_last=False`; a recipe's other batches take this size.
    clean_indices: (B,) instance-balanced indices of this step (epoch permutation).
    data: the on-device training set.
    load: `load(key, indices) -> (x, labels)` gathers, augments and normalises images.
  """
  key: jax.Array
  step: jax.Array
  epoch: jax.Array
  num_epochs: int
  batch_size: int
  clean_indices: jax.Array
  data: DeviceDataset
  load: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

  @property
  def num_classes(self) -> int:
    return self.data.num_classes

  @property
  def class_counts(self) -> jax.Array:
    return self.data.class_counts

  def keys(self, *names: str) -> dict[str, jax.Array]:
    """Independent sub-keys of this step's key, one per name (stable across recipes)."""
    return {n: jax.random.fold_in(self.key, i) for i, n in enumerate(names)}

  def clean_batch(self, key: jax.Array) -> "Batch":
    """The step's instance-balanced batch (epoch permutation), augmented."""
    return Batch(*self.load(key, self.clean_indices), self.clean_indices)

  def draw(self, key: jax.Array, probs: jax.Array, num: int | None = None) -> "Batch":
    """A batch drawn with replacement from the whole dataset by a class law `probs`."""
    key_idx, key_aug = jax.random.split(key)
    idx = samplers.draw_indices(key_idx, self.data.index, probs, num or self.batch_size)
    return Batch(*self.load(key_aug, idx), idx)


class Batch(NamedTuple):
  """A loaded batch: inputs, labels and the dataset indices they came from.

  Attributes:
    x: (B, H, W, C) float32 inputs (augmented, normalised).
    labels: (B,) int32 labels.
    indices: (B,) int32 dataset indices.
  """
  x: jax.Array
  labels: jax.Array
  indices: jax.Array


class LossOutput(NamedTuple):
  """What a recipe's loss returns besides the scalar loss.

  Attributes:
    forward: the Forward after the step's model calls (updated batch statistics).
    method_state: the recipe's state after the step.
    metrics: scalars logged per step (averaged over the epoch).
    draws: the step's random outcomes (dataset indices, lambda, partners, boxes, ...),
      named per recipe; the epoch loop drops them, `loop.make_train_step` returns them so
      that a step can be replayed by an independent implementation (tests/parity).
  """
  forward: Forward
  method_state: PyTree
  metrics: dict[str, jax.Array]
  draws: dict[str, jax.Array] = {}


@dataclasses.dataclass(frozen=True)
class EpochContext:
  """Everything a recipe may read in its epoch hook (built inside the compiled epoch).

  Attributes:
    epoch: the epoch about to start, 0-based within the phase (int32 scalar, traced).
    data: the on-device training set.
    evaluate: `evaluate(x) -> outputs`, the model in inference mode (no gradient); uint8
      images (e.g. `data.images[idx]`) are normalised as in training, without
      augmentation; float inputs go to the model as they are.
    key: PRNG key of this epoch.
    num_epochs: epochs of the phase (static), None when the engine does not pass it.
  """
  epoch: jax.Array
  data: DeviceDataset
  evaluate: Callable[[jax.Array], Outputs]
  key: jax.Array
  num_epochs: int | None = None


# Class laws a recipe may draw batches from besides the step's clean batch: the samplers'
# laws (`ctx.draw`) and "confusion", CP-Mix's class pairs (a uniform true class, a confused
# class from its row of the confusion counts, one image of each).
CLASS_LAWS = (*samplers.SAMPLERS, "confusion")


@dataclasses.dataclass(frozen=True)
class Requirements:
  """What a recipe needs from the engine and the model (`Recipe.requirements()`).

  Attributes:
    branches: 1 for single-branch models, 2 for dual-branch models (outputs "logits_c" and
      "logits_r", called with `x_rebalance=`).
    head: the classifier head the model must have ("linear", "linear_nobias" or
      "normalized").
    needs_features: the loss reads the model's pooled "features" (feature-space pairing).
    needs_feature_map: the loss reads the model's un-pooled "feature_map".
    draws: the class laws of `CLASS_LAWS` the recipe draws batches from besides the clean
      (instance-balanced) batch; an input pipeline must provide them.
    trainable: names of the modules whose parameters the recipe trains (`optim.path_mask`);
      None: all of them.
    train_batch_stats: False when the recipe runs the model in inference mode, so that its
      phase keeps the BatchNorm statistics fixed.
    extra_phases: recipes of the phases that follow this one (CP-Mix: the classifier
      fine-tuning); their optimiser settings are the caller's.
  """
  branches: int = 1
  head: str = "linear"
  needs_features: bool = False
  needs_feature_map: bool = False
  draws: tuple[str, ...] = ()
  trainable: tuple[str, ...] | None = None
  train_batch_stats: bool = True
  extra_phases: tuple[Recipe, ...] = ()

  def __post_init__(self):
    if self.branches not in (1, 2):
      raise ValueError(f"branches must be 1 or 2, got {self.branches}.")
    unknown = sorted(set(self.draws) - set(CLASS_LAWS))
    if unknown:
      raise ValueError(f"Unknown class laws {unknown} in draws; valid: "
                       f"{', '.join(CLASS_LAWS)}.")


@dataclasses.dataclass(frozen=True)
class Recipe(Hyperparameters, abc.ABC):
  """Base class of every method. Subclasses are frozen dataclasses of hyperparameters.

  A recipe is a pytree (`Hyperparameters`): the engine passes it into its compiled
  functions, so its numeric hyperparameters are traced there. Use them in `jnp`
  arithmetic and `jnp.where`, not in Python `if`s; a field that selects code or gives a
  shape must be a str, bool or int (static).

  Subclasses override `loss`, and where they need them `init_state`, `on_epoch`,
  `logits` and `requirements`.

  Attributes:
    name: registry name.
    branches: 1 for single-branch models, 2 for dual-branch (DBN-Mix) models.
    head: classifier head the model must have ("linear" or "normalized").
  """
  name: str = "recipe"
  branches: int = 1
  head: str = "linear"

  def requirements(self) -> Requirements:
    """What this recipe needs from the engine and the model (base: branches and head)."""
    return Requirements(branches=self.branches, head=self.head)

  def init_state(self, class_counts: jax.Array) -> PyTree:
    """Initial method state (confusion counts, ...); () when the method has none."""
    del class_counts
    return ()

  def begin_epoch(self, method_state: PyTree, epoch: jax.Array, data: DeviceDataset,
                  evaluate: Callable[[jax.Array], Outputs], key: jax.Array,
                  num_epochs: int | None = None) -> PyTree:
    """The engine's epoch hook, run inside the compiled epoch before its first step.

    Builds the `EpochContext` (see its attributes for the arguments) and returns
    `on_epoch(method_state, ctx)`; recipes override `on_epoch`, not this.
    """
    return self.on_epoch(method_state, EpochContext(epoch, data, evaluate, key, num_epochs))

  def on_epoch(self, method_state: PyTree, ctx: EpochContext) -> PyTree:
    """The method state for the epoch `ctx.epoch` (default: unchanged)."""
    del ctx
    return method_state

  @abc.abstractmethod
  def loss(self, forward: Forward, ctx: StepContext, method_state: PyTree
           ) -> tuple[jax.Array, LossOutput]:
    """Scalar training loss of one step (differentiated w.r.t. `forward.params`)."""

  def logits(self, outputs: Outputs) -> jax.Array:
    """Inference logits from the model outputs (dual-branch: averaged branches)."""
    return outputs["logits"]


def soft_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """One-hot float32 labels (B, K)."""
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
