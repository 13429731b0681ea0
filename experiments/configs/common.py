"""Shared pieces of the experiment configs: the argument parser and the method recipes.

Every dataset file (`cifar10_lt.py`, `digits_lt.py`, ...) defines `get_config(arg=None)`,
where `arg` is the text after the colon of `--config=experiments/configs/X.py:ARG`, a
comma-separated list of `key=value` (big_vision's `parse_arg` pattern):

    method=dbn_mix,rho=100,quick=True,seed=0,epochs=50

| key     | meaning                                                                   |
|---------|---------------------------------------------------------------------------|
| method  | registry name of the method (`ltjax.methods.METHODS`)                     |
| rho     | imbalance ratio n_max / n_min of the training set                         |
| profile | "exp" or "step" long-tail profile                                         |
| seed    | seed of the long-tailed subset *and* of training (one seed per run)       |
| epochs  | run length; every epoch-valued field of the recipe (warm-up, milestones,  |
|         | DRW / deferral / stage-2 epochs) is rescaled from the paper's length      |
| quick   | smoke-test variant: few epochs, small model, frequent evaluation          |

The per-method training recipes of the papers live here once (`METHOD_RECIPES`, CIFAR
protocol); a dataset file only states what differs on that dataset (`make_config`'s
`base` and `method_overrides`). Command-line `--config.X=Y` flags are applied after
`get_config`, on the resolved values.

Epoch numbers in the tables are 0-based epochs of the paper's full-length run (a
milestone 160 means the rate drops from the first step of epoch 160, which is what the
reference code's `if epoch > 160` on its 1-based counter does).
"""

from __future__ import annotations

import ast
import copy
from typing import Any, Callable, Mapping

import ml_collections

Nested = dict[str, Any]

# CIFAR-LT protocol of LDAM-DRW / ImbalancedDL / MAMix / LOBM (Cao et al. 2019; MAMix
# paper appendix; LOBM section 5): ResNet-32, batch 128, SGD momentum 0.9, wd 2e-4,
# lr 0.1, 5-epoch linear warm-up, x0.01 at 160, x1e-4 at 180, 200 epochs.
CIFAR_PROTOCOL: Nested = {
    "num_epochs": 200,
    "batch_size": 128,
    "model": {"name": "resnet32"},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 2e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": (160, 180),
                 "factors": (0.01, 1e-4)},
}

# Method recipes on CIFAR-LT (SPEC section 4), as differences from CIFAR_PROTOCOL.
# "recipe" holds the method's own hyperparameters (ltjax.methods.get_recipe overrides);
# "finetune" the CP-Mix classifier phase (backbone frozen, class-balanced batches).
_DRW = {"drw_epoch": 160}
_DBN = {"optim": {"nesterov": True},
        "schedule": {"milestones": (160, 180), "factors": (0.1, 0.01)},
        "recipe": {"alpha": 1.0, "eta": 3.0, "eps": 0.6}}
_OTMIX = {"num_epochs": 240,
          "schedule": {"milestones": (100, 160, 200), "factors": (0.1, 0.01, 1e-4)},
          "recipe": {"alpha": 4.0}}
METHOD_RECIPES: dict[str, Nested] = {
    "erm": {},
    "drw": {"recipe": dict(_DRW)},
    "ldam_drw": {"recipe": dict(_DRW)},
    "balanced_softmax": {},
    "mixup": {"recipe": {"alpha": 1.0}},
    "mixup_drw": {"recipe": {"alpha": 1.0, **_DRW}},
    "remix_drw": {"recipe": {"alpha": 1.0, "kappa": 3.0, "tau": 0.5, **_DRW}},
    "mamix_drw": {"recipe": {"alpha": 1.0, "omega": 0.25, **_DRW}},
    # LOBM: deferred version plain mixup until the first lr decay (LOBM section 4.3).
    "lobm": {"recipe": {"alpha": 1.0}},
    "lobm_star": {"recipe": {"alpha": 1.0, "defer_epoch": 160}},
    # DBN-Mix (authors' code): nesterov, x0.1 at 160 and 180; eta=3, eps=0.6 (CIFAR-10).
    "dbn_mix": _DBN,
    "sbn_mix": _DBN,
    # CP-Mix appendix B.3: 300 epochs (stage 2 = last 100), warm-up 10, x0.01 at 260,
    # x1e-4 at 280; alpha=1.5, t=0.5, g_cp=g_mix=2.5; fine-tune 30 epochs, wd 0.
    "cp_mix": {"num_epochs": 300,
               "schedule": {"warmup_epochs": 10, "milestones": (260, 280),
                            "factors": (0.01, 1e-4)},
               "recipe": {"alpha": 1.5, "t": 0.5, "gamma_cp": 2.5, "gamma_mix": 2.5,
                          "stage2_epoch": 200},
               "finetune": {"num_epochs": 30, "lr": 0.1, "weight_decay": 0.0}},
    # OTmix section 5: 240 epochs, x0.1 at 100, x0.01 at 160, x1e-4 at 200; alpha=4.
    "otmix": _OTMIX,
    "otmix_drw": {**_OTMIX, "recipe": {"alpha": 4.0, "drw_epoch": 160}},
    "otmix_balms": _OTMIX,
    "cmo": _OTMIX,
}

# The seed papers' methods and the two baselines: what the quickstart compares.
SEED_METHODS = ("erm", "mixup", "lobm", "lobm_star", "dbn_mix", "sbn_mix", "cp_mix",
                "otmix", "mamix_drw", "remix_drw", "mixup_drw")

# Paths of the epoch-valued fields rescaled by `epochs=`.
EPOCH_FIELDS = ("schedule.warmup_epochs", "schedule.milestones", "recipe.drw_epoch",
                "recipe.defer_epoch", "recipe.stage2_epoch")

# Smoke-test variant (`quick=True`): short run, small model, evaluation every epoch.
QUICK: Nested = {"num_epochs": 4, "batch_size": 64, "model": {"name": "small_cnn"},
                 "eval_every": 1, "checkpoint_every": 1}

# Run settings every config has (data loading, logging, devices).
RUN_DEFAULTS: Nested = {
    "seed": 0,
    "eval_every": 10,
    "checkpoint_every": 10,
    "keep_checkpoints": 2,
    "eval_batch_size": 1024,
    "progress": True,
    "loop": "auto",  # epoch as one lax.scan ("scan"), per-step calls ("steps"; XLA:CPU)
    "plots": True,
    "analysis_draws": 20,
    "num_devices": 0,  # 0: every local device
    "jax_distributed": False,
    "augment": {"pad": 4, "flip": True},  # zero-pad + random crop, horizontal flip
    "normalize": "cifar",  # "cifar" constants or "dataset" (training-set mean / std)
    "finetune": {"num_epochs": 0, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    "recipe": {},
    "methods": ",".join(SEED_METHODS),
    "seeds": "0",
}


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


def merge(base: Nested, update: Mapping[str, Any]) -> Nested:
  """Deep merge: nested dicts are merged key by key, other values replaced."""
  out = copy.deepcopy(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = merge(out[key], value)
    else:
      out[key] = copy.deepcopy(value)
  return out


def _scale(value: Any, num_epochs: int, of: int) -> Any:
  if isinstance(value, (tuple, list)):
    return tuple(_scale(v, num_epochs, of) for v in value)
  return num_epochs * int(value) // of


def rescale_epochs(config: Nested, num_epochs: int) -> Nested:
  """Rescales the epoch-valued fields (EPOCH_FIELDS) from config's length to `num_epochs`.

  epoch e of an N-epoch recipe becomes floor(num_epochs * e / N) (DRW from 160 of 200 is
  epoch 80 of a 100-epoch run), the rule of `ltjax.methods.common.scaled_epoch`.
  Milestones that collide after rounding keep the last factor. A fine-tuning phase
  (CP-Mix) is rescaled too but keeps at least one epoch.
  """
  of = int(config["num_epochs"])
  if num_epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {num_epochs}.")
  out = copy.deepcopy(config)
  out["num_epochs"] = num_epochs
  for path in EPOCH_FIELDS:
    section, field = path.split(".")
    if field in out.get(section, {}):
      out[section][field] = _scale(out[section][field], num_epochs, of)
  schedule = out["schedule"]
  if "milestones" in schedule:
    kept = {m: f for m, f in zip(schedule["milestones"], schedule["factors"])}
    schedule["milestones"] = tuple(kept)
    schedule["factors"] = tuple(kept.values())
  finetune = out.get("finetune", {})
  if finetune.get("num_epochs", 0) > 0:
    finetune["num_epochs"] = max(1, _scale(finetune["num_epochs"], num_epochs, of))
  return out


def make_config(arg: str | None, *, dataset: Nested, base: Nested | None = None,
                method_overrides: Mapping[str, Nested] | None = None,
                quick: Nested | None = None, default_method: str = "erm",
                default_rho: float = 100.0, default_epochs: int = 0,
                customize: Callable[[Nested, ml_collections.ConfigDict], Nested] | None = None
                ) -> ml_collections.ConfigDict:
  """Builds the resolved config of one run from the shared tables and a dataset's changes.

  Resolution order: RUN_DEFAULTS <- CIFAR_PROTOCOL <- METHOD_RECIPES[method] (the
  method's CIFAR recipe) <- `base` (the dataset's protocol; when it sets num_epochs the
  CIFAR recipe's epoch fields are first rescaled to that length) <-
  method_overrides[method] (in the dataset's epochs) <- `epochs=` rescaling <- `quick`.

  Args:
    arg: the config argument string (see module docstring).
    dataset: the dataset section: name plus `ltjax.data.get_dataset` keyword arguments
      (profile, rho, seed are filled from the argument).
    base: the dataset's training protocol (model, batch size, optimiser, schedule, ...).
    method_overrides: per-method changes on this dataset (e.g. DBN-Mix eta=7 on CIFAR-100).
    quick: the dataset's smoke variant, merged over QUICK.
    default_method: method when the argument names none.
    default_rho: imbalance ratio when the argument names none.
    default_epochs: run length when the argument names none (0: the paper's length).
    customize: optional `fn(config_dict, args) -> config_dict` for dataset-specific logic.

  Returns:
    The ConfigDict (fields: dataset, method, recipe, model, num_epochs, batch_size, optim,
    schedule, finetune, seed, eval_every, checkpoint_every, ... and `arg`, the parsed
    argument string).
  """
  args = parse_arg(arg, method=default_method, rho=float(default_rho), profile="exp",
                   seed=0, epochs=0, quick=False)
  method = args.method
  config = merge(merge(RUN_DEFAULTS, CIFAR_PROTOCOL), METHOD_RECIPES.get(method, {}))
  if base and "num_epochs" in base:
    config = rescale_epochs(config, base["num_epochs"])
  config = merge(config, base or {})
  config = merge(config, (method_overrides or {}).get(method, {}))
  config["method"] = method
  config["seed"] = args.seed
  config["dataset"] = merge(dataset, {"profile": args.profile, "rho": args.rho,
                                      "seed": args.seed})
  if args.quick:
    quick_cfg = merge(QUICK, quick or {})
    config = rescale_epochs(config, args.epochs or quick_cfg["num_epochs"])
    config = merge(config, {k: v for k, v in quick_cfg.items() if k != "num_epochs"})
  elif args.epochs or default_epochs:
    config = rescale_epochs(config, args.epochs or default_epochs)
  if customize is not None:
    config = customize(config, args)
  config["arg"] = arg or ""
  return ml_collections.ConfigDict(config)
