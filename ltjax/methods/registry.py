"""Method registry: `get_recipe(name, num_epochs=...)` builds a recipe with its paper defaults.

A registry entry is what makes a method that method: its recipe class and the structural
choices that never change with the protocol (criterion kind, label rule, pairing, OT or
random pairing). Every hyperparameter default, epoch-valued ones included, comes from the
method's protocol (`ltjax.methods.protocols`, "paper" unless asked otherwise), moved to
`num_epochs` by `protocols.rescale`: e.g. DRW from epoch 160 of 200 (mixup_drw) is epoch 80
of a 100-epoch run, from 160 of 240 (otmix_ldam) epoch 80 of a 120-epoch run.

Overrides: any field of the recipe (e.g. `alpha=0.2`), of its `Criterion` (`kind`,
`drw_epoch`, `beta`, `max_margin`, `scale`, `focal_gamma`, `reduction`, `label_form`) or of
its RIDE hyperparameters (`ltjax.methods.ride.RIDE`: `multi_expert`, `diversity_factor`,
`diversity_temperature`, `diversity_reweight`, `base_loss_factor`, `diversity_epoch`);
anything else is a ValueError. Every registered name must have a protocol: the module
fails at import otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from ltjax import recipe
from ltjax.models import precision
from ltjax.models import registry as model_registry
from ltjax.methods import (bilateral, cp_mix, criteria, erm, lobm, manifold, mixup, otmix,
                           protocols, ride)

# name -> (recipe class, structural kwargs: recipe or Criterion fields).
_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {
    "erm": (erm.ERM, {}),
    "drw": (erm.ERM, {}),
    "ldam_drw": (erm.ERM, {"kind": "ldam"}),
    "balanced_softmax": (erm.ERM, {"kind": "balanced_softmax"}),
    "cb_sampling": (erm.ERM, {"sampler": "class_balanced"}),
    "drs": (erm.ERM, {"sampler": "class_balanced"}),  # deferred: defer_epoch
    "cmo": (otmix.OTmix, {"ot": False}),
    "mixup": (mixup.Mixup, {}),
    "mixup_drw": (mixup.Mixup, {}),
    "remix": (mixup.Mixup, {"label_rule": "remix"}),
    "remix_drw": (mixup.Mixup, {"label_rule": "remix"}),
    "mamix": (mixup.Mixup, {"label_rule": "mamix"}),
    "mamix_drw": (mixup.Mixup, {"label_rule": "mamix"}),
    "smote_mix": (mixup.Mixup, {"pairing": "smote"}),
    "smote_mix_drw": (mixup.Mixup, {"pairing": "smote"}),
    "neighbor_mix": (mixup.Mixup, {"pairing": "neighbor"}),
    "neighbor_mix_drw": (mixup.Mixup, {"pairing": "neighbor"}),
    "manifold_mixup": (manifold.ManifoldMixup, {}),
    "lobm": (lobm.LOBM, {}),
    "lobm_star": (lobm.LOBM, {}),
    "sbn_mix": (bilateral.SBNMix, {}),
    "dbn_mix": (bilateral.DBNMix, {}),
    "cp_mix": (cp_mix.CPMix, {}),
    "otmix": (otmix.OTmix, {}),
    "otmix_drw": (otmix.OTmix, {}),
    "otmix_balms": (otmix.OTmix, {"kind": "balanced_softmax"}),
    "otmix_ldam": (otmix.OTmix, {"kind": "ldam"}),
    "otmix_saliency": (otmix.OTmix, {"box_placement": "saliency"}),
    # RIDE (Wang et al. 2021): a multi-expert model, each expert on the recipe's criterion
    # plus the distribution-aware diversity loss (`ltjax.methods.ride`).
    "ride": (erm.ERM, {"kind": "ldam", "multi_expert": True}),
    "ride_ea": (erm.ERM, {"kind": "ldam", "multi_expert": True}),  # + the routing stage
    "ride_cmo": (otmix.OTmix, {"ot": False, "kind": "ldam", "multi_expert": True}),
    "otmix_ride": (otmix.OTmix, {"kind": "ldam", "multi_expert": True}),
    "cp_mix_ride": (cp_mix.CPMix, {"multi_expert": True}),
}

METHODS: tuple[str, ...] = tuple(_REGISTRY)
# Recipe fields that are hyperparameter groups, overridable by their own field names.
_NESTED: dict[str, type] = {"criterion": criteria.Criterion, "ride": ride.RIDE}
_NESTED_FIELDS = {group: tuple(f.name for f in dataclasses.fields(cls))
                  for group, cls in _NESTED.items()}
_CRITERION_FIELDS = _NESTED_FIELDS["criterion"]


def _check_protocols() -> None:
  """Every registered method has a protocol table entry, and nothing else has one."""
  missing = sorted(set(METHODS) - set(protocols.PROTOCOLS))
  extra = sorted(set(protocols.PROTOCOLS) - set(METHODS))
  if missing or extra:
    raise ImportError(f"ltjax.methods.protocols is out of step with the registry: methods "
                      f"without a protocol {missing}, protocols without a method {extra}.")


_check_protocols()


def _field_names(cls: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("name", "branches"))


def get_recipe(name: str, *, num_epochs: int, protocol: str = "paper",
               **overrides: Any) -> recipe.Recipe:
  """The recipe `name` with its protocol's defaults for a `num_epochs`-epoch run.

  Args:
    name: one of `METHODS`.
    num_epochs: length of the run (the protocol's epoch-valued defaults are rescaled to it).
    protocol: "paper" (default) or "code": whose hyperparameters are the defaults.
    **overrides: recipe fields, or Criterion / RIDE fields for recipes with a criterion /
      RIDE hyperparameters.

  Returns:
    A frozen Recipe whose `name` is `name`.

  Raises:
    ValueError: unknown name or protocol, unknown hyperparameter or invalid value.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; valid methods: {', '.join(METHODS)}.")
  cls, structure = _REGISTRY[name]
  defaults = protocols.rescale(protocols.get_protocol(name, protocol), num_epochs)["recipe"]
  fields = _field_names(cls)
  groups = tuple(g for g in _NESTED if g in fields)
  valid = fields + tuple(f for g in groups for f in _NESTED_FIELDS[g])
  unknown = sorted((set(structure) | set(defaults) | set(overrides)) - set(valid))
  if unknown:
    raise ValueError(f"Unknown hyperparameters {unknown} for method {name!r}; valid: "
                     f"{', '.join(valid)}.")
  kwargs = {k: v for k, v in {**structure, **defaults, **overrides}.items() if k in fields}
  for group in groups:
    base = overrides.get(group) or _NESTED[group](**_group_fields(
        group, {**structure, **defaults}, fields))
    kwargs[group] = dataclasses.replace(base, **_group_fields(group, overrides, fields))
  return cls(name=name, **kwargs)


def hyperparameters(recipe_: recipe.Recipe) -> dict[str, tuple[Any, str]]:
  """Every overridable hyperparameter of a recipe, its Criterion and RIDE groups, with its type.

  `get_recipe(recipe_.name, num_epochs=..., **{k: v for k, (v, _) in ...items()})` rebuilds
  `recipe_`. Returns {field: (value, annotation)}, the annotation as written in the
  dataclass (e.g. "int | None"), so that a config can declare a None field's type.
  """
  def fields_of(obj: Any, skip: tuple[str, ...]) -> dict[str, tuple[Any, str]]:
    return {f.name: (getattr(obj, f.name), str(f.type)) for f in dataclasses.fields(obj)
            if f.name not in skip}
  values = fields_of(recipe_, ("name", "branches", *_NESTED))
  for group in _NESTED:
    nested = getattr(recipe_, group, None)
    if nested is not None:
      values.update({k: v for k, v in fields_of(nested, ()).items() if k not in values})
  return values


def _group_fields(group: str, kwargs: dict[str, Any], recipe_fields: tuple[str, ...]
                  ) -> dict[str, Any]:
  """The fields of hyperparameter group `group` (Criterion, RIDE) among `kwargs` (a name
  that is also a recipe field is the recipe's)."""
  return {k: v for k, v in kwargs.items()
          if k in _NESTED_FIELDS[group] and k not in recipe_fields}


def _mixing_stages(model: Any) -> int | None:
  """Stages of a model whose `__call__` takes `mix=` (manifold mixup), else None."""
  inner = model.model if isinstance(model, precision.MixedPrecision) else model
  if "mix" not in inspect.signature(type(inner).__call__).parameters:
    return None
  return len(inner.widths)


def _check_mixing_layers(name: str, layers: tuple[int, ...], model: Any) -> None:
  """A recipe that mixes hidden states needs a model with every layer it mixes at."""
  if not layers:
    return
  stages, model_name = _mixing_stages(model), type(model).__name__
  if stages is None:
    raise ValueError(f"{name} mixes hidden states and needs a model that takes "
                     f"mix=(layer, fn) (resnet32, resnet18_cifar, small_cnn, the ImageNet "
                     f"ResNets, the ride_* models), got {model_name}.")
  if max(layers) > stages:
    raise ValueError(f"{name} draws mixing layers {layers}, but {model_name} has mixing "
                     f"layers 0..{stages} (0: the input, s: the output of stage s).")


def _output_keys(model: Any, sample_input: Any) -> frozenset[str]:
  """Keys of the model's output dict, from an abstract evaluation (no FLOPs)."""
  def run():
    outputs, _ = model.init_with_output(jax.random.key(0), sample_input, train=False)
    return outputs
  return frozenset(jax.eval_shape(run))


def check_compatible(recipe_: recipe.Recipe, model: Any, sample_input: Any = None) -> None:
  """Raises ValueError when `model` cannot train with `recipe_`.

  Reads `recipe_.requirements()`: two branches (DBN-Mix) need a dual-branch model (outputs
  "logits_c" and "logits_r"); `experts` (RIDE) a multi-expert model ("expert_logits");
  `needs_features` (OTmix, SMOTE-/Neighbor-Mix in feature space) a model that returns
  "features", `needs_feature_map` (OTmix's un-pooled code features) one that returns
  "feature_map"; a "normalized" head (LDAM) the normalised head; manifold mixup a model
  that takes `mix=` and has every mixing layer it draws. With `sample_input` (a
  (B, H, W, C) batch) the outputs are read from an abstract evaluation of the model;
  without it, a model is dual-branch iff it is a `DualBranchNet` and multi-expert iff it
  is a `ride.MultiExpertNet` (also inside `MixedPrecision`), and is assumed to return
  "features" (every ltjax model does) and "feature_map" (not checked).

  Args:
    recipe_: a Recipe.
    model: a Flax module with `__call__(x, train)` and a `head` attribute.
    sample_input: optional input batch of the right shape (values unused).
  """
  needs = recipe_.requirements()
  if sample_input is None:
    dual = model_registry.is_dual_branch(model)
    keys = ({"logits", "features", "feature_map"}
            | ({"logits_c", "logits_r"} if dual else set())
            | ({"expert_logits"} if model_registry.is_multi_expert(model) else set())
            | ({"router_logits", "routed_logits"} if getattr(model, "routers", False)
               else set()))
  else:
    keys = _output_keys(model, jnp.asarray(sample_input, jnp.float32))
  name, model_name = recipe_.name, type(model).__name__
  if needs.branches == 2 and not {"logits_c", "logits_r"} <= keys:
    raise ValueError(f"{name} trains two branches (x_rebalance) and needs a dual-branch "
                     f"model (e.g. dual_resnet32), got {model_name}.")
  if needs.experts and "expert_logits" not in keys:
    raise ValueError(f"{name} is configured for RIDE (multi_expert=True) and needs a "
                     f"multi-expert model that returns 'expert_logits' ("
                     f"{', '.join(m for m in model_registry.MODELS if m.startswith('ride_'))}"
                     f"); {model_name} returns {sorted(keys)}.")
  missing = [k for k in needs.outputs if k not in keys]
  if missing:
    raise ValueError(f"{name} reads the model outputs {missing}, which {model_name} does not "
                     f"return ({sorted(keys)})"
                     + (": build it with routers=True (--config.model.routers=True)."
                        if "router_logits" in missing else "."))
  if needs.needs_features and "features" not in keys:
    raise ValueError(f"{name} pairs samples in feature space and needs a model that "
                     f"returns 'features'; {model_name} returns {sorted(keys)} "
                     "(SMOTE-/Neighbor-Mix: pairing_space='pixels').")
  if needs.needs_feature_map and "feature_map" not in keys:
    raise ValueError(f"{name} computes its OT cost on the un-pooled last-stage map and "
                     f"needs a model that returns 'feature_map' (ResNet-32, SmallCNN, the "
                     f"ImageNet ResNets); {model_name} returns {sorted(keys)} "
                     "(or set ot_features='train').")
  _check_mixing_layers(name, needs.mix_layers, model)
  head = getattr(model, "head", None)
  if needs.head == "normalized" and head != "normalized":
    raise ValueError(f"{name} uses the LDAM loss, which needs a normalised classifier "
                     f"head (head='normalized'), got head={head!r}.")
