"""Method-specific views of a finished run (the figures next to results.json).

| method family                  | view                                        | from                       |
|--------------------------------|---------------------------------------------|----------------------------|
| mixup, *_drw, LOBM, LOBM*      | label occurrence ratio gamma_k (LOBM eq. 3) | draws of the method's samplers and label rule |
| SBN-Mix / DBN-Mix              | gamma_k of the bilateral pairs + T_k        | samplers, `recipe.temperatures` (paper and code forms) |
| CP-Mix                         | accumulated confusion-pair counts C         | method_state after the main phase |
| OTmix / CMO                    | foreground x background pair counts         | OT pairs of the trained model on fresh draws |

`VIEWS` maps each recipe class to its views and `PAIR_LAWS` to the pairs whose occurrence
it plots (looked up along the class's MRO, so a subclass inherits its parent's views).
The occurrence statistics use fresh draws with fixed keys (`analysis_draws` batches), not
the training trajectory, so they depend only on the class counts, the samplers and the
label rule of the method.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import (label_rules, losses, metrics, mixing, pairing, plots, recipe, samplers,
                   training)
from ltjax.methods import bilateral, cp_mix, lobm, mixup, otmix


def _class_laws(counts: jax.Array) -> dict[str, jax.Array]:
  return {"IB": samplers.instance_balanced_probs(counts),
          "CB": samplers.class_balanced_probs(counts)}


def occurrence(key: jax.Array, counts: jax.Array, law_a: jax.Array, law_b: jax.Array,
               alpha: float, rule: Callable, num_draws: int, batch: int = 256) -> np.ndarray:
  """gamma_k of pairs (class_a ~ law_a, class_b ~ law_b), lam ~ Beta(alpha), lam_y = rule.

  Label weight lam_y goes to class a and 1 - lam_y to class b (LOBM eq. 3 with the
  method's label rule); one lambda per batch as in training.
  """
  def one(k):
    k_a, k_b, k_l = jax.random.split(k, 3)
    y_a = jax.random.choice(k_a, counts.shape[0], (batch,), p=law_a)
    y_b = jax.random.choice(k_b, counts.shape[0], (batch,), p=law_b)
    lam = jnp.broadcast_to(mixing.sample_lambda(k_l, alpha), (batch,))
    return y_a, y_b, rule(lam, counts[y_a], counts[y_b])
  y_a, y_b, lam_y = jax.vmap(one)(jax.random.split(key, num_draws))
  return np.asarray(metrics.label_occurrence(y_a.ravel(), y_b.ravel(), lam_y.ravel(),
                                             counts.shape[0]))


PairLaw = tuple[str, jax.Array, jax.Array, Callable]  # (name, law_a, law_b, label rule)


def _lobm_pairs(rcp: lobm.LOBM, counts: jax.Array) -> list[PairLaw]:
  laws = _class_laws(counts)
  pairs = [("CB+CB (LOBM)", laws["CB"], laws["CB"], label_rules.vanilla)]
  if rcp.defer_epoch is not None:
    pairs.insert(0, ("IB+IB (before defer)", laws["IB"], laws["IB"], label_rules.vanilla))
  return pairs


def _mixup_pairs(rcp: mixup.Mixup, counts: jax.Array) -> list[PairLaw] | None:
  if rcp.pairing != "random":  # nearest-neighbour pairs have no class law
    return None
  ib = _class_laws(counts)["IB"]
  return [(f"IB+IB ({rcp.label_rule})", ib, ib, rcp.rule())]


def _dbn_pairs(rcp: bilateral.DBNMix, counts: jax.Array) -> list[PairLaw]:
  ib, rev = _class_laws(counts)["IB"], samplers.reverse_probs(counts, rcp.gamma)
  return [("IB+rev, lam_c (branch c)", ib, rev,
           lambda lam, n_a, n_b: label_rules.bilateral(lam)[0]),
          ("IB+rev, lam_r (branch r)", ib, rev,
           lambda lam, n_a, n_b: label_rules.bilateral(lam)[1])]


def _sbn_pairs(rcp: bilateral.SBNMix, counts: jax.Array) -> list[PairLaw]:
  rev = samplers.reverse_probs(counts, rcp.gamma)
  return [("IB+rev (SBN-Mix)", _class_laws(counts)["IB"], rev, label_rules.vanilla)]


# recipe class -> its mixing pairs (None: pairs without a class law).
PAIR_LAWS: dict[type, Callable[[Any, jax.Array], list[PairLaw] | None]] = {
    lobm.LOBM: _lobm_pairs,
    mixup.Mixup: _mixup_pairs,
    bilateral.DBNMix: _dbn_pairs,
    bilateral.SBNMix: _sbn_pairs,
}


def lookup(table: dict[type, Any], rcp: recipe.Recipe) -> Any:
  """The entry of the nearest class of `rcp`'s MRO in `table`, None when there is none."""
  return next((table[cls] for cls in type(rcp).__mro__ if cls in table), None)


def occurrence_series(rcp: recipe.Recipe, counts: jax.Array, key: jax.Array,
                      num_draws: int) -> dict[str, np.ndarray] | None:
  """The method's pair laws and their gamma_k; None for a method without mixing pairs."""
  pair_laws = lookup(PAIR_LAWS, rcp)
  pairs = None if pair_laws is None else pair_laws(rcp, counts)
  if pairs is None:
    return None
  if not any(name.startswith("IB+IB") for name, *_ in pairs):
    ib = _class_laws(counts)["IB"]
    pairs.insert(0, ("IB+IB (mixup)", ib, ib, label_rules.vanilla))
  return {name: occurrence(jax.random.fold_in(key, i), counts, a, b, rcp.alpha, rule,
                           num_draws)
          for i, (name, a, b, rule) in enumerate(pairs)}


def temperature_series(rcp: recipe.Recipe, counts: jax.Array) -> dict[str, np.ndarray]:
  """T_k of the recipe's setting and of both published forms (paper / authors' code)."""
  series = {f"{form} form": np.asarray(losses.dbn_temperatures(counts, rcp.eta, rcp.eps,
                                                               form=form))
            for form in ("paper", "code")}
  series[f"used ({rcp.temperature})"] = np.asarray(rcp.temperatures(counts))
  return series


def ot_pair_counts(rcp: otmix.OTmix, apply_fn: Callable, params: Any, batch_stats: Any,
                   method_state: Any, data: recipe.DeviceDataset,
                   normalize_fn: Callable, key: jax.Array, num_draws: int,
                   batch_size: int) -> np.ndarray:
  """m_ij: foreground class i pasted on background class j, over `num_draws` fresh batches.

  Foregrounds from the inverse-frequency law, backgrounds instance-balanced, paired by the
  trained model's OT plan with the last epoch's F_hat (random pairs for CMO).
  """
  forward = recipe.Forward(apply_fn, params, batch_stats, train=False)
  load = training.make_load(data, None, normalize_fn)
  k = data.num_classes
  fore_law = samplers.inverse_power_probs(data.class_counts, rcp.r)
  back_law = samplers.instance_balanced_probs(data.class_counts)

  @jax.jit
  def one(key):
    k_f, k_b, k_p = jax.random.split(key, 3)
    x_f, y_f = load(k_f, samplers.draw_indices(k_f, data.index, fore_law, batch_size))
    x_b, y_b = load(k_b, samplers.draw_indices(k_b, data.index, back_law, batch_size))
    if rcp.ot:
      partner = rcp.ot_partners(forward, method_state, x_f, y_f, x_b, y_b)
    else:
      partner = pairing.random_pairs(k_p, batch_size)
    return jnp.zeros((k, k), jnp.int32).at[y_f, y_b[partner]].add(1)

  return np.asarray(sum(one(jax.random.fold_in(key, i)) for i in range(num_draws)))


@dataclasses.dataclass(frozen=True)
class RunData:
  """What a view may read from a finished run.

  Attributes:
    workdir: run folder (the views write their PNGs there).
    counts: (K,) training counts.
    class_names: K names.
    seed: run seed (keys of the fresh draws).
    num_draws: batches drawn for the statistics.
    method_state: the main phase's final method state (`FitResult.phase_states[0]`).
    model: (apply_fn, params, batch_stats) of the trained model, or None.
    data: the on-device training set, or None.
    normalize_fn: input normalisation (with `data`).
    batch_size: batch size of the fresh draws of the pair statistics.
  """
  workdir: str
  counts: np.ndarray
  class_names: Sequence[str]
  seed: int
  num_draws: int
  method_state: Any = None
  model: tuple[Callable, Any, Any] | None = None
  data: recipe.DeviceDataset | None = None
  normalize_fn: Callable | None = None
  batch_size: int = 128

  @property
  def key(self) -> jax.Array:
    """The key of the views' fresh draws."""
    return jax.random.fold_in(jax.random.key(self.seed), 0x5eed)

  def path(self, filename: str) -> str:
    return os.path.join(self.workdir, filename)


View = Callable[[Any, RunData], dict[str, Any]]


def label_occurrence_view(rcp: recipe.Recipe, run: RunData) -> dict[str, Any]:
  """label_occurrence.png: gamma_k of the method's pair laws (nothing without class laws)."""
  gamma = occurrence_series(rcp, jnp.asarray(run.counts, jnp.int32), run.key, run.num_draws)
  if gamma is None:
    return {}
  plots.occurrence_plot(gamma, run.path("label_occurrence.png"), list(run.class_names),
                        title=f"Label occurrence ratio ({rcp.name})")
  return {"label_occurrence": {
      n: {"gamma": g, "imbalance": float(metrics.occurrence_imbalance(g))}
      for n, g in gamma.items()}}


def temperature_view(rcp: bilateral.DBNMix | bilateral.SBNMix, run: RunData
                     ) -> dict[str, Any]:
  """temperatures.png: DBN-Mix's / SBN-Mix's class temperatures T_k."""
  temps = temperature_series(rcp, jnp.asarray(run.counts, jnp.int32))
  plots.temperature_plot(temps, run.counts, run.path("temperatures.png"),
                         list(run.class_names),
                         title=f"Class temperatures T_k ({rcp.name}, eta={rcp.eta}, "
                               f"eps={rcp.eps})")
  return {"temperatures": temps}


def confusion_pair_view(rcp: cp_mix.CPMix, run: RunData) -> dict[str, Any]:
  """cp_confusion_pairs.png: CP-Mix's confusion counts at the end of the main phase."""
  del rcp
  if run.method_state is None:
    return {}
  confusion = np.asarray(run.method_state["confusion"])
  plots.confusion_plot(confusion, list(run.class_names), run.path("cp_confusion_pairs.png"),
                       title="CP-Mix confusion pairs (row-normalised counts)")
  return {"cp_confusion_counts": confusion}


def ot_pair_view(rcp: otmix.OTmix, run: RunData) -> dict[str, Any]:
  """pair_statistics.png: OTmix's (CMO's) foreground x background class pairs."""
  if run.model is None or run.data is None:
    return {}
  pairs = ot_pair_counts(rcp, *run.model, run.method_state, run.data, run.normalize_fn,
                         run.key, run.num_draws, run.batch_size)
  plots.pair_statistics_plot(pairs, run.path("pair_statistics.png"), list(run.class_names),
                             title=f"{'OT' if rcp.ot else 'random (CMO)'} pairs: "
                                   "foreground x background")
  return {"pair_counts": pairs}


# recipe class -> the views of its runs, in order.
VIEWS: dict[type, tuple[View, ...]] = {
    lobm.LOBM: (label_occurrence_view,),
    mixup.Mixup: (label_occurrence_view,),
    bilateral.DBNMix: (label_occurrence_view, temperature_view),
    bilateral.SBNMix: (label_occurrence_view, temperature_view),
    cp_mix.CPMix: (confusion_pair_view,),
    otmix.OTmix: (ot_pair_view,),
}


def method_views(rcp: recipe.Recipe, run: RunData) -> dict[str, Any]:
  """Writes the method's PNG views (`VIEWS`) into `run.workdir` and returns their numbers
  for results.json ({} for a method without views).

  Args:
    rcp: the main-phase recipe.
    run: what the views read from the finished run.
  """
  out: dict[str, Any] = {}
  for view in lookup(VIEWS, rcp) or ():
    out.update(view(rcp, run))
  return out
