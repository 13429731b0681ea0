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

from ltjax import _checks, feed as feed_lib, samplers

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
  EPOCH_FIELDS = ("drw_epoch", "defer_epoch", "stage2_epoch", "diversity_epoch")

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
    images: (N, H, W, C) uint8 images; None for a streamed training set
      (`ltjax.data.stream`), whose images the host feeds step by step (`ltjax.feed`): only
      its labels and class index live on the device.
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

  `dropout_key` (set by the training step): in training mode each call passes
  `rngs={"dropout": k}` to the model, k a fresh split of the key (models with dropout,
  e.g. EnvNet); None, or inference mode, passes no rngs.
  """
  apply_fn: Callable[..., Any]
  params: PyTree
  batch_stats: PyTree
  train: bool = True
  dropout_key: jax.Array | None = None

  def _rngs(self) -> tuple[dict[str, Any], "Forward"]:
    """The call's `rngs` keyword (training with a dropout key) and the Forward after it."""
    if not self.train or self.dropout_key is None:
      return {}, self
    key, rest = jax.random.split(self.dropout_key)
    return {"rngs": {"dropout": key}}, self._replace(dropout_key=rest)

  def __call__(self, x: jax.Array, **kwargs) -> tuple[Outputs, "Forward"]:
    variables = {"params": self.params}
    rngs, after = self._rngs()
    if not self.train or not self.batch_stats:
      if self.batch_stats:
        variables["batch_stats"] = self.batch_stats
      return self.apply_fn(variables, x, train=self.train, **rngs, **kwargs), after
    variables["batch_stats"] = self.batch_stats
    outputs, updates = self.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                     **rngs, **kwargs)
    return outputs, after._replace(batch_stats=updates["batch_stats"])


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything a recipe may read in one training step (built inside the compiled step).

  A recipe gets its batches from `clean_batch`, `draw` (a class law) and `from_classes`
  (images of classes it chose). On the in-memory path they gather from `data` on the
  device; on the streamed path (`feed` set) they return the batches the host fed for
  this step (`ltjax.feed`), so one recipe trains from either.

  Attributes:
    key: this step's PRNG key (derived from the run seed and the global step, so a resumed
      run draws the same numbers).
    step: global step (int32 scalar, traced).
    epoch: current epoch, 0-based (int32 scalar, traced).
    num_epochs: total epochs of the run (static).
    batch_size: the size of this step's clean batch (static): B, or N mod B on an epoch's
      last step with `drop_last=False`; a recipe's other batches take this size.
    clean_indices: (B,) instance-balanced indices of this step (epoch permutation).
    data: the on-device training set (streamed: labels and class index only).
    load: `load(key, indices) -> (x, labels)` gathers, augments and normalises images
      (in-memory path).
    feed: the host-fed batches of this step (streamed path), else None.
    bank: the class bank `from_classes` takes images from (streamed path), else None.
    transform: `transform(key, uint8 images) -> x` augments and normalises fed images
      (streamed path).
  """
  key: jax.Array
  step: jax.Array
  epoch: jax.Array
  num_epochs: int
  batch_size: int
  clean_indices: jax.Array
  data: DeviceDataset
  load: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
  feed: feed_lib.Feed | None = None
  bank: feed_lib.ClassBank | None = None
  transform: Callable[[jax.Array, jax.Array], jax.Array] | None = None

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
    if self.feed is not None:
      return self._fed(key, self.feed.clean)
    return Batch(*self.load(key, self.clean_indices), self.clean_indices)

  def draw(self, key: jax.Array, law: samplers.Law | jax.typing.ArrayLike, num: int | None = None
           ) -> "Batch":
    """A batch drawn with replacement from the whole training set by a class law.

    In memory: `samplers.draw_indices` with `law.probs(class_counts)`, or with `law` itself
    when it is a (K,) vector of class probabilities. Streamed: the batch the host drew by
    the same law for `law.slot` (`ltjax.data.stream`), which the recipe's
    `requirements().draws` must declare; there `law` must be a `samplers.Law`, since the
    host draws before the step runs.
    """
    num = num or self.batch_size
    key_idx, key_aug = jax.random.split(key)
    if self.feed is None:
      probs = law.probs(self.class_counts) if isinstance(law, samplers.Law) else law
      idx = samplers.draw_indices(key_idx, self.data.index, probs, num)
      return Batch(*self.load(key_aug, idx), idx)
    if not isinstance(law, samplers.Law):
      raise TypeError("a streamed step draws by a declared samplers.Law (the host draws "
                      "before the step runs), not by a probability vector; declare the law "
                      "in requirements().draws and pass it to ctx.draw.")
    if law.slot not in self.feed.draws:
      raise ValueError(f"the recipe draws {law.slot!r}, which its requirements().draws do "
                       f"not declare; the step was fed {sorted(self.feed.draws)}.")
    fed = self.feed.draws[law.slot]
    if fed.labels.shape[0] != num:
      raise ValueError(f"the recipe draws {num} images of {law.slot!r}; the input pipeline "
                       f"feeds {fed.labels.shape[0]}.")
    return self._fed(key_aug, fed)

  def from_classes(self, key_index: jax.Array, key_load: jax.Array, classes: jax.Array
                   ) -> "Batch":
    """One image of each class in `classes`, uniformly inside the class.

    In memory: `samplers.draw_from_classes(key_index, ...)` on the whole training set, then
    loaded with `key_load`. Streamed: a uniform slot of the device-resident class bank
    (`ltjax.feed.ClassBank`; the recipe declares `samplers.Law("confusion")`).
    """
    if self.bank is None:
      idx = samplers.draw_from_classes(key_index, self.data.index, classes)
      return Batch(*self.load(key_load, idx), idx)
    images, idx = self.bank.take(key_index, classes)
    return Batch(self.transform(key_load, images), classes.astype(jnp.int32), idx)

  def _fed(self, key: jax.Array, fed: feed_lib.FedBatch) -> "Batch":
    return Batch(self.transform(key, fed.images), fed.labels.astype(jnp.int32),
                 fed.indices.astype(jnp.int32))


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
    predictions: streamed path: the model's inference-mode predictions on the recipe's
      `epoch_subset`, computed by the engine from host-read images; None in memory.
  """
  epoch: jax.Array
  data: DeviceDataset
  evaluate: Callable[[jax.Array], Outputs]
  key: jax.Array
  num_epochs: int | None = None
  predictions: jax.Array | None = None

  def predict(self, indices: jax.Array, to_logits: Callable[[Outputs], jax.Array]
              ) -> jax.Array:
    """(M,) int32 argmax predictions of the model (inference mode) on training images.

    In memory: `evaluate` on `data.images[indices]`, in chunks. Streamed: the engine's
    predictions on the recipe's `epoch_subset` (the only indices it can predict there;
    `indices` must be that subset).
    """
    if self.predictions is not None:
      if self.predictions.shape != indices.shape:
        raise ValueError(f"the streamed path predicts the recipe's epoch_subset "
                         f"({self.predictions.shape[0]} images), not {indices.shape}.")
      return self.predictions
    return predict_images(self.evaluate, to_logits, self.data.images[indices])


PREDICT_CHUNK = 256  # images per inference call of `predict_images`


def predict_images(evaluate: Callable[[jax.Array], Outputs],
                   to_logits: Callable[[Outputs], jax.Array], images: jax.Array) -> jax.Array:
  """Argmax predictions of `evaluate` on uint8 images, in chunks of PREDICT_CHUNK images."""
  num = images.shape[0]
  chunk = min(num, PREDICT_CHUNK)
  rows = jnp.minimum(jnp.arange(-(-num // chunk) * chunk), num - 1).reshape(-1, chunk)
  preds = jax.lax.map(lambda r: jnp.argmax(to_logits(evaluate(images[r])), axis=-1), rows)
  return preds.reshape(-1)[:num].astype(jnp.int32)


# Class laws a recipe may draw batches from besides the step's clean batch: the samplers'
# laws (`ctx.draw`) and "confusion", CP-Mix's class pairs (a uniform true class, a confused
# class from its row of the confusion counts, one image of each: `ctx.from_classes`).
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
    mix_layers: the hidden layers the loss mixes at (manifold mixup: the model is called
      with `mix=(layer, fn)`, 0 the input, s the output of stage s); () for none.
    draws: the batches the recipe draws in a step besides the clean (instance-balanced)
      one, one `samplers.Law` each (name in `CLASS_LAWS`, concrete parameters, a `copy`
      per independent batch of one law); a streamed input pipeline feeds exactly these.
    trainable: names of the modules whose parameters the recipe trains (`optim.path_mask`);
      None: all of them.
    frozen: names of modules the recipe must not update (`optim.phase_mask`), e.g. RIDE's
      routers while the experts train (they have no gradient, but weight decay and
      momentum would move them).
    train_batch_stats: False when the recipe runs the model in inference mode, so that its
      phase keeps the BatchNorm statistics fixed.
    experts: the loss trains a multi-expert model (RIDE, `ltjax.methods.ride`): the model
      must output "expert_logits" (E, B, K), e.g. ride_resnet32.
    outputs: further model outputs the loss reads (RIDE's routing stage: "router_logits").
    extra_phases: recipes of the phases that follow this one (CP-Mix: the classifier
      fine-tuning); their optimiser settings are the caller's.
  """
  branches: int = 1
  head: str = "linear"
  needs_features: bool = False
  needs_feature_map: bool = False
  mix_layers: tuple[int, ...] = ()
  draws: tuple[samplers.Law, ...] = ()
  trainable: tuple[str, ...] | None = None
  frozen: tuple[str, ...] = ()
  train_batch_stats: bool = True
  extra_phases: tuple[Recipe, ...] = ()
  experts: bool = False
  outputs: tuple[str, ...] = ()

  def __post_init__(self):
    if self.branches not in (1, 2):
      raise ValueError(f"branches must be 1 or 2, got {self.branches}.")
    unknown = sorted({law.name for law in self.draws} - set(CLASS_LAWS))
    if unknown:
      raise ValueError(f"Unknown class laws {unknown} in draws; valid: "
                       f"{', '.join(CLASS_LAWS)}.")
    slots = [law.slot for law in self.draws]
    if len(set(slots)) != len(slots):
      raise ValueError(f"draws name a slot twice ({slots}); give independent batches of "
                       "one law distinct `copy` numbers.")


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
                  num_epochs: int | None = None, predictions: jax.Array | None = None
                  ) -> PyTree:
    """The engine's epoch hook, run inside the compiled epoch before its first step.

    Builds the `EpochContext` (see its attributes for the arguments) and returns
    `on_epoch(method_state, ctx)`; recipes override `on_epoch`, not this.
    """
    return self.on_epoch(method_state, EpochContext(epoch, data, evaluate, key, num_epochs,
                                                    predictions))

  def epoch_subset(self, index: samplers.ClassIndex) -> jax.Array | None:
    """Training indices whose predictions `on_epoch` reads (`EpochContext.predict`); None
    when it reads none. The streamed path reads and evaluates exactly these images."""
    del index
    return None

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
