"""The streamed training set: grain reads every step's batches on the host.

A `StreamedDataset` is a training set that stays on disk (ImageNet-LT, Places-LT,
iNaturalist 2018): only its labels and class index go to the device
(`StreamedDataset.device_data`); each step gets its images as an `ltjax.feed.Feed` read by
grain worker processes. Every batch of a step is a pure function of (run seed, global step,
slot), so the stream needs no iterator state of its own: a run resumed at global step t
(from the checkpoint's `TrainState.step`) reads exactly what the uninterrupted run read from
step t on, with any number of workers and any number of processes.

Sampling semantics (`epoch_plan`, `law_indices`), against the in-memory path
(`ltjax.recipe.StepContext`):

| batch | streamed | in memory |
|---|---|---|
| clean | row t of the epoch permutation `jax.random.permutation(fold_in(keys.permutation, e), N)`, as `loop.epoch_batches` | the same indices |
| law slot (`samplers.Law`) | two-stage draw: class from `law.probs(counts)` (its concrete parameters), image uniform in the class, with replacement, from a Philox generator keyed by (seed, slot, global step) | the same law, drawn on device from the step key: equal in law, not in value |
| "confusion" (CP-Mix) | images of the classes the recipe chose on device, from the device-resident `ltjax.feed.ClassBank` (S per class, refilled with B class-balanced images per step) | a uniform image of the class from the whole set |
| augmentation | the host transforms (`transforms`, e.g. RandomResizedCrop + flip), a Philox generator per record keyed by (seed, slot, global step, position); an on-device `augment_fn` is applied after, as in memory | `augment_fn` on device |
| epoch subset (OTmix's F_hat) | read with `eval_transforms`, predicted in batches by the engine before the epoch | `data.images[idx]`, normalised |

With no host transforms, recipes whose batches are all clean (ERM, DRW, LDAM-DRW, balanced
softmax, the in-batch mixup family, CP-Mix's first stage) train to the same parameters on
both paths (tests/test_stream.py); a recipe that draws a law slot trains on other images
of the same law.

Multi-host: process p of P reads positions [p b, (p + 1) b) of every batch (b = size / P),
and `ltjax.training.sharding.host_local_to_global` assembles the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

try:
  import grain
except ImportError as e:  # grain is an extra (pyproject.toml: the dependency rule)
  raise ImportError("ltjax.data.stream needs grain: pip install 'ltjax[grain]'.") from e
import jax
import numpy as np

from ltjax import feed as feed_lib
from ltjax import recipe as recipe_lib
from ltjax import samplers
from ltjax.data import pipeline

Record = dict[str, Any]
CLEAN_SLOT, REFILL_SLOT, BANK_SLOT, SUBSET_SLOT = "clean", "refill", "bank", "subset"
REFILL_LAW = samplers.Law("class_balanced", copy=-1)  # the class bank's refill draws
_STREAM_TAG = 0x6C746A6178  # separates the stream's generators from other uses of the seed
DRAW_POSITION = 2**32 - 1  # the position whose generator draws a slot's indices


def _slot_id(slot: str) -> int:
  """A stable integer for a slot name (SeedSequence entropy)."""
  return int.from_bytes(slot.encode()[:16].ljust(16, b"\0"), "little")


def record_rng(seed: int, slot: str, step: int, position: int) -> np.random.Generator:
  """The Philox generator of one record: its draw (law slots) and its augmentation."""
  return np.random.Generator(np.random.Philox(np.random.SeedSequence(
      [_STREAM_TAG, seed, _slot_id(slot), step, position])))


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A training set read from its source step by step (module docstring).

  Attributes:
    source: random-access source, `source[i] -> {"image": uint8 (H, W, C), "label", ...}`
      (`ltjax.data.pipeline.ImageFileSource`, `ArraySource`, `source_for`).
    labels: (N,) int labels of the source's records.
    num_classes: K.
    transforms: per-record training transforms (grain Map / RandomMap), run on the host.
    eval_transforms: per-record transforms of the images the engine predicts (epoch
      subsets), e.g. `pipeline.ResizeCenterCrop`.
    worker_count: grain worker processes (0: threads of this process).
    read_threads: threads reading steps ahead within each process.
    prefetch: steps read ahead.
    bank_per_class: S, images per class of the class bank (recipes that draw "confusion").
  """
  source: Any
  labels: np.ndarray
  num_classes: int
  transforms: tuple[Any, ...] = ()
  eval_transforms: tuple[Any, ...] = ()
  worker_count: int = 0
  read_threads: int = 2
  prefetch: int = 2
  bank_per_class: int = 1

  def __post_init__(self):
    labels = np.asarray(self.labels)
    if labels.ndim != 1 or len(self.source) != labels.shape[0]:
      raise ValueError(f"labels must be (N,) with N = len(source) = {len(self.source)}, got "
                       f"shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise ValueError(f"labels must lie in [0, {self.num_classes}), got "
                       f"[{labels.min()}, {labels.max()}].")
    for name in ("worker_count", "read_threads", "prefetch"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    if self.bank_per_class < 1:
      raise ValueError(f"bank_per_class must be >= 1, got {self.bank_per_class}.")
    object.__setattr__(self, "labels", labels.astype(np.int32))
    object.__setattr__(self, "transforms", tuple(self.transforms))
    object.__setattr__(self, "eval_transforms", tuple(self.eval_transforms))

  @property
  def num_samples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def class_index(self) -> samplers.ClassIndex:
    return samplers.numpy_class_index(self.labels, self.num_classes)

  @property
  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=self.num_classes)

  def device_data(self) -> recipe_lib.DeviceDataset:
    """What lives on the device: labels and class index, no images."""
    return recipe_lib.DeviceDataset(images=None, labels=jax.numpy.asarray(self.labels),
                                    index=samplers.build_class_index(self.labels,
                                                                     self.num_classes))

  def read(self, indices: np.ndarray, seed: int, slot: str, step: int, first: int = 0,
           transforms: Sequence[Any] | None = None) -> feed_lib.FedBatch:
    """The records `indices`, stacked, each transformed (default: the training transforms)
    with `record_rng(seed, slot, step, first + j)` for its position j."""
    transforms = self.transforms if transforms is None else transforms
    records = [pipeline.apply_transforms(self.source[int(i)], transforms,
                                record_rng(seed, slot, step, first + j))
               for j, i in enumerate(indices)]
    return _stack(records, indices)

  def sample_shape(self) -> tuple[int, ...]:
    """(H, W, C) of a training image after the transforms (record 0)."""
    return tuple(self.read(np.zeros(1, np.int64), 0, CLEAN_SLOT, 0).images.shape[1:])


def _stack(records: list[Record], indices: np.ndarray) -> feed_lib.FedBatch:
  shapes = {r["image"].shape for r in records}
  if len(shapes) > 1:
    raise ValueError(f"the transforms give images of different shapes {sorted(shapes)}; "
                     "training batches need one shape (add a crop or resize transform).")
  return feed_lib.FedBatch(images=np.stack([r["image"] for r in records]).astype(np.uint8),
                           labels=np.asarray([r["label"] for r in records], np.int32),
                           indices=np.asarray(indices, np.int32))


def law_indices(index: samplers.ClassIndex, law: samplers.Law, seed: int, step: int,
                size: int) -> np.ndarray:
  """(size,) training indices of one law slot of one step: the two-stage draw.

  Class k with probability `law.probs(counts)` (concrete parameters), then an image
  uniformly inside class k, with replacement, from the slot's Philox generator.
  """
  counts = np.asarray(index.counts)
  probs = np.asarray(law.probs(counts), np.float64)
  cdf = np.cumsum(probs / probs.sum())
  rng = record_rng(seed, law.slot, step, DRAW_POSITION)
  u = rng.random((size, 2))
  k = np.minimum(np.searchsorted(cdf, u[:, 0], side="right"), cdf.size - 1)
  offset = np.minimum((u[:, 1] * counts[k]).astype(np.int64), counts[k] - 1)
  return np.asarray(index.order)[np.asarray(index.starts)[k] + offset]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """Which records every step of one epoch reads (module docstring).

  Attributes:
    seed: the run seed.
    rows: the clean batches: a list of (B,) (and a last partial) index arrays.
    first_step: global step of the epoch's first step.
    laws: the law slots fed per step (`Requirements.draws` without "confusion").
    refill: images per step that refill the class bank (0: no bank).
    process_index, process_count: this process's share of every batch.
  """
  seed: int
  rows: tuple[np.ndarray, ...]
  first_step: int
  laws: tuple[samplers.Law, ...]
  refill: int
  process_index: int = 0
  process_count: int = 1

  def local(self, size: int) -> slice:
    """This process's positions of a global batch of `size`."""
    share = size // self.process_count
    return slice(self.process_index * share, (self.process_index + 1) * share)


class StepReader:
  """grain map: position i of a run of epochs -> the `Feed` of step i mod S of epoch
  `plans[i // S]` (S steps per epoch).

  Picklable (grain's worker processes hold a copy). Every record's generator is keyed by
  its global step and position, so the global batch depends on neither the number of
  processes nor the position's epoch window.
  """

  def __init__(self, data: StreamedDataset, plans: Sequence[EpochPlan]):
    if not plans or len({len(p.rows) for p in plans}) != 1:
      raise ValueError("StepReader needs one or more epoch plans of the same number of steps.")
    self.data, self.plans = data, tuple(plans)
    self.steps = len(self.plans[0].rows)
    self.index = data.class_index

  def _read(self, plan: EpochPlan, indices: np.ndarray, slot: str, step: int
            ) -> feed_lib.FedBatch:
    part = plan.local(indices.shape[0])
    return self.data.read(indices[part], plan.seed, slot, step, first=part.start)

  def __call__(self, i: int) -> feed_lib.Feed:
    epoch, t = divmod(int(i), self.steps)
    plan = self.plans[epoch]
    step = plan.first_step + t
    row = plan.rows[t]
    law_batch = lambda law, size: law_indices(self.index, law, plan.seed, step, size)
    draws = {law.slot: self._read(plan, law_batch(law, row.shape[0]), law.slot, step)
             for law in plan.laws}
    refill = None
    if plan.refill:
      refill = self._read(plan, law_batch(REFILL_LAW, plan.refill), REFILL_SLOT, step)
    return feed_lib.Feed(clean=self._read(plan, row, CLEAN_SLOT, step), draws=draws,
                         refill=refill)


class FeedStream:
  """The feeds of a phase's steps from one grain pipeline that outlives epochs.

  `feeds(epoch, start, stop)` yields the feeds of steps [start, stop) of the phase-local
  `epoch`. Consecutive calls continue one grain iterator, so its worker processes and its
  read-ahead carry over epoch and checkpoint-segment boundaries (a pipeline per epoch pays
  the workers' start-up and an empty read-ahead every epoch). The iterator covers a window
  of `window` epochs, whose plans its workers hold: at most `WINDOW_INDICES` clean indices,
  at least one epoch. A call anywhere else than where the last one stopped (a resumed run)
  or past the window opens a new iterator there. What is read is a function of (plan,
  step) alone, so where an iterator starts changes no batch.

  Host state (the iterator), not part of the training state; `close()` stops the workers.
  """

  WINDOW_INDICES = 2**22  # clean indices held by every worker (16 MB of int32)

  def __init__(self, data: StreamedDataset, plan: Callable[[int], EpochPlan],
               num_epochs: int, steps_per_epoch: int, window: int | None = None):
    self.data, self.plan = data, plan
    self.num_epochs, self.steps = num_epochs, steps_per_epoch
    self.window = window or max(1, self.WINDOW_INDICES // max(data.num_samples, 1))
    self._iterator, self._next, self._end = None, -1, -1

  def feeds(self, epoch: int, start: int = 0, stop: int | None = None
            ) -> Iterator[feed_lib.Feed]:
    stop = self.steps if stop is None else stop
    for t in range(start, stop):
      position = epoch * self.steps + t
      if position != self._next or position >= self._end:
        self._open(epoch, t)
      fed = next(self._iterator)
      self._next = position + 1
      yield fed

  def _open(self, epoch: int, t: int) -> None:
    self.close()
    last = min(epoch + self.window, self.num_epochs)
    reader = StepReader(self.data, [self.plan(e) for e in range(epoch, last)])
    self._iterator = _prefetched(
        grain.MapDataset.range(t, (last - epoch) * self.steps).map(reader), self.data)
    self._next, self._end = epoch * self.steps + t, last * self.steps

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
    self._iterator, self._next, self._end = None, -1, -1


def feed_laws(requirements: recipe_lib.Requirements) -> tuple[tuple[samplers.Law, ...], bool]:
  """The law slots a recipe needs fed, and whether it draws from the class bank."""
  laws = tuple(law for law in requirements.draws if law.name != "confusion")
  return laws, len(laws) != len(requirements.draws)


def initial_bank(data: StreamedDataset, seed: int) -> feed_lib.FedBatch:
  """S uniform draws inside every class (class-major), read with the training transforms.

  Every process reads the whole bank (it is replicated on the devices).
  """
  index = data.class_index
  per_class = data.bank_per_class
  classes = np.repeat(np.arange(data.num_classes), per_class)
  counts = np.asarray(index.counts)
  rng = record_rng(seed, BANK_SLOT, 0, DRAW_POSITION)
  offset = np.minimum((rng.random(classes.size) * counts[classes]).astype(np.int64),
                      counts[classes] - 1)
  indices = np.asarray(index.order)[np.asarray(index.starts)[classes] + offset]
  return data.read(indices, seed, BANK_SLOT, 0)


class BatchReader:
  """grain map: batch b -> records b B, ..., (b + 1) B - 1 of `indices`, read with the
  evaluation transforms (picklable)."""

  def __init__(self, data: StreamedDataset, indices: np.ndarray, batch_size: int):
    self.data, self.indices, self.batch_size = data, np.asarray(indices), batch_size

  def __call__(self, b: int) -> feed_lib.FedBatch:
    start = int(b) * self.batch_size
    return self.data.read(self.indices[start:start + self.batch_size], 0, SUBSET_SLOT, 0,
                          first=start, transforms=self.data.eval_transforms)


def read_batches(data: StreamedDataset, indices: np.ndarray, batch_size: int
                 ) -> Iterator[feed_lib.FedBatch]:
  """`indices` read with the evaluation transforms, in batches of `batch_size` (the last
  one shorter), read ahead by grain as `FeedStream`."""
  num = -(-np.asarray(indices).shape[0] // batch_size)
  return _prefetched(grain.MapDataset.range(num).map(BatchReader(data, indices, batch_size)),
                     data)


def _prefetched(dataset: grain.MapDataset, data: StreamedDataset) -> Any:
  return iter(pipeline.prefetched(dataset, read_threads=data.read_threads,
                                  read_buffer=data.prefetch, worker_count=data.worker_count))
