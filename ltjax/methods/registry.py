"""Method registry: `get_recipe(name, num_epochs=...)` builds a recipe with its paper defaults.

Epoch-dependent defaults follow each paper's schedule, rescaled to `num_epochs` (floor):

| names                          | epoch default                        | source                    |
|--------------------------------|--------------------------------------|---------------------------|
| drw, ldam_drw, *_drw (mixup family) | drw_epoch = 160 of 200          | Cao et al. 2019; MAMix    |
| otmix_drw, otmix_ldam          | drw_epoch = 160 of 240               | OTmix sec. 4              |
| lobm_star                      | defer_epoch = 160 of 200 (1st decay) | LOBM sec. 4.1             |
| cp_mix                         | stage2_epoch = 200 of 300            | CP-Mix Table 6            |

Overrides: any field of the recipe (e.g. `alpha=0.2`) or of its `Criterion` (`kind`,
`drw_epoch`, `beta`, `max_margin`, `scale`, `focal_gamma`); anything else is a ValueError.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ltjax import recipe
from ltjax.models import dual_branch
from ltjax.methods import bilateral, common, cp_mix, criteria, erm, lobm, mixup, otmix

_Spec = tuple[type, Callable[[int], dict[str, Any]]]


def _criterion(kind: str = "ce", drw: tuple[int, int] | None = None,
               reduction: str = "normalized") -> Callable[[int], criteria.Criterion]:
  """A criterion factory; `drw=(at, of)` starts DRW at epoch `at` of an `of`-epoch run.

  `reduction` is the reference's reduction of the DRW-weighted loss: "normalized"
  (PyTorch's weighted mean; LDAM-DRW, OTmix code) or "mean" (imbalanced-DL).
  """
  def make(num_epochs: int) -> criteria.Criterion:
    drw_epoch = None if drw is None else common.scaled_epoch(num_epochs, *drw)
    return criteria.Criterion(kind, drw_epoch=drw_epoch, reduction=reduction)
  return make


def _spec(cls: type, criterion=None, **fixed: Any) -> _Spec:
  """Registry entry: recipe class and `num_epochs -> default kwargs`."""
  def defaults(num_epochs: int) -> dict[str, Any]:
    kwargs = dict(fixed)
    for key, value in fixed.items():
      if callable(value):
        kwargs[key] = value(num_epochs)
    if criterion is not None:
      kwargs["criterion"] = criterion(num_epochs)
    return kwargs
  return cls, defaults


_DRW_200 = (160, 200)
_DRW_240 = (160, 240)
_IMBALANCED_DL_DRW = _criterion(drw=_DRW_200, reduction="mean")

_REGISTRY: dict[str, _Spec] = {
    "erm": _spec(erm.ERM, _criterion()),
    "drw": _spec(erm.ERM, _criterion(drw=_DRW_200)),
    "ldam_drw": _spec(erm.ERM, _criterion("ldam", _DRW_200)),
    "balanced_softmax": _spec(erm.ERM, _criterion("balanced_softmax")),
    "cmo": _spec(otmix.OTmix, _criterion(), ot=False),
    "mixup": _spec(mixup.Mixup, _criterion()),
    "mixup_drw": _spec(mixup.Mixup, _IMBALANCED_DL_DRW),
    "remix": _spec(mixup.Mixup, _criterion(), label_rule="remix"),
    "remix_drw": _spec(mixup.Mixup, _IMBALANCED_DL_DRW, label_rule="remix"),
    "mamix": _spec(mixup.Mixup, _criterion(), label_rule="mamix"),
    "mamix_drw": _spec(mixup.Mixup, _IMBALANCED_DL_DRW, label_rule="mamix"),
    "smote_mix": _spec(mixup.Mixup, _criterion(), pairing="smote"),
    "smote_mix_drw": _spec(mixup.Mixup, _IMBALANCED_DL_DRW, pairing="smote"),
    "neighbor_mix": _spec(mixup.Mixup, _criterion(), pairing="neighbor"),
    "neighbor_mix_drw": _spec(mixup.Mixup, _IMBALANCED_DL_DRW, pairing="neighbor"),
    "lobm": _spec(lobm.LOBM, _criterion()),
    "lobm_star": _spec(lobm.LOBM, _criterion(),
                       defer_epoch=lambda n: common.scaled_epoch(n, 160, 200)),
    "sbn_mix": _spec(bilateral.SBNMix),
    "dbn_mix": _spec(bilateral.DBNMix),
    "cp_mix": _spec(cp_mix.CPMix, stage2_epoch=lambda n: common.scaled_epoch(n, 200, 300)),
    "otmix": _spec(otmix.OTmix, _criterion()),
    "otmix_drw": _spec(otmix.OTmix, _criterion(drw=_DRW_240)),
    "otmix_balms": _spec(otmix.OTmix, _criterion("balanced_softmax")),
    "otmix_ldam": _spec(otmix.OTmix, _criterion("ldam", _DRW_240)),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)
_CRITERION_FIELDS = tuple(f.name for f in dataclasses.fields(criteria.Criterion))


def _field_names(cls: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("name", "branches"))


def get_recipe(name: str, *, num_epochs: int, **overrides: Any) -> recipe.Recipe:
  """The recipe `name` with its paper defaults for a `num_epochs`-epoch run.

  Args:
    name: one of `METHODS`.
    num_epochs: length of the run (epoch-dependent defaults are rescaled to it).
    **overrides: recipe fields, or Criterion fields for recipes with a criterion.

  Returns:
    A frozen Recipe whose `name` is `name`.

  Raises:
    ValueError: unknown name, unknown hyperparameter or invalid value.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; valid methods: {', '.join(METHODS)}.")
  cls, defaults = _REGISTRY[name]
  kwargs = defaults(num_epochs)
  fields = _field_names(cls)
  has_criterion = "criterion" in fields
  valid = fields + (_CRITERION_FIELDS if has_criterion else ())
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f"Unknown hyperparameters {unknown} for method {name!r}; valid: "
                     f"{', '.join(valid)}.")
  criterion_overrides = {k: v for k, v in overrides.items() if k in _CRITERION_FIELDS
                         and k not in fields}
  kwargs.update({k: v for k, v in overrides.items() if k not in criterion_overrides})
  if criterion_overrides:
    kwargs["criterion"] = dataclasses.replace(kwargs["criterion"], **criterion_overrides)
  return cls(name=name, **kwargs)


def _output_keys(model: Any, sample_input: Any) -> frozenset[str]:
  """Keys of the model's output dict, from an abstract evaluation (no FLOPs)."""
  def run():
    outputs, _ = model.init_with_output(jax.random.key(0), sample_input, train=False)
    return outputs
  return frozenset(jax.eval_shape(run))


def check_compatible(recipe_: recipe.Recipe, model: Any, sample_input: Any = None) -> None:
  """Raises ValueError when `model` cannot train with `recipe_`.

  Checks: a dual-branch recipe (DBN-Mix, `branches=2`) needs a dual-branch model (outputs
  "logits_c" and "logits_r"); pairing in feature space (OTmix, SMOTE-/Neighbor-Mix) needs
  a model that returns "features"; LDAM (`head="normalized"`) needs the normalised head.
  With `sample_input` (a (B, H, W, C) batch) the outputs are read from an abstract
  evaluation of the model; without it, a model is dual-branch iff it is a
  `DualBranchNet` and exposes features (every ltjax model does).

  Args:
    recipe_: a Recipe.
    model: a Flax module with `__call__(x, train)` and a `head` attribute.
    sample_input: optional input batch of the right shape (values unused).
  """
  if sample_input is None:
    dual = isinstance(model, dual_branch.DualBranchNet)
    keys = {"logits", "features"} | ({"logits_c", "logits_r"} if dual else set())
  else:
    keys = _output_keys(model, jnp.asarray(sample_input, jnp.float32))
  if recipe_.branches == 2 and not {"logits_c", "logits_r"} <= keys:
    raise ValueError(f"{recipe_.name} trains two branches (x_rebalance) and needs a "
                     f"dual-branch model (e.g. dual_resnet32), got "
                     f"{type(model).__name__}.")
  if getattr(recipe_, "needs_features", False) and "features" not in keys:
    raise ValueError(f"{recipe_.name} pairs samples in feature space and needs a model "
                     f"that returns 'features'; {type(model).__name__} returns "
                     f"{sorted(keys)} (SMOTE-/Neighbor-Mix: pairing_space='pixels').")
  head = getattr(model, "head", None)
  if recipe_.head == "normalized" and head != "normalized":
    raise ValueError(f"{recipe_.name} uses the LDAM loss, which needs a normalised "
                     f"classifier head (head='normalized'), got head={head!r}.")
