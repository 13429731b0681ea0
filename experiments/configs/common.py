"""Shared pieces of the experiment configs: the argument parser and `make_config`.

Every dataset file (`cifar10_lt.py`, `digits_lt.py`, ...) defines `get_config(arg=None)`,
where `arg` is the text after the colon of `--config=experiments/configs/X.py:ARG`, a
comma-separated list of `key=value` (big_vision's `parse_arg` pattern):

    method=dbn_mix,protocol=code,rho=100,quick=True,seed=0,epochs=50

| key      | meaning                                                                  |
|----------|--------------------------------------------------------------------------|
| method   | registry name of the method (`ltjax.methods.METHODS`)                    |
| protocol | "paper" (default): the method's training recipe as its paper states it;  |
|          | "code": as its authors' public code trains it, which produced the        |
|          | published tables (`ltjax.methods.protocols`; SPEC section 7)             |
| rho      | imbalance ratio n_max / n_min of the training set                        |
| profile  | "exp", "step" or "pareto" (ESC-50-LT) long-tail profile                  |
| seed     | seed of the long-tailed subset *and* of training (one seed per run)      |
| epochs   | run length (>= 1; omit it for the protocol's length); every              |
|          | epoch-valued field (warm-up, milestones, DRW / deferral / stage-2        |
|          | epochs, fine-tuning) is rescaled from the protocol's length by           |
|          | `ltjax.methods.protocols.rescale` (see `rescaled`)                       |
| quick    | smoke-test variant: few epochs, small model, frequent evaluation         |

Every method's CIFAR-LT training protocol lives once, in `ltjax.methods.protocols`; a
dataset file only states what differs on that dataset (`make_config`'s `base`,
`method_overrides`, and `code_overrides` for protocol=code). The resolved config records
`protocol`, the table it `reproduces` and the protocol's `source`. Command-line
`--config.X=Y` flags are applied after `get_config`, on the resolved values.

A rescaled schedule must keep its shape (`rescaled`): a milestone, DRW, deferral or stage-2
epoch that lands on epoch 0 (e.g. `epochs=1`: the whole run at the decayed rate) is a
ValueError naming the fields and the shortest run that avoids it; two milestones, or a
milestone and a DRW / deferral / stage-2 epoch, that merge on one epoch where they were
distinct give a `ScheduleCollapseWarning` (the `quick` smoke runs merge them by design).

Every config has `dataset.data_dir`, a typed placeholder (None: `ltjax.data`'s search path,
`LTJAX_DATA_DIR`), so `--config.dataset.data_dir=PATH` points any config at its files.

Every config has an `input` section; `input.pipeline` says how training images reach the
model. "device" (the default; CIFAR-LT, Fashion-MNIST-LT, digits): the decoded training set
is held on the device and augmented there by `augment` (pad-and-crop, flip) and `normalize`.
"stream" (ImageNet-LT, Places-LT, iNaturalist 2018: `STREAM_INPUT`): images are decoded and
augmented on the host by grain workers (`ltjax.data.pipeline`) and fed to the device batch
by batch; `augment.pad` is 0 and `augment.flip` False there, and these fields apply:

| field               | meaning (stream only)                                             |
|---------------------|-------------------------------------------------------------------|
| input.crop          | "random_resized": torchvision RandomResizedCrop(train_size, scale,  |
|                     | ratio); "resize_random": resize to eval_resize x eval_resize, then  |
|                     | a uniformly placed train_size x train_size crop (the DBN-Mix /      |
|                     | CP-Mix texts' "resized to 256 x 256 ... random crop to 224")       |
| input.train_size    | side of the training crop (224)                                    |
| input.scale         | RandomResizedCrop area fraction range ((0.08, 1.0))                |
| input.ratio         | RandomResizedCrop aspect-ratio range ((3/4, 4/3))                  |
| input.flip          | random horizontal flip with probability 0.5                        |
| input.jitter        | ColorJitter brightness = contrast = saturation strength, hue 0     |
|                     | (0.4, or 0: no jitter)                                             |
| input.eval_resize   | evaluation: short side resized to this (256) ...                   |
| input.eval_size     | ... then the central eval_size x eval_size crop (224)              |
| input.mean, .std    | per-channel normalisation of [0, 1] RGB after augmentation; the    |
|                     | numbers `normalize` names ("imagenet": IMAGENET_MEAN / _STD)      |
| input.worker_count  | grain worker processes decoding and augmenting (0: in-process)     |
| input.prefetch      | batches prefetched per worker and to the device                    |
| input.draft         | decode JPEGs at reduced size (PIL draft mode: DCT scaling to the    |
|                     | smallest size >= what the crop needs)                              |

Epoch numbers are 0-based epochs of the protocol's full-length run (a milestone 160 means
the rate drops from the first step of epoch 160, which is what the reference code's
`if epoch > 160` on its 1-based counter does).
"""

from __future__ import annotations

import ast
import warnings
from typing import Any, Mapping

import ml_collections

from ltjax import methods as ltmethods
from ltjax.methods import protocols

Nested = dict[str, Any]

# The seed papers' methods and the two baselines: what the quickstart compares.
SEED_METHODS = ("erm", "mixup", "lobm", "lobm_star", "dbn_mix", "sbn_mix", "cp_mix",
                "otmix", "mamix_drw", "remix_drw", "mixup_drw")

# Methods trained on LOBM's per-dataset recipe (its Table 1 rows): LOBM, LOBM* and the
# class-balanced sampling baselines; the deferred ones switch at its first decay.
LOBM_TABLE = ("lobm", "lobm_star", "cb_sampling", "drs")
LOBM_DEFERRED = ("lobm_star", "drs")

# Smoke-test variant (`quick=True`): short run, small model, evaluation every epoch.
QUICK: Nested = {"num_epochs": 4, "batch_size": 64, "model": {"name": "small_cnn"},
                 "finetune": {"batch_size": 0}, "eval_every": 1, "checkpoint_every": 1}

# Run settings every config has (evaluation, logging, devices); the training protocol
# comes from `ltjax.methods.protocols`.
RUN_DEFAULTS: Nested = {
    "seed": 0,
    "model": {"dtype": "float32"},  # "bfloat16": mixed precision (ltjax.models.precision)
    "eval_every": 10,
    "checkpoint_every": 10,
    # Streamed runs: also save every this many optimiser steps inside an epoch (0: only
    # after epochs); a run killed mid-epoch resumes at its last saved step.
    "checkpoint_every_steps": 0,
    "keep_checkpoints": 2,
    "eval_batch_size": 1024,
    "progress": True,
    "loop": "auto",  # epoch as one lax.scan ("scan"), per-step calls ("steps"; XLA:CPU)
    "plots": True,
    "analysis_draws": 20,
    "num_devices": 0,  # 0: every local device
    "jax_distributed": False,
    "methods": ",".join(SEED_METHODS),
    "seeds": "0",
    "input": {"pipeline": "device"},  # "stream": see STREAM_INPUT
}

# ImageNet's per-channel RGB mean / std (torchvision; Kang et al. 2020, classifier-balancing
# data/dataloader.py `RGB_statistics['default']`; the OTmix code, imagenet_train.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The ImageNet-scale input of the large configs (module docstring, `input` table). The
# training transform of Kang et al. 2020 (classifier-balancing data/dataloader.py, ImageNet-LT
# and Places-LT), which LOBM (sec. 4.2, "following [11]") and the OTmix code
# (imagenet_train.py) follow (DBN-Mix and CP-Mix state their own: "resize_random"; each
# dataset file says which method differs): RandomResizedCrop(224) with torchvision's
# default scale (0.08, 1) and ratio (3/4, 4/3), horizontal flip, ColorJitter(0.4, 0.4, 0.4,
# hue 0); evaluation Resize(256) + CenterCrop(224); ImageNet mean / std.
STREAM_INPUT: Nested = {
    "pipeline": "stream",
    "crop": "random_resized",
    "train_size": 224,
    "scale": (0.08, 1.0),
    "ratio": (3 / 4, 4 / 3),
    "flip": True,
    "jitter": 0.4,
    "eval_resize": 256,
    "eval_size": 224,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "worker_count": 8,
    "prefetch": 2,
    "draft": True,
}
# What a large config puts over the CIFAR protocol underneath: the streamed input, and no
# on-device CIFAR crop / flip (augmentation happens in the input pipeline).
STREAM_BASE: Nested = {"input": STREAM_INPUT, "normalize": "imagenet",
                       "augment": {"pad": 0, "flip": False}}
# `quick=True` on a large config: small crops for a smoke run on small images.
STREAM_QUICK: Nested = {"input": {"train_size": 64, "eval_resize": 73, "eval_size": 64}}

# Method groups the dataset files state their changes for.
MIXUP_FAMILY = ("mixup", "mixup_drw", "remix", "remix_drw", "mamix", "mamix_drw", "smote_mix",
                "smote_mix_drw", "neighbor_mix", "neighbor_mix_drw")
OTMIX_FAMILY = ("otmix", "otmix_drw", "otmix_balms", "otmix_ldam", "otmix_saliency")
DRW_METHODS = protocols.methods_with("drw_epoch")
RIDE_FAMILY = ("ride", "ride_ea", "ride_cmo", "otmix_ride", "cp_mix_ride")


def ride_large(*, batch_size: int, lr: float, reweight_factor: float, top_choices: int,
               reproduces: str) -> tuple[tuple[tuple[str, ...], Nested], ...]:
  """RIDE's ResNet-50 recipe on a large dataset, for `per_method` (RIDE's released configs
  config_imagenet_lt_resnet50_ride.json / config_iNaturalist_resnet50_ride.json and their
  _ea twins): 100 epochs, SGD Nesterov momentum 0.9, wd 2e-4, 5-epoch warm-up, x0.1 at 60
  and x0.01 at 80, DRW and class temperatures from 80 (`reweight_epoch`); the routing stage
  (ride_ea) 5 epochs at batch 512, lr 0.01 with per-epoch cosine, wd 5e-4, k=top_choices.
  The combinations keep their mixing method's CIFAR hyperparameters."""
  recipe = {"num_epochs": 100, "batch_size": batch_size,
            "optim": {"lr": lr, "weight_decay": 2e-4, "nesterov": True},
            "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": (60, 80),
                         "factors": (0.1, 0.01)},
            "recipe": {"diversity_epoch": 80, "diversity_reweight": reweight_factor},
            "reproduces": reproduces}
  return ((RIDE_FAMILY, recipe),
          (tuple(m for m in RIDE_FAMILY if m in DRW_METHODS), {"recipe": {"drw_epoch": 80}}),
          (("cp_mix_ride",), {"recipe": {"stage2_epoch": 66}}),
          (("ride_ea",), {"model": {"top_choices": top_choices},
                          "finetune": {"num_epochs": 5},
                          "reproduces": "nothing in the seed papers: RIDE's released "
                                        "expert-assignment configuration"}))


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,key=value` against `spec` (name -> default), big_vision style.

  Values take the type of their default (bool accepts True/False/1/0/yes/no); a key
  without `=` is a bool flag set to True; a lone value without `=` sets the first key of
  `spec`. Unknown keys raise ValueError listing the valid ones.

  Args:
    arg: the text after the colon of `--config=file.py:ARG` (None or "" for defaults).
    **spec: argument names and their defaults.

  Returns:
    A ConfigDict with one field per key of `spec`.
  """
  values = dict(spec)
  for item in filter(None, (a.strip() for a in (arg or "").split(","))):
    if "=" in item:
      key, raw = (s.strip() for s in item.split("=", 1))
    elif item in spec:
      key, raw = item, "True"
    else:
      key, raw = next(iter(spec)), item
    if key not in spec:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; valid arguments: "
                       f"{', '.join(spec)}.")
    values[key] = _convert(raw, spec[key], key)
  return ml_collections.ConfigDict(values)


def _convert(raw: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    lowered = raw.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
      raise ValueError(f"Config argument {key} must be a bool, got {raw!r}.")
    return lowered in ("true", "1", "yes")
  if isinstance(default, (int, float)):
    try:
      value = float(raw) if isinstance(default, float) else int(raw)
    except ValueError:
      raise ValueError(f"Config argument {key} must be {type(default).__name__}, got "
                       f"{raw!r}.") from None
    return value
  if default is None:
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  return raw


class ScheduleCollapseWarning(UserWarning):
  """Distinct schedule epochs merged by rescaling to a short run."""


# Epoch-valued recipe fields that mark a change of training (DRW, deferral, stage 2).
_SWITCHES = tuple(p for p in protocols.EPOCH_FIELDS if p.startswith("recipe."))


def _epochs_of(config: Mapping[str, Any]) -> dict[str, list[int]]:
  """Epoch-valued fields (milestones and recipe switches) -> their epochs."""
  out = {}
  schedule = config.get("schedule", {})
  if schedule.get("milestones"):
    out["schedule.milestones"] = [int(m) for m in schedule["milestones"]]
  for path in _SWITCHES:
    value = config.get("recipe", {}).get(path.split(".")[1])
    if value is not None:
      out[path] = [int(value)]
  return out


def _scaled(epoch: int, num_epochs: int, of: int) -> int:
  return num_epochs * epoch // of


def collapses(config: Mapping[str, Any], num_epochs: int) -> tuple[list[str], list[str]]:
  """What rescaling `config` to `num_epochs` would collapse: (fatal, merged) descriptions.

  Fatal: an epoch > 0 that lands on epoch 0 (a milestone: the whole run at the decayed
  rate; DRW / deferral / stage 2: the method from its first step). Merged: two distinct
  epochs (milestones, or a milestone and a switch) that land on one epoch.
  """
  of = int(config["num_epochs"])
  fields = _epochs_of(config)
  fatal = [f"{path} {e} (of {of}) -> epoch 0" for path, epochs in fields.items()
           for e in epochs if e > 0 and _scaled(e, num_epochs, of) == 0]
  landing: dict[int, set[tuple[str, int]]] = {}
  for path, epochs in fields.items():
    for e in epochs:
      landing.setdefault(_scaled(e, num_epochs, of), set()).add((path, e))
  merged = [f"{' and '.join(f'{p} {e}' for p, e in sorted(group))} (of {of}) -> epoch {at}"
            for at, group in sorted(landing.items())
            if len({e for _, e in group}) > 1 and at > 0]
  return fatal, merged


def rescaled(config: Mapping[str, Any], num_epochs: int) -> Nested:
  """`protocols.rescale(config, num_epochs)`, refusing a collapsed schedule (`collapses`).

  Raises:
    ValueError: num_epochs < 1, or a fatal collapse (names the fields and the shortest run
      length that keeps every epoch after epoch 0).
  Warns:
    ScheduleCollapseWarning: distinct epochs merged on one epoch.
  """
  if num_epochs < 1:
    raise ValueError(f"epochs must be >= 1; omit it for the protocol's length (got "
                     f"{num_epochs}).")
  fatal, merged = collapses(config, num_epochs)
  if fatal:
    of = int(config["num_epochs"])
    shortest = max(-(-of // e) for epochs in _epochs_of(config).values() for e in epochs if e)
    raise ValueError(f"epochs={num_epochs} collapses the {of}-epoch schedule: "
                     f"{'; '.join(fatal)}; use epochs >= {shortest}.")
  for text in merged:
    warnings.warn(f"epochs={num_epochs} merges {text}.", ScheduleCollapseWarning,
                  stacklevel=2)
  return protocols.rescale(config, num_epochs)


def apply(config: Mapping[str, Any], update: Mapping[str, Any] | None) -> Nested:
  """`update` merged over `config`; when it sets another run length, `config` is first
  rescaled to it, so the update's epoch numbers and the rest agree."""
  if not update:
    return dict(config)
  if update.get("num_epochs", config["num_epochs"]) != config["num_epochs"]:
    config = protocols.rescale(config, update["num_epochs"])
  return protocols.merge(config, update)


def make_config(arg: str | None, *, dataset: Nested, base: Nested | None = None,
                method_overrides: Mapping[str, Nested] | None = None,
                code_overrides: Mapping[str, Nested] | None = None,
                quick: Nested | None = None, default_method: str = "erm",
                default_rho: float = 100.0, default_epochs: int = 0
                ) -> ml_collections.ConfigDict:
  """Builds the resolved config of one run from the method's protocol and a dataset's changes.

  Resolution order: the method's CIFAR-LT protocol (`ltjax.methods.get_protocol(method,
  protocol)`) <- `base` (the dataset's protocol) <- method_overrides[method] <-
  code_overrides[method] (protocol=code only) <- RUN_DEFAULTS under all of them <-
  `epochs=` rescaling <- `quick`. Each step that sets another num_epochs first rescales
  what it merges onto (`apply`).

  Args:
    arg: the config argument string (see module docstring).
    dataset: the dataset section: name plus `ltjax.data.get_dataset` keyword arguments
      (profile, rho, seed are filled from the argument).
    base: the dataset's training protocol (model, batch size, optimiser, schedule, ...).
    method_overrides: per-method changes on this dataset (e.g. DBN-Mix eta=7 on CIFAR-100).
    code_overrides: per-method changes on this dataset under protocol=code only.
    quick: the dataset's smoke variant, merged over QUICK.
    default_method: method when the argument names none.
    default_rho: imbalance ratio when the argument names none.
    default_epochs: run length when the argument names none (0: the protocol's length).
      The dataset section gets a `data_dir` placeholder (str) unless `dataset` sets one.

  Returns:
    The ConfigDict (fields: dataset, method, protocol, reproduces, source, recipe, model,
    num_epochs, batch_size, drop_last, optim, schedule, augment, normalize, finetune, seed,
    eval_every, checkpoint_every, ... and `arg`, the parsed argument string).

  Raises:
    ValueError: unknown argument, method or protocol; epochs < 1; a rescaled schedule that
      collapses (`rescaled`).
  """
  args = parse_arg(arg, method=default_method, protocol="paper", rho=float(default_rho),
                   profile="exp", seed=0, epochs=None, quick=False)
  if args.epochs is not None and (not isinstance(args.epochs, int) or args.epochs < 1):
    raise ValueError(f"epochs must be >= 1; omit it for the protocol's length (got "
                     f"{args.epochs!r}).")
  config = protocols.get_protocol(args.method, args.protocol)
  for update in (base, (method_overrides or {}).get(args.method),
                 (code_overrides or {}).get(args.method) if args.protocol == "code" else None):
    config = apply(config, update)
  config = protocols.merge(RUN_DEFAULTS, config)
  config.update(method=args.method, protocol=args.protocol, seed=args.seed,
                dataset=protocols.merge(dataset, {"profile": args.profile, "rho": args.rho,
                                                  "seed": args.seed}))
  if args.quick:
    quick_cfg = protocols.merge(QUICK, quick or {})
    config = rescaled(config, args.epochs or quick_cfg["num_epochs"])
    config = protocols.merge(config, {k: v for k, v in quick_cfg.items() if k != "num_epochs"})
  elif args.epochs or default_epochs:
    config = rescaled(config, args.epochs or default_epochs)
  config["dataset"].setdefault("data_dir", ml_collections.config_dict.placeholder(str))
  config["recipe"] = resolved_recipe(args.method, args.protocol, config["num_epochs"],
                                     config.get("recipe", {}))
  config["arg"] = arg or ""
  return ml_collections.ConfigDict(config)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}


def resolved_recipe(method: str, protocol: str, num_epochs: int,
                    recipe: Mapping[str, Any]) -> dict[str, Any]:
  """Every hyperparameter of the method's recipe and criterion, resolved for this run.

  The config lists them all, so each is recorded in config.json and can be set with
  `--config.recipe.NAME=VALUE` (e.g. `--config.recipe.label_form=soft`). A field whose
  value is None becomes a typed `ml_collections` placeholder, which flags can set.
  """
  rcp = ltmethods.get_recipe(method, num_epochs=num_epochs, protocol=protocol, **recipe)
  out = {}
  for name, (value, annotation) in ltmethods.hyperparameters(rcp).items():
    if value is None:
      value = ml_collections.config_dict.placeholder(
          _TYPES[annotation.split("[")[0].split("|")[0].strip()])
    out[name] = value
  return out


def with_stream_placeholders(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` plus the typed (str) placeholders of a large config, None until a flag sets them.

  dataset.image_root: the folder the split files' relative paths start from (None: the split
  file folder, `dataset.data_dir`). model.pretrained: pretrained weights to start from
  (`ltjax.models.pretrained.load_pretrained`; None: random initialisation).
  """
  config.dataset.image_root = ml_collections.config_dict.placeholder(str)
  config.model.pretrained = ml_collections.config_dict.placeholder(str)
  return config


def table_rows(table: str, rows: Mapping[str, str]) -> tuple[tuple[tuple[str, ...], Nested],
                                                              ...]:
  """`per_method` rules setting `reproduces` to "<table>, <row>" for each method's row."""
  return tuple(((name,), {"reproduces": f"{table}, {row}"}) for name, row in rows.items())


def per_method(*rules: tuple[tuple[str, ...], Nested]) -> dict[str, Nested]:
  """{method: update} from `(methods, update)` rules, later rules merged over earlier ones."""
  table: dict[str, Nested] = {}
  for methods, update in rules:
    for method in methods:
      table[method] = protocols.merge(table.get(method, {}), update)
  return table
