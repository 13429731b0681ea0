"""The body of a training run (no flags): validation, data, phases, fit, reports.

`run(config, workdir)` is what `experiments.train` (one run) and `experiments.compare`
(many runs) call; `experiments.evaluate` reuses its builders to restore a checkpoint.
See experiments/train.py for what a run writes to its workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from experiments import cli, timing
from experiments import workdir as workdir_lib
from experiments.cli import UserError
from ltjax import audio, augment, plots, reporting
from ltjax import data as ltdata
from ltjax import methods as ltmethods
from ltjax import recipe as recipe_lib
from ltjax.models import registry as models
from ltjax.training import loop, optim, schedules, sharding, trainer
from ltjax.training.checkpoint import Checkpointer

NORMALIZATIONS = ("cifar", "cifar_stats", "cinic10", "half", "dataset", "imagenet",
                  "inat2018", "waveform")
WAVEFORM = "waveform"  # config.normalize / config.augment.kind of raw-audio datasets
STREAMED = "stream"  # config.input.pipeline of the datasets read by grain step by step
# config.dataset.images of a streamed dataset: image files under image_root, or the TFDS
# ArrayRecord records the split files name (ImageNet-LT: imagenet2012).
IMAGE_FILES, IMAGE_TFDS = "files", "tfds"
IMAGE_SOURCES = (IMAGE_FILES, IMAGE_TFDS)
# The full CIFAR training sets' own mean / std, the `normalize="cifar_stats"` constants
# (DBN-Mix code, data/dataloader.py `dataset_statistics`).
CIFAR_STATS = {
    "cifar10_lt": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100_lt": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# Fixed mean / std of in-memory datasets, from the MAMix code (ntucllab/imbalanced-DL
# dataset/imbalance_dataset.py): CINIC-10's own statistics, ImageNet's for Tiny-ImageNet,
# 0.5 / 0.5 for SVHN.
CONSTANT_STATS = {
    "cinic10": ((0.47889522, 0.47227842, 0.43047404), (0.24205776, 0.23828046, 0.25874835)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _valid(kind: str, name: str, valid: tuple[str, ...] | list[str]) -> None:
  if name not in valid:
    raise UserError(f"Unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}.")


def validate_names(config: ml_collections.ConfigDict) -> None:
  """Raises UserError (a ValueError listing the valid names) for an unknown method, dataset,
  model, normalisation or protocol, a count below 1, or a warm-up as long as the run."""
  _valid("method", config.method, ltmethods.METHODS)
  _valid("dataset", config.dataset.name, ltdata.DATASETS)
  _valid("model", config.model.name, sorted(models.MODELS))
  _valid("normalization", config.get("normalize", "cifar"), NORMALIZATIONS)
  _valid("protocol", config.get("protocol", "paper"), ltmethods.protocols.KINDS)
  for name in ("num_epochs", "batch_size", "eval_batch_size", "eval_every",
               "checkpoint_every", "keep_checkpoints"):
    if config[name] < 1:
      raise UserError(f"config.{name} must be >= 1, got {config[name]}.")
  warmup = config.schedule.get("warmup_epochs", 0)
  if warmup >= config.num_epochs:
    raise UserError(f"config.schedule.warmup_epochs={warmup} >= config.num_epochs="
                    f"{config.num_epochs}: the run would never reach its learning rate; "
                    "shorten the warm-up or train longer.")


def build_recipe(config: ml_collections.ConfigDict) -> recipe_lib.Recipe:
  """The method's recipe with the config's hyperparameters (config.recipe).

  config.recipe holds the protocol's hyperparameters already in the run's epochs (the config
  rescaled them); lists (a config read back from config.json) become tuples.

  Raises:
    UserError: a hyperparameter the recipe rejects.
  """
  hparams = {k: tuple(v) if isinstance(v, list) else v
             for k, v in config.recipe.to_dict().items()}
  try:
    return ltmethods.get_recipe(config.method, num_epochs=config.num_epochs,
                                protocol=config.get("protocol", "paper"), **hparams)
  except ValueError as e:
    raise UserError(f"config.recipe of {config.method}: {e}") from e


def resolve(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe
            ) -> ml_collections.ConfigDict:
  """The config a run records: references resolved, the model name of `model_name`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.name = model_name(config, rcp)
  return config


def model_name(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe) -> str:
  """config.model.name, switched to its dual-branch form for two-branch methods and to its
  multi-expert form (e.g. resnet50 -> ride_resnet50) for RIDE methods."""
  name, needs = config.model.name, rcp.requirements()
  prefix = "dual_" if needs.branches == 2 else "ride_" if needs.experts else None
  if prefix and not name.startswith(prefix) and prefix + name in models.MODELS:
    return prefix + name
  return name


def build_model(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe,
                num_classes: int) -> Any:
  kwargs = {k: v for k, v in config.model.items() if k not in ("name", "pretrained")}
  return models.get_model(model_name(config, rcp), num_classes,
                          head=rcp.requirements().head, **kwargs)


def check_setup(config: ml_collections.ConfigDict, num_classes: int,
                sample_shape: tuple[int, ...]) -> tuple[recipe_lib.Recipe, Any]:
  """Names, recipe hyperparameters and the method / model combination, before training.

  Raises:
    UserError: what is wrong with the config (the message says what).
  """
  validate_names(config)
  rcp = build_recipe(config)
  try:
    model = build_model(config, rcp, num_classes)
    sample = np.zeros((1,) + tuple(sample_shape), np.float32)
    for phase in phase_recipes(config, rcp):
      ltmethods.check_compatible(phase, model, sample)
  except ValueError as e:
    raise UserError(str(e)) from e
  return rcp, model


def normalizer(config: ml_collections.ConfigDict, train_images: np.ndarray | None
               ) -> tuple[Callable[[jax.Array], jax.Array], dict[str, list[float]]]:
  """`uint8 -> float32` input normalisation by config.normalize.

  Streamed datasets ("imagenet", "inat2018"): config.input.mean / .std (train_images None).
  "cifar": the CIFAR constants of LDAM-DRW and its descendants (RGB images);
  "cifar_stats": the full CIFAR-10 / CIFAR-100 training set's mean / std (CIFAR_STATS);
  "cinic10", "imagenet", "half": the constants of CONSTANT_STATS (RGB images);
  "waveform": int16 PCM / 32768, whole clips cut into config.augment.crops test crops of
  config.augment.length samples (`ltjax.audio.WaveformInput`);
  otherwise, and for datasets those do not fit, the long-tailed training set's own stats.
  """
  kind = config.get("normalize", "cifar")
  if kind == WAVEFORM:
    length, crops = int(config.augment.length), int(config.augment.crops)
    if train_images is not None and train_images.shape[-1] == length:
      raise UserError(f"the clips are stored {length} samples wide, the model's input "
                      "length (config.augment.length): whole clips and training crops "
                      "would look alike; use clips of another length.")
    return audio.WaveformInput(length, crops), {"scale": 1 / audio.PCM_SCALE,
                                                "length": length, "crops": crops}
  if streamed(config):  # "imagenet" / "inat2018": the config's input.mean / input.std
    mean, std = tuple(config.input.mean), tuple(config.input.std)
  elif kind == "cifar" and train_images.shape[-1] == 3:
    mean, std = augment.CIFAR_MEAN, augment.CIFAR_STD
  elif kind == "cifar_stats" and config.dataset.name in CIFAR_STATS:
    mean, std = CIFAR_STATS[config.dataset.name]
  elif kind in CONSTANT_STATS and train_images.shape[-1] == 3:
    mean, std = CONSTANT_STATS[kind]
  else:
    pixels = train_images.reshape(-1, train_images.shape[-1]).astype(np.float64) / 255.0
    mean = tuple(float(m) for m in pixels.mean(0))
    std = tuple(max(float(s), 1e-3) for s in pixels.std(0))
  return augment.Normalize.of(mean, std), {"mean": list(mean), "std": list(std)}


def augmenter(config: ml_collections.ConfigDict):
  """Training augmentation: random crop of the padded image (+ horizontal flip), on device.

  config.augment: pad, flip, pad_mode ("constant" zero padding, or e.g. "reflect").
  Waveforms (config.augment.kind = "waveform"): a random crop of config.augment.length
  samples of the zero-padded clip (`ltjax.audio.random_crop`).
  """
  if config.augment.get("kind", "image") == WAVEFORM:
    length = int(config.augment.length)
    return lambda key, clips: audio.random_crop(key, clips, length)
  pad, flip = int(config.augment.pad), bool(config.augment.flip)
  if not pad and not flip:
    return None
  pad_mode = config.augment.pad_mode
  return lambda key, images: augment.random_crop_flip(key, images, pad, flip,
                                                      pad_mode=pad_mode)


def streamed(config: ml_collections.ConfigDict) -> bool:
  """Whether the config trains from the grain stream (config.input.pipeline)."""
  return config.get("input", {}).get("pipeline", "device") == STREAMED


def load_dataset(config: ml_collections.ConfigDict) -> ltdata.Dataset:
  """The long-tailed training set and balanced test set named by config.dataset.

  Decoded arrays for the in-memory datasets; image paths for the file-list datasets
  (ImageNet-LT, Places-LT, iNaturalist 2018: long-tailed by their split files, so rho and
  profile do not apply), which train from the stream (config.input.pipeline="stream").

  Raises:
    UserError: a dataset the config's input pipeline cannot train, bad long-tail arguments,
      or missing data files (ltjax.data's message says how to get them).
  """
  kwargs = config.dataset.to_dict()
  name = kwargs.pop("name")
  images = kwargs.pop("images", IMAGE_FILES)
  for key in ("tfds_name", "tfds_data_dir"):
    kwargs.pop(key, None)
  if images not in IMAGE_SOURCES:
    raise UserError(f"Unknown config.dataset.images {images!r}; valid: "
                    f"{', '.join(IMAGE_SOURCES)}.")
  if images == IMAGE_TFDS:
    if name != "imagenet_lt":
      raise UserError(f"config.dataset.images='tfds' reads ImageNet-LT from TFDS "
                      f"imagenet2012; TFDS has no {name} with the split's file names.")
    kwargs["check_images"] = False
  on_device = [n for n in ltdata.DEFAULT_LONGTAIL if n != "toy2d"]
  if name == "toy2d":
    raise UserError("Dataset 'toy2d' is 2-D feature data, not images: see "
                    "colabs/toy_decision_boundaries.ipynb.")
  if name in ltdata.DATASETS and name not in on_device:
    if not streamed(config):
      raise UserError(f"Dataset {name!r} is read from image files: it trains with "
                      "--config.input.pipeline=stream (its config's default).")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("rho", "profile")}
  kwargs = {k: v for k, v in kwargs.items() if v is not None and v != ""}
  try:
    return ltdata.get_dataset(name, **kwargs)
  except (ValueError, FileNotFoundError) as e:
    raise UserError(str(e)) from e


def sample_shape(config: ml_collections.ConfigDict, ds: ltdata.Dataset) -> tuple[int, ...]:
  """(H, W, C) of a training input: the array's, the stream's crop (RGB), or (L,) for
  waveforms (the training crop)."""
  if config.get("normalize") == WAVEFORM:
    return (int(config.augment.length),)
  if streamed(config):
    return (config.input.train_size, config.input.train_size, 3)
  return tuple(ds.train_images.shape[1:])


def dataset_info(config: ml_collections.ConfigDict, ds: ltdata.Dataset,
                 norm: dict[str, Any]) -> dict[str, Any]:
  """The content of dataset.json."""
  return {"name": config.dataset.name, "class_names": list(ds.class_names),
          "num_classes": ds.num_classes, "train_counts": ds.train_counts,
          "test_counts": ds.test_counts, "num_train": int(ds.train_labels.size),
          "num_test": int(ds.test_labels.size), "image_shape": sample_shape(config, ds),
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


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int,
                    batch_size: int | None = None, field: str = "config.batch_size") -> int:
  """The steps `fit` takes per epoch at `batch_size` (default config.batch_size): N // B,
  or ceil(N / B) without drop_last.

  Raises:
    UserError: a batch larger than the training set with drop_last (no step per epoch).
  """
  batch = batch_size or config.batch_size
  steps = loop.steps_per_epoch(num_train, batch, config.get("drop_last", True))
  if steps < 1:
    raise UserError(f"{field}={batch} is larger than the training set ({num_train} images) "
                    "and config.drop_last drops the partial batch: no step per epoch. Lower "
                    f"{field} or set --config.drop_last=False.")
  return steps


def build_phases(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe,
                 num_train: int) -> list[trainer.Phase]:
  """The main phase, then the recipe's extra phases (`Requirements.extra_phases`: CP-Mix's
  classifier fine-tuning, RIDE's routing stage) when config.finetune.num_epochs > 0.

  The main schedule counts the steps `fit` takes (`steps_per_epoch`); an extra phase trains
  config.finetune.num_epochs epochs with config.finetune's optimiser (`extra_phase`). Each
  phase updates the parameters its recipe's requirements name (`optim.phase_mask`).
  """
  o = config.optim
  _, *extra = phase_recipes(config, rcp)
  main = trainer.Phase(rcp, config.num_epochs, optim.sgd(
      lr_schedule(config, steps_per_epoch(config, num_train)), momentum=o.momentum,
      nesterov=o.nesterov, weight_decay=o.weight_decay, trainable=phase_mask(rcp)))
  return [main, *(extra_phase(config, follow_up, num_train) for follow_up in extra)]


def phase_recipes(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe
                  ) -> list[recipe_lib.Recipe]:
  """The recipes of the run's phases: `rcp`, then its extra phases when
  config.finetune.num_epochs > 0."""
  extra = rcp.requirements().extra_phases if config.finetune.num_epochs > 0 else ()
  return [rcp, *extra]


def phase_mask(rcp: recipe_lib.Recipe):
  """The trainable mask of a recipe's requirements (None: every parameter)."""
  needs = rcp.requirements()
  return optim.phase_mask(needs.trainable, needs.frozen)


def extra_phase(config: ml_collections.ConfigDict, rcp: recipe_lib.Recipe,
                num_train: int) -> trainer.Phase:
  """A phase after the main one: config.finetune's optimiser on what `rcp` trains.

  config.finetune: num_epochs, lr, momentum, weight_decay, nesterov, batch_size (0: the
  run's) and schedule: "constant", or "cosine_epoch" (PyTorch's `CosineAnnealingLR(T_max=
  num_epochs)` stepped once per epoch: lr (1 + cos(pi e / E)) / 2 in epoch e; RIDE's
  routing stage).
  """
  ft, needs = config.finetune, rcp.requirements()
  batch = ft.get("batch_size", 0) or config.batch_size
  steps = steps_per_epoch(config, num_train, batch, "config.finetune.batch_size")
  return trainer.Phase(
      rcp, ft.num_epochs,
      optim.sgd(finetune_schedule(ft, steps), momentum=ft.momentum,
                nesterov=ft.get("nesterov", False), weight_decay=ft.weight_decay,
                trainable=phase_mask(rcp)),
      train_batch_stats=needs.train_batch_stats,
      batch_size=None if batch == config.batch_size else batch)


FINETUNE_SCHEDULES = ("constant", "cosine_epoch")


def finetune_schedule(ft: ml_collections.ConfigDict, steps_per_epoch: int):
  """config.finetune's learning-rate schedule (see `extra_phase`)."""
  name = ft.get("schedule", "constant")
  if name not in FINETUNE_SCHEDULES:
    raise UserError(f"config.finetune.schedule={name!r}; valid: "
                    f"{', '.join(FINETUNE_SCHEDULES)}.")
  epochs = tuple(range(1, ft.num_epochs)) if name == "cosine_epoch" else ()
  if not epochs:
    return schedules.constant(ft.lr)
  return schedules.warmup_multistep(
      ft.lr, steps_per_epoch, 0, epochs,
      tuple(0.5 * (1.0 + math.cos(math.pi * e / ft.num_epochs)) for e in epochs))


def make_mesh(config: ml_collections.ConfigDict):
  """Data-parallel mesh over config.num_devices (0: all); None on a single device."""
  num = config.num_devices or jax.device_count()
  return sharding.make_mesh(num) if num > 1 else None


def latest_epoch(workdir: str) -> int:
  """Completed epochs of the latest checkpoint in workdir (0 when none)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return 0
  ckpt = Checkpointer(workdir)
  try:
    return ckpt.latest_epoch() or 0
  finally:
    ckpt.close()


def streams(config: ml_collections.ConfigDict, ds: ltdata.FileListDataset):
  """The training and test streams of a file-list dataset, with config.input's transforms.

  Training: `input.crop` ("random_resized": RandomResizedCrop(train_size, scale, ratio);
  "resize_random": resize to eval_resize x eval_resize, then a random train_size crop),
  flip, ColorJitter(jitter) when jitter > 0; test and epoch subsets: ResizeCenterCrop(
  eval_resize, eval_size). With input.draft, JPEGs decode at the smallest DCT scale that
  keeps the short side >= what the crop reads.
  """
  try:
    from ltjax.data import pipeline, stream  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # grain is an extra; the message says how to install it
    raise UserError(str(e)) from e
  i = config.input
  if i.crop == "random_resized":
    crop = pipeline.RandomResizedCrop(i.train_size, tuple(i.scale), tuple(i.ratio))
  elif i.crop == "resize_random":
    crop = pipeline.ResizeRandomCrop(i.eval_resize, i.train_size)
  else:
    raise UserError(f"Unknown config.input.crop {i.crop!r}; valid: random_resized, "
                    "resize_random.")
  train = [crop] + ([pipeline.RandomHorizontalFlip()] if i.flip else [])
  if i.jitter:
    train.append(pipeline.ColorJitter(i.jitter, i.jitter, i.jitter))
  draft = max(i.train_size, i.eval_resize) if i.draft else None
  common = dict(num_classes=ds.num_classes, worker_count=i.worker_count,
                prefetch=i.prefetch, eval_transforms=(pipeline.ResizeCenterCrop(
                    i.eval_resize, i.eval_size),))
  train_source, test_source = image_sources(config, ds, draft)
  train_set = stream.StreamedDataset(train_source, ds.train_labels, transforms=tuple(train),
                                     **common)
  test_set = stream.StreamedDataset(test_source, ds.test_labels, **common)
  return train_set, test_set


def image_sources(config: ml_collections.ConfigDict, ds: ltdata.FileListDataset,
                  draft: int | None):
  """The grain sources of the training and test images: the files of the split lists, or
  (config.dataset.images="tfds") the TFDS records they name (ImageNet-LT: `imagenet2012`
  "train" and "validation", matched by file name; `ltjax.data.tfds_source`)."""
  from ltjax.data import pipeline  # pylint: disable=import-outside-toplevel
  if config.dataset.get("images", IMAGE_FILES) == IMAGE_FILES:
    return (pipeline.ImageFileSource(ds.train_paths, ds.train_labels, draft_size=draft),
            pipeline.ImageFileSource(ds.test_paths, ds.test_labels, draft_size=draft))
  from ltjax.data import filelists, image_folder, tfds_source  # pylint: disable=import-outside-toplevel
  decode = functools.partial(image_folder.decode_image, draft_size=draft)
  split_dir = pathlib.Path(ds.meta["source"])
  name, data_dir = config.dataset.tfds_name, config.dataset.get("tfds_data_dir")
  train_file, test_file, _ = filelists.SPLIT_FILES[config.dataset.name]
  try:
    return tuple(tfds_source.split_file_source(
        split_dir / split_file, tfds_source.tfds_data_source(name, split, data_dir=data_dir),
        decode=decode) for split_file, split in ((train_file, "train"),
                                                  (test_file, "validation")))
  except (ImportError, ltdata.DataError) as e:
    raise UserError(str(e)) from e


def train_phases(config, model, phases, data, normalize_fn, ds, workdir, callbacks, mesh,
                 stop_after) -> trainer.FitResult:
  """`fit` over every phase of the run, resuming from the workdir's latest checkpoint
  (`data`: the training set on the device, or the (train, test) streams)."""
  if streamed(config):
    data, test = data
    test_kwargs = {"test_data": test,
                   "checkpoint_every_steps": config.get("checkpoint_every_steps", 0)}
  else:
    test_kwargs = {"test_images": ds.test_images, "test_labels": ds.test_labels}
  return trainer.fit(
      model, phases, data, batch_size=config.batch_size, seed=config.seed,
      normalize_fn=normalize_fn, augment_fn=augmenter(config), workdir=workdir,
      **test_kwargs,
      eval_every=config.eval_every, eval_batch_size=config.eval_batch_size,
      checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
      callbacks=callbacks, mesh=mesh, progress=config.progress, stop_after=stop_after,
      loop=config.loop, drop_last=config.drop_last, init_variables=pretrained(config))


def pretrained(config: ml_collections.ConfigDict):
  """`fit`'s init_variables loading config.model.pretrained (None without a path)."""
  path = config.model.get("pretrained")
  if not path:
    return None
  if not os.path.exists(path):
    raise UserError(f"config.model.pretrained: no such file or folder {path!r}.")
  from ltjax.models import pretrained as weights  # pylint: disable=import-outside-toplevel
  return lambda params, batch_stats: weights.load_pretrained(params, batch_stats, path)


def write_plots(workdir: str, final: dict[str, Any], ds: ltdata.ArrayDataset,
                config: ml_collections.ConfigDict) -> None:
  """per_class_accuracy.png and confusion.png, titled with the method, dataset and seed."""
  names = list(ds.class_names)
  run = f"{config.method} on {config.dataset.name}, seed {config.seed}"
  plots.per_class_accuracy_plot(final["per_class"], ds.train_counts,
                                os.path.join(workdir, "per_class_accuracy.png"), names,
                                title=f"Per-class accuracy: {run}")
  plots.confusion_plot(final["confusion"], names, os.path.join(workdir, "confusion.png"),
                       title=f"Confusion matrix (row-normalised): {run}")


def write_run_files(workdir: str, config: ml_collections.ConfigDict, ds: ltdata.ArrayDataset,
                    norm: dict[str, Any]) -> None:
  """config.json, dataset.json and env.json."""
  reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  reporting.write_json(os.path.join(workdir, "dataset.json"), dataset_info(config, ds, norm))
  reporting.write_json(os.path.join(workdir, "env.json"), reporting.environment_info())


def check_stop_after(stop_after: int | None) -> None:
  """Raises UserError for a --stop_after below 1 (None: no stop)."""
  if stop_after is not None and stop_after < 1:
    raise UserError(f"--stop_after must be >= 1 (the epochs after which to stop), got "
                    f"{stop_after}; omit it to train to the end.")


def run(config: ml_collections.ConfigDict, workdir: str, stop_after: int | None = None,
        log: Callable[[str], None] = print, on_mismatch: str = "refuse",
        import_s: float = 0.0) -> dict[str, Any] | None:
  """Trains one run into `workdir` and returns the content of results.json.

  The workdir rules (experiments/workdir.py): the run holds the workdir's lock, a workdir
  holding a run of another config is refused, started afresh or forked (`on_mismatch`),
  config.json / dataset.json / env.json are written before training a new run and after
  the restore and training of a resumed one.

  Multi-process runs: every process calls `run` with the same arguments and trains; process
  0 alone claims the workdir (`workdir.claim_job`), logs and writes its files (run files,
  metrics.jsonl, TensorBoard, plots, method views, results.json); orbax checkpoints are
  written by all. Every process returns the same results, the other processes' without
  `extra.method_view` (process 0 computes the views as it draws them).

  Args:
    config: a resolved experiment config (experiments/configs/*.py).
    workdir: run folder; resumed from its latest checkpoint when it has one.
    stop_after: stop after this many global epochs (None: run to the end).
    log: where progress lines go.
    on_mismatch: "refuse", "fresh" or "fork" (experiments/workdir.py).
    import_s: the process's time before this call (imports, flags), for the timing.

  Returns:
    results.json's content; None when the run stopped (stop_after) before any evaluation.

  Raises:
    UserError: a config, data or workdir problem (the message says which and the fix).
  """
  started = time.perf_counter()
  check_stop_after(stop_after)
  validate_names(config)
  rcp = build_recipe(config)
  config = resolve(config, rcp)
  fields = workdir_lib.fingerprint_fields(config)
  main = sharding.is_main_process()
  log = log if main else _silent
  with cli.disk_full_errors(workdir), \
       workdir_lib.claim_job(workdir, fields, on_mismatch, log, main=main,
                             share=sharding.broadcast_text) as workdir:
    return _run_locked(config, workdir, fields, stop_after, log, import_s, started)


def _silent(_: str) -> None:
  """The log of the processes other than process 0."""


@dataclasses.dataclass
class _Setup:
  """What a run trains: data, model, recipe, phases (built once the workdir is claimed)."""
  ds: ltdata.ArrayDataset
  data: recipe_lib.DeviceDataset
  rcp: recipe_lib.Recipe
  model: Any
  normalize_fn: Callable[[jax.Array], jax.Array]
  norm: dict[str, Any]
  phases: list[trainer.Phase]
  steps: int
  data_s: float


def _setup(config: ml_collections.ConfigDict) -> _Setup:
  """Data (timed), then the checks and builders, cheapest first."""
  loading = time.perf_counter()
  ds = load_dataset(config)
  if streamed(config):
    data = streams(config, ds)
  else:
    data = recipe_lib.DeviceDataset.from_arrays(ds.train_images, ds.train_labels,
                                                ds.num_classes)
  data_s = time.perf_counter() - loading
  steps = steps_per_epoch(config, ds.train_labels.size)
  rcp, model = check_setup(config, ds.num_classes, sample_shape(config, ds))
  normalize_fn, norm = normalizer(config, getattr(ds, "train_images", None))
  return _Setup(ds, data, rcp, model, normalize_fn, norm,
                build_phases(config, rcp, ds.train_labels.size), steps, data_s)


def _run_locked(config, workdir, fields, stop_after, log, import_s, started):
  """`run` once the workdir is claimed: setup, training, timing segment, reports (the
  files written by process 0 only)."""
  writes = sharding.is_main_process()
  with timing.compile_clock() as compiled:
    setup = _setup(config)
    resuming = workdir_lib.holds_run(workdir)
    if not resuming and writes:
      write_run_files(workdir, config, setup.ds, setup.norm)
      workdir_lib.start_record(workdir, fields)
    segments = workdir_lib.segments(workdir) if resuming else []
    start = latest_epoch(workdir)
    if start:
      log(f"Resuming {workdir} after epoch {start}.")
    with reporting.RunLogger(workdir, steps_per_epoch=setup.steps, start_epoch=start,
                             class_names=setup.ds.class_names, config=config,
                             writes=writes) as callback:
      fit_start, compile_before = time.perf_counter(), compiled()
      try:
        result = train_phases(
            config, setup.model, setup.phases, setup.data, setup.normalize_fn, setup.ds,
            workdir, [callback], make_mesh(config), stop_after)
      finally:
        if callback.epoch_times:
          end = time.perf_counter()
          segment = timing.across_processes(timing.segment(
              from_epoch=start, epoch_times=callback.epoch_times, import_s=import_s,
              data_s=setup.data_s, compile_s=compiled(), fit_s=end - fit_start,
              fit_compile_s=compiled() - compile_before, run_s=end - started))
          segments = (workdir_lib.add_segment(workdir, fields, segment) if writes
                      else [*segments, segment])
      rows = list(callback.rows)
  if resuming and writes:
    write_run_files(workdir, config, setup.ds, setup.norm)
  if result.final_metrics is None:
    log(f"{config.method}: stopped after epoch {result.epochs_done} (checkpoint saved); no "
        f"evaluation yet, rerun to continue -> {workdir}")
    return None
  total = sum(p.epochs for p in setup.phases)
  times = timing.summary(segments, epochs_this_process=len(callback.epoch_times),
                         epochs_done=result.epochs_done, num_epochs=total,
                         resumed_from_epoch=start)
  return _report(config, workdir, fields, setup, result, rows, times, log)


def _report(config, workdir, fields, setup, result, rows, times, log):
  """Plots, the method's view and results.json of a run that was evaluated (written, and
  the view computed, by process 0 only)."""
  ds, final, total = setup.ds, result.final_metrics, times["num_epochs"]
  writes = sharding.is_main_process()
  extra = {"method": config.method, "complete": result.epochs_done >= total,
           "best_epoch": result.best_epoch,
           "best_top1": (result.best_metrics or {}).get("top1")}
  if config.plots and writes:
    write_plots(workdir, final, ds, config)
    extra["method_view"] = method_view(config, workdir, setup, result)
  results = reporting.summarize_run(rows, final, ds.class_names, ds.train_counts, times,
                                    extra)
  results["protocol"] = protocol_info(config)
  results["fingerprint"] = workdir_lib.fingerprint(fields)
  if writes:
    reporting.write_json(os.path.join(workdir, "results.json"), results)
  f = results["final"]
  log(f"{config.method}: top1 {100 * f['top1']:.2f}  many {pct(f.get('many'))}  "
      f"medium {pct(f.get('medium'))}  few {pct(f.get('few'))}  "
      f"({times['wall_time_s']:.1f} s over {times['launches']} launch(es)) -> {workdir}")
  return results


def method_view(config: ml_collections.ConfigDict, workdir: str, setup: _Setup,
                result: trainer.FitResult) -> dict[str, Any]:
  """The method's views (`experiments.analysis.method_views`: figures in the workdir, their
  numbers returned).

  They run on one device's copy of the trained variables and method state, so that
  process 0 computes them alone in a multi-process run (the trained arrays span every
  process). A streamed run gives the views no training set: those that redraw training
  batches (OTmix's pair statistics) are left out, the others (label occurrence,
  temperatures, CP-Mix's confusion pairs) read only the class counts and method state.
  """
  from experiments import analysis  # pylint: disable=import-outside-toplevel
  state = result.state
  method_state, params, batch_stats = sharding.local_copy(
      (result.phase_states[0], state.params, state.batch_stats))
  return analysis.method_views(setup.rcp, analysis.RunData(
      workdir=workdir, counts=setup.ds.train_counts, class_names=list(setup.ds.class_names),
      seed=config.seed, num_draws=config.analysis_draws, method_state=method_state,
      model=(setup.model.apply, params, batch_stats),
      data=None if streamed(config) else setup.data,
      normalize_fn=setup.normalize_fn, batch_size=config.batch_size))


def protocol_info(config: ml_collections.ConfigDict) -> dict[str, str]:
  """results.json's `protocol`: paper or code, the published table it reproduces, sources."""
  return {"name": config.protocol, "reproduces": config.reproduces, "source": config.source}


def pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}"


def maybe_initialize_distributed(config: ml_collections.ConfigDict,
                                 coordinates: dict[str, Any] | None) -> None:
  """jax.distributed.initialize() when the flags (`coordinates`: coordinator address,
  number of processes, process id; None values are detected by JAX) or
  config.jax_distributed ask for it."""
  if coordinates is not None or config.get("jax_distributed", False):
    sharding.initialize_distributed(**(coordinates or {}))
