"""The body of a training run (no flags): validation, data, phases, fit, reports.

`run(config, workdir)` is what `experiments.train` (one run) and `experiments.compare`
(many runs) call; `experiments.evaluate` reuses its builders to restore a checkpoint.
See experiments/train.py for what a run writes to its workdir.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ltjax import augment, plots, reporting
from ltjax import data as ltdata
from ltjax import methods as ltmethods
from ltjax import recipe as recipe_lib
from ltjax.models import registry as models
from ltjax.training import loop, optim, schedules, sharding, trainer
from ltjax.training.checkpoint import Checkpointer

CP_CONFUSION_FILE = "cp_confusion.npy"
NORMALIZATIONS = ("cifar", "cifar_stats", "dataset")
# The full CIFAR training sets' own mean / std, the `normalize="cifar_stats"` constants
# (DBN-Mix code, data/dataloader.py `dataset_statistics`).
CIFAR_STATS = {
    "cifar10_lt": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100_lt": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def _valid(kind: str, name: str, valid: tuple[str, ...] | list[str]) -> None:
  if name not in valid:
    raise ValueError(f"Unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}.")


def validate_names(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (listing the valid names) for an unknown method, dataset or model."""
  _valid("method", config.method, ltmethods.METHODS)
  _valid("dataset", config.dataset.name, ltdata.DATASETS)
  _valid("model", config.model.name, sorted(models.MODELS))
  _valid("normalization", config.get("normalize", "cifar"), NORMALIZATIONS)
  _valid("protocol", config.get("protocol", "paper"), ltmethods.protocols.KINDS)
  for name in ("num_epochs", "batch_size", "eval_every", "checkpoint_every"):
    if config[name] < 1:
      raise ValueError(f"config.{name} must be >= 1, got {config[name]}.")


def build_recipe(config: ml_collections.ConfigDict) -> recipe_lib.Recipe:
  """The method's recipe with the config's hyperparameters (config.recipe).

  config.recipe holds the protocol's hyperparameters already in the run's epochs (the config
  rescaled them); lists (a config read back from config.json) become tuples.
  """
  hparams = {k: tuple(v) if isinstance(v, list) else v
             for k, v in config.recipe.to_dict().items()}
  return ltmethods.get_recipe(config.method, num_epochs=config.num_epochs,
                              protocol=config.get("protocol", "paper"), **hparams)


def model_name(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe) -> str:
  """config.model.name, switched to its dual-branch form for two-branch methods."""
  name = config.model.name
  dual = f"dual_{name}"
  if rcp.branches == 2 and not name.startswith("dual_") and dual in models.MODELS:
    return dual
  return name


def build_model(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe,
                num_classes: int) -> Any:
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  return models.get_model(model_name(config, rcp), num_classes, head=rcp.head, **kwargs)


def check_setup(config: ml_collections.ConfigDict, num_classes: int,
                sample_shape: tuple[int, ...]) -> tuple[recipe_lib.Recipe, Any]:
  """Names, recipe hyperparameters and the method / model combination, before training."""
  validate_names(config)
  rcp = build_recipe(config)
  model = build_model(config, rcp, num_classes)
  ltmethods.check_compatible(rcp, model, np.zeros((1,) + tuple(sample_shape), np.float32))
  return rcp, model


def normalizer(config: ml_collections.ConfigDict, train_images: np.ndarray
               ) -> tuple[Callable[[jax.Array], jax.Array], dict[str, list[float]]]:
  """`uint8 -> float32` input normalisation by config.normalize.

  "cifar": the CIFAR constants of LDAM-DRW and its descendants (RGB images);
  "cifar_stats": the full CIFAR-10 / CIFAR-100 training set's mean / std (CIFAR_STATS);
  otherwise, and for datasets those do not fit, the long-tailed training set's own stats.
  """
  kind = config.get("normalize", "cifar")
  if kind == "cifar" and train_images.shape[-1] == 3:
    mean, std = augment.CIFAR_MEAN, augment.CIFAR_STD
  elif kind == "cifar_stats" and config.dataset.name in CIFAR_STATS:
    mean, std = CIFAR_STATS[config.dataset.name]
  else:
    pixels = train_images.reshape(-1, train_images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pixels.mean(0))
    std = tuple(max(float(s), 1e-3) for s in pixels.std(0))
  return (lambda x: augment.normalize(x, mean, std)), {"mean": list(mean), "std": list(std)}


def augmenter(config: ml_collections.ConfigDict):
  """Training augmentation: random crop of the padded image (+ horizontal flip), on device.

  config.augment: pad, flip, pad_mode ("constant" zero padding, or e.g. "reflect").
  """
  pad, flip = int(config.augment.pad), bool(config.augment.flip)
  if not pad and not flip:
    return None
  pad_mode = config.augment.pad_mode
  return lambda key, images: augment.random_crop_flip(key, images, pad, flip,
                                                      pad_mode=pad_mode)


def load_dataset(config: ml_collections.ConfigDict) -> ltdata.ArrayDataset:
  """The long-tailed training set and balanced test set named by config.dataset."""
  kwargs = config.dataset.to_dict()
  name = kwargs.pop("name")
  on_device = [n for n in ltdata.DEFAULT_LONGTAIL if n != "toy2d"]
  if name in ltdata.DATASETS and name not in on_device:
    raise ValueError(f"Dataset {name!r} cannot be trained by experiments.train yet: it trains "
                     f"on decoded image arrays held on the device ({', '.join(on_device)}). "
                     "toy2d is 2-D feature data (see colabs/toy_decision_boundaries.ipynb); "
                     "the file-list datasets need the grain input pipeline "
                     "(ltjax.data.pipeline), which fit does not take yet.")
  kwargs = {k: v for k, v in kwargs.items() if v is not None and v != ""}
  return ltdata.get_dataset(name, **kwargs)


def dataset_info(config: ml_collections.ConfigDict, ds: ltdata.ArrayDataset,
                 norm: dict[str, Any]) -> dict[str, Any]:
  """The content of dataset.json."""
  return {"name": config.dataset.name, "class_names": list(ds.class_names),
          "num_classes": ds.num_classes, "train_counts": ds.train_counts,
          "test_counts": ds.test_counts, "num_train": int(ds.train_labels.size),
          "num_test": int(ds.test_labels.size), "image_shape": ds.train_images.shape[1:],
          "imbalance": float(ds.train_counts.max() / max(ds.train_counts.min(), 1)),
          "normalization": norm,
          "meta": {k: v for k, v in ds.meta.items() if k not in ("counts", "original_counts")}}


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """The main phase's learning-rate schedule from config.schedule and config.optim.lr.

  The warm-up is stepped per "epoch" (LDAM-DRW and most references) or per "step" (DBN-Mix
  code) as config.schedule.warmup_unit says.
  """
  s = config.schedule
  warmup_unit = s.get("warmup_unit", "epoch")
  if s.name == "multistep":
    return schedules.warmup_multistep(config.optim.lr, steps_per_epoch, s.warmup_epochs,
                                      tuple(s.milestones), tuple(s.factors),
                                      warmup_unit=warmup_unit)
  if s.name == "cosine":
    return schedules.warmup_cosine(config.optim.lr, steps_per_epoch, s.warmup_epochs,
                                   config.num_epochs, warmup_unit=warmup_unit)
  return schedules.get_schedule(s.name, base_lr=config.optim.lr)


def build_phases(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe,
                 num_train: int) -> list[trainer.Phase]:
  """The main phase, and CP-Mix's classifier fine-tuning when config.finetune.num_epochs.

  The schedule counts the steps `fit` takes: N // B, or ceil(N / B) without drop_last.
  """
  steps = loop.steps_per_epoch(num_train, config.batch_size, config.get("drop_last", True))
  o = config.optim
  main = trainer.Phase(rcp, config.num_epochs, optim.sgd(
      lr_schedule(config, steps), momentum=o.momentum, nesterov=o.nesterov,
      weight_decay=o.weight_decay))
  phases = [main]
  ft = config.finetune
  if isinstance(rcp, ltmethods.CPMix) and ft.num_epochs > 0:
    phases.append(trainer.Phase(
        ltmethods.CPMixFinetune(logit_scale=rcp.logit_scale), ft.num_epochs,
        optim.sgd(schedules.constant(ft.lr), momentum=ft.momentum,
                  weight_decay=ft.weight_decay, trainable=optim.path_mask(("head",))),
        train_batch_stats=False))
  return phases


def make_mesh(config: ml_collections.ConfigDict):
  """Data-parallel mesh over config.num_devices (0: all); None on a single device."""
  num = config.num_devices or jax.device_count()
  return sharding.make_mesh(num) if num > 1 else None


class MetricsCallback:
  """`on_epoch_end` hook of `fit`: metrics.jsonl + TensorBoard rows, epoch times."""

  def __init__(self, writer: reporting.MetricWriter):
    self.writer = writer
    self.epoch_times: list[float] = []
    self._last = time.perf_counter()

  def on_epoch_end(self, epoch: int, train: dict[str, float],
                   evaluated: dict[str, Any] | None) -> None:
    now = time.perf_counter()
    self.epoch_times.append(now - self._last)
    self._last = now
    row = {f"train/{k}": v for k, v in train.items()}
    if evaluated is not None:
      row.update({f"eval/{k}": v for k, v in evaluated.items()
                  if k not in ("per_class", "confusion")})
    row["time/epoch_s"] = self.epoch_times[-1]
    self.writer.write(epoch, row)


def latest_epoch(workdir: str) -> int:
  """Completed epochs of the latest checkpoint in workdir (0 when none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  ckpt = Checkpointer(workdir)
  try:
    return ckpt.latest_epoch() or 0
  finally:
    ckpt.close()


def _fit(config, model, phases, data, normalize_fn, ds, workdir, callbacks, mesh,
         stop_after):
  return trainer.fit(
      model, phases, data, batch_size=config.batch_size, seed=config.seed,
      normalize_fn=normalize_fn, augment_fn=augmenter(config), workdir=workdir,
      test_images=ds.test_images, test_labels=ds.test_labels,
      eval_every=config.eval_every, eval_batch_size=config.eval_batch_size,
      checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
      callbacks=callbacks, mesh=mesh, progress=config.progress, stop_after=stop_after,
      loop=config.loop, drop_last=config.drop_last)


def train_phases(config, model, phases, data, normalize_fn, ds, workdir, callbacks, mesh,
                 stop_after):
  """Runs `fit`; for CP-Mix stops once after the main phase to keep its confusion counts.

  Returns (FitResult, CP-Mix confusion counts or None).
  """
  main_epochs = phases[0].epochs
  cp_file = os.path.join(workdir, CP_CONFUSION_FILE)
  end = sum(p.epochs for p in phases) if stop_after is None else stop_after
  if len(phases) > 1 and latest_epoch(workdir) < main_epochs <= end:
    result = _fit(config, model, phases, data, normalize_fn, ds, workdir, callbacks, mesh,
                  main_epochs)
    np.save(cp_file, np.asarray(result.state.method_state["confusion"]))
  result = _fit(config, model, phases, data, normalize_fn, ds, workdir, callbacks, mesh,
                stop_after)
  if len(phases) == 1 and isinstance(phases[0].recipe, ltmethods.CPMix):
    np.save(cp_file, np.asarray(result.state.method_state["confusion"]))
  confusion = np.load(cp_file) if os.path.exists(cp_file) else None
  return result, confusion


def write_plots(workdir: str, final: dict[str, Any], ds: ltdata.ArrayDataset) -> None:
  names = list(ds.class_names)
  plots.per_class_accuracy_plot(final["per_class"], ds.train_counts,
                                os.path.join(workdir, "per_class_accuracy.png"), names)
  plots.confusion_plot(final["confusion"], names, os.path.join(workdir, "confusion.png"))


def run(config: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains one run into `workdir` and returns the content of results.json.

  Args:
    config: a resolved experiment config (experiments/configs/*.py).
    workdir: run folder; resumed from its latest checkpoint when it has one.
    stop_after: stop after this many global epochs (None: run to the end).
    log: where progress lines go.
  """
  validate_names(config)
  wall_start = time.perf_counter()
  ds = load_dataset(config)
  rcp, model = check_setup(config, ds.num_classes, ds.train_images.shape[1:])
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.name = model_name(config, rcp)
  os.makedirs(workdir, exist_ok=True)
  normalize_fn, norm = normalizer(config, ds.train_images)
  reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  reporting.write_json(os.path.join(workdir, "dataset.json"), dataset_info(config, ds, norm))
  reporting.write_json(os.path.join(workdir, "env.json"), reporting.environment_info())
  data = recipe_lib.DeviceDataset.from_arrays(ds.train_images, ds.train_labels,
                                              ds.num_classes)
  phases = build_phases(config, rcp, ds.train_labels.size)
  start = latest_epoch(workdir)
  if start:
    log(f"Resuming {workdir} after epoch {start}.")
  with reporting.MetricWriter(workdir, start_epoch=start) as writer:
    callback = MetricsCallback(writer)
    result, cp_confusion = train_phases(config, model, phases, data, normalize_fn, ds,
                                        workdir, [callback], make_mesh(config), stop_after)
    rows = list(writer.rows)
  total = sum(p.epochs for p in phases)
  times = callback.epoch_times
  timing = {"wall_time_s": time.perf_counter() - wall_start,
            "epoch_time_s": float(np.median(times[1:] if len(times) > 1 else times))
                            if times else None,
            "first_epoch_time_s": times[0] if times else None,
            "epochs_this_process": len(times), "epochs_done": result.epochs_done,
            "num_epochs": total, "resumed_from_epoch": start}
  final = result.final_metrics
  if final is None:
    raise RuntimeError(f"No evaluation happened in {workdir}; nothing to report.")
  extra = {"method": config.method, "complete": result.epochs_done >= total,
           "best_epoch": result.best_epoch,
           "best_top1": (result.best_metrics or {}).get("top1")}
  if config.plots:
    write_plots(workdir, final, ds)
    from experiments import analysis  # pylint: disable=import-outside-toplevel
    state = result.state
    extra["method_view"] = analysis.method_views(
        rcp, workdir, ds.train_counts, list(ds.class_names), seed=config.seed,
        num_draws=config.analysis_draws,
        method_state={"confusion": cp_confusion} if cp_confusion is not None else None,
        model_state=(model.apply, state.params, state.batch_stats, state.method_state),
        data=data, normalize_fn=normalize_fn, batch_size=config.batch_size)
  results = reporting.summarize_run(rows, final, ds.class_names, ds.train_counts, timing,
                                    extra)
  results["protocol"] = protocol_info(config)
  reporting.write_json(os.path.join(workdir, "results.json"), results)
  f = results["final"]
  log(f"{config.method}: top1 {100 * f['top1']:.2f}  many {pct(f.get('many'))}  "
      f"medium {pct(f.get('medium'))}  few {pct(f.get('few'))}  "
      f"({timing['wall_time_s']:.1f} s) -> {workdir}")
  return results


def protocol_info(config: ml_collections.ConfigDict) -> dict[str, str]:
  """results.json's `protocol`: paper or code, the published table it reproduces, sources."""
  return {"name": config.protocol, "reproduces": config.reproduces, "source": config.source}


def pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def maybe_initialize_distributed(config: ml_collections.ConfigDict, flag: bool) -> None:
  """jax.distributed.initialize() when the flag or config.jax_distributed asks for it."""
  if flag or config.get("jax_distributed", False):
    sharding.initialize_distributed()
