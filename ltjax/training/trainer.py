"""`fit`: the host loop around the compiled epochs (phases, resume, evaluation, hooks).

A run is a list of `Phase`s (recipe, epochs, optimiser with its schedule and trainable
mask). Epochs are numbered globally over the phases; a phase starts with a fresh optimiser
and recipe state (CP-Mix: classifier fine-tuning after the main phase), its schedule counts
steps from the phase start, and its recipe sees the phase-local epoch. The method state a
finished phase leaves behind (CP-Mix's confusion counts) is kept in the train state
(`TrainState.phase_states`, so in every checkpoint of the later phases) and returned in
`FitResult.phase_states`: one `fit` call trains every phase. Keys derive from the
seed, the global epoch and the global step, so a run resumed from `workdir` continues
exactly as the uninterrupted one.

After each epoch the host reads the per-step losses (one transfer per epoch) and raises
`FloatingPointError` naming the first global step with a non-finite loss, before anything is
saved; then it evaluates (every `eval_every` epochs and after the last), calls the callbacks
and saves a checkpoint when due.

Progress (`progress=True`): one tqdm bar for the run, counted in optimiser steps, on stderr:
epoch, steps done / total, steps/s, elapsed time and ETA, then the current epoch's images/s,
the last epoch's mean loss and lr, and the latest test top-1. With `loop="steps"` (the
"auto" choice on CPU) it moves within the epoch: after dispatching a step, the host waits
for the step IN_FLIGHT_STEPS back and counts it, so the bar counts finished steps while the
device always has work queued. Waiting on every step instead stalls the queue each step
(measured on Digits-LT, SmallCNN, 14 steps of about 2.5 ms: +27% per epoch; with 8 in
flight the difference is within the noise); not waiting at all lets the host dispatch a
whole epoch in milliseconds, and the bar would reach the epoch's end long before its steps
run. With `loop="scan"` the epoch is one compiled call without a host hook and the bar moves
once per epoch: a `jax.debug.callback` every N steps inside the scan would add a
device-to-host round trip and an ordering constraint to the loop whose point is never to
leave the device, on the accelerator path, where epochs take seconds. The bar only waits
for steps to finish and reads no value back, so `fit`'s results do not depend on `progress`.
When stderr is not a terminal (a log file), it is redrawn at most every LOG_INTERVAL_S
seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TextIO

import jax
import numpy as np
import optax
import tqdm
from jax.sharding import Mesh
from jax.typing import ArrayLike

from ltjax import metrics
from ltjax import recipe as recipe_lib
from ltjax.training import evaluation, sharding
from ltjax.training import loop as loop_lib
from ltjax.training.checkpoint import Checkpointer
from ltjax.training.state import TrainState, create_state, end_phase, run_keys, start_phase

if TYPE_CHECKING:  # grain (the streamed path) is an extra: imported when a stream is given
  from ltjax.data import stream as stream_lib

PyTree = Any
IN_FLIGHT_STEPS = 8  # steps dispatched ahead of the last one the progress bar counts
TTY_INTERVAL_S = 0.1  # redraw period of the progress bar on a terminal
LOG_INTERVAL_S = 30.0  # ... and anywhere else (a log file)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of training.

  Attributes:
    recipe: the method trained in this phase.
    epochs: number of epochs.
    tx: optimiser (`optim.sgd` with the phase's schedule and trainable mask).
    train_batch_stats: False keeps BatchNorm statistics fixed (frozen backbone).
    batch_size: the phase's batch size (None: `fit`'s), e.g. RIDE's routing stage at 512
      after experts trained at 128; its schedule must count the phase's steps per epoch.
  """
  recipe: recipe_lib.Recipe
  epochs: int
  tx: optax.GradientTransformation
  train_batch_stats: bool = True
  batch_size: int | None = None


class Callback(Protocol):
  """Receives `on_epoch_end(epoch, train_metrics, eval_metrics)` after every epoch.

  `epoch` is the 0-based global epoch just trained, `train_metrics` the epoch means of the
  step metrics (`lr`: the last step's rate), `eval_metrics` the test metrics or None.
  """

  def on_epoch_end(self, epoch: int, train_metrics: dict[str, float],
                   eval_metrics: dict[str, Any] | None) -> None:
    ...


@dataclasses.dataclass(frozen=True)
class FitResult:
  """What `fit` returns.

  Attributes:
    state: final TrainState.
    epochs_done: global epochs completed.
    train_metrics: last epoch's train metrics ({} when no epoch ran).
    final_metrics: last test evaluation (None without a test set).
    best_metrics: the test evaluation with the highest top-1.
    best_epoch: 0-based epoch of `best_metrics`.
    phase_states: the final method state of every phase reached, in phase order; the last
      one is `state.method_state` (that of an unfinished phase when `stop_after` stopped
      the run inside it).
  """
  state: TrainState
  epochs_done: int
  train_metrics: dict[str, float]
  final_metrics: dict[str, Any] | None
  best_metrics: dict[str, Any] | None
  best_epoch: int | None
  phase_states: tuple[PyTree, ...] = ()


def _epoch_summary(metrics: dict[str, np.ndarray]) -> dict[str, float]:
  summary = {k: float(np.mean(v)) for k, v in metrics.items()}
  summary["lr"] = float(metrics["lr"][-1])
  return summary


def _check_finite(losses: np.ndarray, first_step: int, epoch: int) -> None:
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    i = int(bad[0])
    raise FloatingPointError(f"non-finite training loss {losses[i]} at global step "
                             f"{first_step + i} (epoch {epoch}, step {i} of the epoch).")


def _phase_bounds(phases: Sequence[Phase]) -> list[tuple[int, int]]:
  if not phases:
    raise ValueError("fit needs at least one phase.")
  bounds, start = [], 0
  for i, phase in enumerate(phases):
    if phase.epochs < 1:
      raise ValueError(f"phase {i} must have >= 1 epochs, got {phase.epochs}.")
    bounds.append((start, start + phase.epochs))
    start += phase.epochs
  return bounds


@dataclasses.dataclass
class _Progress:
  """Best-so-far bookkeeping that survives a resume through the checkpoint sidecar."""
  train: dict[str, float] = dataclasses.field(default_factory=dict)
  final: dict[str, Any] | None = None
  best: dict[str, Any] | None = None
  best_epoch: int | None = None

  def record(self, epoch: int, train: dict[str, float],
             evaluated: dict[str, Any] | None) -> None:
    self.train = train
    if evaluated is None:
      return
    self.final = evaluated
    if self.best is None or evaluated["top1"] > self.best["top1"]:
      self.best, self.best_epoch = evaluated, epoch


class ProgressBar:
  """The run's tqdm bar, in optimiser steps (module docstring).

  Args:
    enabled: False: no bar, nothing written, and `on_step` never waits.
    total_epochs: epochs of the whole run.
    start_epoch: epochs already done (a resumed run).
    steps_per_epoch: optimiser steps per epoch.
    batch_size: B.
    num_samples: N (an epoch trains min(steps * B, N) images).
    file: where the bar goes (default sys.stderr); redrawn every TTY_INTERVAL_S on a
      terminal, every LOG_INTERVAL_S otherwise.
    epoch_steps: steps of every epoch of the run when phases differ in batch size (None:
      steps_per_epoch each); `set_phase` switches the per-epoch count.
  """

  def __init__(self, enabled: bool, *, total_epochs: int, start_epoch: int,
               steps_per_epoch: int, batch_size: int, num_samples: int,
               file: TextIO | None = None, epoch_steps: Sequence[int] | None = None):
    file = sys.stderr if file is None else file
    interval = TTY_INTERVAL_S if file.isatty() else LOG_INTERVAL_S
    self.steps_per_epoch, self.batch_size, self.num_samples = (
        steps_per_epoch, batch_size, num_samples)
    self.total_epochs = total_epochs
    epoch_steps = ([steps_per_epoch] * total_epochs if epoch_steps is None
                   else list(epoch_steps))
    self.bar = tqdm.tqdm(total=sum(epoch_steps),
                         initial=sum(epoch_steps[:start_epoch]), disable=not enabled,
                         unit="step", file=file, mininterval=interval,
                         maxinterval=max(interval, 10.0), dynamic_ncols=True)
    self._pending: collections.deque[jax.Array] = collections.deque()
    self._done, self._start = 0, time.perf_counter()
    self._shown: dict[str, str] = {"img/s": "-"}

  def set_phase(self, steps_per_epoch: int, batch_size: int) -> None:
    """The steps per epoch and batch size of the phase about to train."""
    self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size

  def start_epoch(self, epoch: int) -> None:
    """Starts counting the steps of 0-based global epoch `epoch`."""
    self._done, self._start = 0, time.perf_counter()
    self.bar.set_description(f"epoch {epoch + 1}/{self.total_epochs}", refresh=False)

  def on_step(self, metrics: dict[str, jax.Array]) -> None:
    """`TrainEpoch`'s per-step hook: counts the step IN_FLIGHT_STEPS back once it is done."""
    if self.bar.disable:
      return
    self._pending.append(metrics["loss"])
    if len(self._pending) > IN_FLIGHT_STEPS:
      self._pending.popleft().block_until_ready()
      self._advance(1)

  def end_epoch(self, train: dict[str, float]) -> None:
    """Counts the epoch's remaining steps (its metrics were read); shows its loss and lr."""
    self._pending.clear()
    self._shown.update(loss=f"{train['loss']:.4f}", lr=f"{train['lr']:.4g}")
    self._advance(self.steps_per_epoch - self._done)

  def show_eval(self, latest_eval: dict[str, Any] | None) -> None:
    """Shows the top-1 of the latest test evaluation (None: none yet)."""
    if latest_eval is not None:
      self._shown["top1"] = f"{100 * latest_eval['top1']:.2f}%"
      self._show()

  def _advance(self, steps: int) -> None:
    self._done += steps
    images = min(self._done * self.batch_size, self.num_samples)
    seconds = max(time.perf_counter() - self._start, 1e-9)
    self._shown["img/s"] = f"{images / seconds:.0f}"
    self._show()
    self.bar.update(steps)

  def _show(self) -> None:
    self.bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in self._shown.items()),
                             refresh=False)

  def close(self) -> None:
    self.bar.close()


def fit(model: Any, phases: Sequence[Phase],
        data: recipe_lib.DeviceDataset | stream_lib.StreamedDataset, *,
        batch_size: int, seed: int, normalize_fn: Callable[[jax.Array], jax.Array],
        augment_fn: loop_lib.AugmentFn | None = None,
        workdir: str | pathlib.Path | None = None,
        test_images: ArrayLike | None = None, test_labels: ArrayLike | None = None,
        test_data: stream_lib.StreamedDataset | None = None,
        eval_every: int = 1, eval_batch_size: int = 500, checkpoint_every: int = 1,
        keep_checkpoints: int = 3, checkpoint_every_steps: int = 0,
        callbacks: Sequence[Callback] = (), mesh: Mesh | None = None, progress: bool = True,
        stop_after: int | None = None, loop: str = "scan", drop_last: bool = True,
        init_variables: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]] | None = None
        ) -> FitResult:
  """Trains `model` through `phases`, resuming from the latest checkpoint in `workdir`.

  Args:
    model: Flax module, `__call__(x, train) -> {"logits", "features", ...}`.
    phases: the stages of the run, in order.
    data: on-device training set, or a streamed one (`ltjax.data.stream.StreamedDataset`:
      every step's batches read by grain on the host, `ltjax.training.streamed`).
    batch_size: B.
    seed: run seed (model init, permutations, step keys).
    normalize_fn: `uint8 images -> float32 inputs` (train and test).
    augment_fn: training augmentation `(key, uint8) -> uint8`, or None.
    workdir: run directory for checkpoints (None: no checkpoints, no resume).
    test_images, test_labels: test set for evaluation (optional).
    test_data: a streamed test set instead (read with its `eval_transforms`).
    eval_every: evaluate every this many epochs (and after the last).
    eval_batch_size: batch size of evaluation.
    checkpoint_every: save every this many epochs (and after the last).
    keep_checkpoints: checkpoints kept on disk.
    checkpoint_every_steps: streamed training sets only: also save every this many
      optimiser steps inside an epoch (`Checkpointer.save_partial`; 0: after epochs only).
      A run resumed from such a checkpoint continues at its step and reads the batches the
      uninterrupted run reads (every batch is a function of the seed and the global step),
      so it ends with the same parameters.
    callbacks: objects with `on_epoch_end(epoch, train_metrics, eval_metrics)`.
    mesh: data-parallel mesh (axis "data"); state and data are replicated on it.
    progress: show a tqdm bar on stderr: steps, steps/s, ETA, images/s, loss, lr and the
      latest test top-1 (module docstring: within the epoch with loop "steps", per epoch
      with loop "scan").
    stop_after: stop once this many global epochs are done (e.g. a job's time slot); a later
      call with the same workdir resumes.
    loop: "scan", "steps" or "auto" (`ltjax.training.loop.make_train_epoch`).
    drop_last: True drops the last partial batch of every epoch (N // B steps); False
      trains it as one more, smaller step (ceil(N / B) steps, the reference code's
      `DataLoader` default). A phase's learning-rate schedule must count the same steps:
      build it with `ltjax.training.loop.steps_per_epoch(N, B, drop_last)`.
    init_variables: `(params, batch_stats) -> (params, batch_stats)` applied to the
      initialised model before training (e.g. `ltjax.models.load_pretrained` of a
      user-given file); a resumed run restores its checkpoint instead.

  Returns:
    FitResult.

  Raises:
    FloatingPointError: a non-finite loss (names the first bad global step); the bad state
      is not saved.
    ValueError: checkpoint_every_steps < 0, or > 0 for an on-device training set.
  """
  bounds = _phase_bounds(phases)
  total = bounds[-1][1]
  end = total if stop_after is None else min(stop_after, total)
  counts = data.class_counts
  streamed = not isinstance(data, recipe_lib.DeviceDataset)
  if checkpoint_every_steps < 0 or (checkpoint_every_steps and not streamed):
    raise ValueError(f"checkpoint_every_steps={checkpoint_every_steps}: must be >= 0, and 0 "
                     "for an on-device training set (its epoch is one compiled call).")
  if streamed:
    from ltjax.training import streamed as streamed_lib  # pylint: disable=import-outside-toplevel
    sample = np.zeros((1, *data.sample_shape()), np.uint8)
  else:
    sample = data.images[:1]
  state = create_state(model, phases[0].recipe, phases[0].tx, normalize_fn(sample),
                       run_keys(seed).init, counts)
  if init_variables is not None:
    params, batch_stats = init_variables(state.params, state.batch_stats)
    state = state.replace(params=params, batch_stats=batch_stats)
  if streamed:
    for phase in phases:
      state = streamed_lib.with_bank(state, data, phase.recipe, seed, mesh=None)
  ckpt = None if workdir is None else Checkpointer(
      workdir, save_every=checkpoint_every, keep=keep_checkpoints)
  tracker, start_epoch, resumed = _Progress(), 0, _Resumed()
  if ckpt is not None:
    state, start_epoch, tracker, resumed = _resume(ckpt, state, phases, counts)
  if mesh is not None:
    state = sharding.replicate(state, mesh)
    if not streamed:
      data = sharding.replicate(data, mesh)
  evaluator = None
  batches = [phase.batch_size or batch_size for phase in phases]
  steps = [loop_lib.steps_per_epoch(data.num_samples, b, drop_last) for b in batches]
  bar = ProgressBar(progress, total_epochs=total, start_epoch=start_epoch,
                    steps_per_epoch=steps[0], batch_size=batch_size,
                    num_samples=data.num_samples,
                    epoch_steps=[n for n, phase in zip(steps, phases) for _ in range(phase.epochs)])
  for p, (phase, (first, last)) in enumerate(zip(phases, bounds)):
    if last <= start_epoch or first >= end:
      continue
    bar.set_phase(steps[p], batches[p])
    if p > 0 and first >= start_epoch and not (first == start_epoch and resumed.epoch_step):
      state = _next_phase(state, phase, counts)
    make_epoch = (
        functools.partial(streamed_lib.make_streamed_epoch, eval_batch_size=eval_batch_size)
        if streamed else functools.partial(loop_lib.make_train_epoch, loop=loop))
    train_epoch = make_epoch(
        phase.recipe, model.apply, phase.tx, data, batch_size=batches[p],
        num_epochs=phase.epochs, augment_fn=augment_fn, normalize_fn=normalize_fn,
        seed=seed, mesh=mesh, epoch_offset=first,
        train_batch_stats=phase.train_batch_stats, drop_last=drop_last)
    if test_images is not None or test_data is not None:
      evaluator = evaluation.make_eval_fn(model.apply, phase.recipe, eval_batch_size,
                                          normalize_fn, mesh=mesh)
    for epoch in range(max(first, start_epoch), min(last, end)):
      done_before = resumed.metrics if epoch == start_epoch else {}
      first_step = int(state.step) - resumed.epoch_step * (epoch == start_epoch)
      bar.start_epoch(epoch)
      if streamed:
        save = None if ckpt is None or not checkpoint_every_steps else functools.partial(
            ckpt.save_partial, epoch=epoch, phase=p, seed=seed,
            metrics=dataclasses.asdict(tracker))
        state, step_metrics = _streamed_epoch(
            train_epoch, state, epoch - first, bar.on_step, done_before,
            checkpoint_every_steps, save, first_step, epoch)
      else:
        state, step_metrics = train_epoch(state, epoch - first, bar.on_step)
        step_metrics = jax.device_get(step_metrics)
      _check_finite(step_metrics["loss"], first_step, epoch)
      train = _epoch_summary(step_metrics)
      bar.end_epoch(train)
      done = epoch + 1
      evaluated = None
      if evaluator is not None and (done % eval_every == 0 or done == total):
        evaluated = (
            _evaluate_stream(evaluator, state, test_data, counts) if test_data is not None
            else evaluation.evaluate(evaluator, state.params, state.batch_stats,
                                     test_images, test_labels, counts))
      tracker.record(epoch, train, evaluated)
      bar.show_eval(tracker.final)
      for callback in callbacks:
        callback.on_epoch_end(epoch, train, evaluated)
      if ckpt is not None:
        ckpt.save(done, state, phase=p, seed=seed, force=done in (end, total),
                  metrics=dataclasses.asdict(tracker))
    if streamed:
      train_epoch.close()
  bar.close()
  if ckpt is not None:
    ckpt.close()
  return FitResult(state=state, epochs_done=max(start_epoch, end), train_metrics=tracker.train,
                   final_metrics=tracker.final, best_metrics=tracker.best,
                   best_epoch=tracker.best_epoch,
                   phase_states=(*state.phase_states, state.method_state))


def _streamed_epoch(train_epoch: Any, state: TrainState, local_epoch: int,
                    on_step: Callable[[Any], None], done_before: dict[str, np.ndarray],
                    every: int, save: Callable[..., None] | None, first_step: int,
                    epoch: int) -> tuple[TrainState, dict[str, np.ndarray]]:
  """A streamed epoch from the step after `done_before`'s (a resumed mid-epoch checkpoint's
  metrics), saving a mid-epoch checkpoint every `every` steps when `save` is given.

  Returns the state and the per-step metrics of the whole epoch (host arrays).
  """
  start = len(next(iter(done_before.values()), ()))
  total = train_epoch.steps_per_epoch
  parts = [done_before] if start else []
  bounds = [*range(start, total, every or total), total][1:] if save else [total]
  for stop in bounds:
    state, metrics = train_epoch(state, local_epoch, on_step, start=start, stop=stop)
    parts.append(jax.device_get(metrics))
    if stop < total:
      so_far = _concat(parts)
      _check_finite(so_far["loss"], first_step, epoch)  # never save a bad state
      save(int(state.step), state, epoch_step=stop, step_metrics=so_far)
    start = stop
  return state, _concat(parts)


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[-1]}


def _evaluate_stream(evaluator: evaluation.EvalFn, state: TrainState,
                     test: stream_lib.StreamedDataset, counts: ArrayLike) -> dict[str, Any]:
  """`evaluation.evaluate` on a streamed test set, batch by batch (counts on the device);
  each process reads and decodes only its rows of every batch."""
  from ltjax.data import stream as stream_lib  # pylint: disable=import-outside-toplevel,redefined-outer-name
  batches = list(evaluator.process_batches(test.num_samples))
  rows = np.concatenate([r for r, _ in batches])
  total = None
  for (_, mask), fed in zip(batches, stream_lib.read_batches(test, rows, len(batches[0][0]))):
    batch = evaluator.local_counts(state.params, state.batch_stats, fed.images, fed.labels,
                                   mask)
    total = batch if total is None else total + batch
  return metrics.summarize_counts(total, np.asarray(counts))


def _next_phase(state: TrainState, phase: Phase, counts: ArrayLike) -> TrainState:
  """The state that starts `phase`: the finished phase's method state kept, fresh
  optimiser and recipe state."""
  return start_phase(end_phase(state), phase.recipe, phase.tx, counts)


def phase_template(state: TrainState, phases: Sequence[Phase], phase: int,
                   counts: ArrayLike) -> TrainState:
  """The structure of a checkpoint saved in phase `phase` (a `Checkpointer.restore` template).

  Args:
    state: a state of the first phase (`create_state` with `phases[0]`).
    phases: the run's phases.
    phase: index of the checkpoint's phase (its metadata's "phase").
    counts: (K,) training class counts.

  Returns:
    `state` taken through every phase boundary up to `phase`: that phase's optimiser and
    recipe state, and the method states of the phases before it.
  """
  for later in phases[1:phase + 1]:
    state = _next_phase(state, later, counts)
  return state


@dataclasses.dataclass(frozen=True)
class _Resumed:
  """Where a resumed run stands inside its epoch: steps done and their metrics."""
  epoch_step: int = 0
  metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _resume(ckpt: Checkpointer, state: TrainState, phases: Sequence[Phase],
            counts: jax.Array) -> tuple[TrainState, int, _Progress, _Resumed]:
  """Restores the latest checkpoint into the structure of its phase (`phase_template`): a
  mid-epoch one when it is newer than every epoch checkpoint (`latest_partial`), else the
  latest epoch checkpoint, else `state` itself (a fresh run)."""
  partial = ckpt.latest_partial()
  if partial is not None:
    template = phase_template(state, phases, partial["phase"], counts)
    step_metrics = {k: np.asarray(v) for k, v in partial["step_metrics"].items()}
    return (ckpt.restore_partial(template, partial["global_step"]), partial["epoch"],
            _Progress(**partial["metrics"]), _Resumed(partial["epoch_step"], step_metrics))
  if ckpt.latest_epoch() is None:
    return state, 0, _Progress(), _Resumed()
  template = phase_template(state, phases, ckpt.metadata()["phase"], counts)
  state, meta = ckpt.restore(template)
  return state, meta["epoch"], _Progress(**meta["metrics"]), _Resumed()
