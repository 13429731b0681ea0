"""Method-specific views of a finished run (the figures next to results.json).

| method family                  | view                                        | from                       |
|--------------------------------|---------------------------------------------|----------------------------|
| mixup, *_drw, LOBM, LOBM*      | label occurrence ratio gamma_k (LOBM eq. 3) | draws of the method's samplers and label rule |
| SBN-Mix / DBN-Mix              | gamma_k of the bilateral pairs + T_k        | samplers, `recipe.temperatures` (paper and code forms) |
| CP-Mix                         | accumulated confusion-pair counts C         | method_state after the main phase |
| OTmix / CMO                    | foreground x background pair counts         | OT pairs of the trained model on fresh draws |

The occurrence statistics use fresh draws with fixed keys (`analysis_draws` batches), not
the training trajectory, so they depend only on the class counts, the samplers and the
label rule of the method.
"""

from __future__ import annotations

import os
from typing import Any, Callable

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


def occurrence_series(rcp: recipe.Recipe, counts: jax.Array, key: jax.Array,
                      num_draws: int) -> dict[str, np.ndarray] | None:
  """The method's pair laws and their gamma_k; None for a method without mixing pairs."""
  laws = _class_laws(counts)
  if isinstance(rcp, lobm.LOBM):
    pairs = [("CB+CB (LOBM)", laws["CB"], laws["CB"], label_rules.vanilla)]
    if rcp.defer_epoch is not None:
      pairs.insert(0, ("IB+IB (before defer)", laws["IB"], laws["IB"], label_rules.vanilla))
    alpha = rcp.alpha
  elif isinstance(rcp, mixup.Mixup) and rcp.pairing == "random":
    pairs = [(f"IB+IB ({rcp.label_rule})", laws["IB"], laws["IB"], rcp.rule())]
    alpha = rcp.alpha
  elif isinstance(rcp, bilateral.DBNMix):
    rev = samplers.reverse_probs(counts, rcp.gamma)
    pairs = [("IB+rev, lam_c (branch c)", laws["IB"], rev,
              lambda lam, n_a, n_b: label_rules.bilateral(lam)[0]),
             ("IB+rev, lam_r (branch r)", laws["IB"], rev,
              lambda lam, n_a, n_b: label_rules.bilateral(lam)[1])]
    alpha = rcp.alpha
  elif isinstance(rcp, bilateral.SBNMix):
    rev = samplers.reverse_probs(counts, rcp.gamma)
    pairs = [("IB+rev (SBN-Mix)", laws["IB"], rev, label_rules.vanilla)]
    alpha = rcp.alpha
  else:
    return None
  if not any(name.startswith("IB+IB") for name, *_ in pairs):
    pairs.insert(0, ("IB+IB (mixup)", laws["IB"], laws["IB"], label_rules.vanilla))
  return {name: occurrence(jax.random.fold_in(key, i), counts, a, b, alpha, rule, num_draws)
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


def method_views(rcp: recipe.Recipe, workdir: str, counts: np.ndarray,
                 class_names: list[str], *, seed: int, num_draws: int,
                 method_state: Any = None, model_state: tuple | None = None,
                 data: recipe.DeviceDataset | None = None,
                 normalize_fn: Callable | None = None, batch_size: int = 128
                 ) -> dict[str, Any]:
  """Writes the method's PNG views into `workdir` and returns their numbers for results.json.

  Args:
    rcp: the main-phase recipe.
    workdir: run folder.
    counts: (K,) training counts.
    class_names: K names.
    seed: run seed (keys of the fresh draws).
    num_draws: batches drawn for the statistics.
    method_state: CP-Mix confusion counts ({"confusion": C}) after the main phase.
    model_state: (apply_fn, params, batch_stats, method_state) of the trained model (OTmix).
    data: the on-device training set (OTmix).
    normalize_fn: input normalisation (OTmix).
    batch_size: batch size of the OTmix draws.
  """
  key = jax.random.fold_in(jax.random.key(seed), 0x5eed)
  counts_j = jnp.asarray(counts, jnp.int32)
  names = list(class_names)
  out: dict[str, Any] = {}
  gamma = occurrence_series(rcp, counts_j, key, num_draws)
  if gamma is not None:
    plots.occurrence_plot(gamma, os.path.join(workdir, "label_occurrence.png"), names,
                          title=f"Label occurrence ratio ({rcp.name})")
    out["label_occurrence"] = {n: {"gamma": g, "imbalance": float(metrics.occurrence_imbalance(g))}
                               for n, g in gamma.items()}
  if isinstance(rcp, (bilateral.DBNMix, bilateral.SBNMix)):
    temps = temperature_series(rcp, counts_j)
    plots.temperature_plot(temps, counts, os.path.join(workdir, "temperatures.png"), names,
                           title=f"Class temperatures T_k ({rcp.name}, eta={rcp.eta}, "
                                 f"eps={rcp.eps})")
    out["temperatures"] = temps
  if isinstance(rcp, cp_mix.CPMix) and method_state is not None:
    confusion = np.asarray(method_state["confusion"])
    plots.confusion_plot(confusion, names, os.path.join(workdir, "cp_confusion_pairs.png"),
                         title="CP-Mix confusion pairs (row-normalised counts)")
    out["cp_confusion_counts"] = confusion
  if isinstance(rcp, otmix.OTmix) and model_state is not None and data is not None:
    apply_fn, params, batch_stats, state = model_state
    pairs = ot_pair_counts(rcp, apply_fn, params, batch_stats, state, data, normalize_fn,
                           key, num_draws, batch_size)
    plots.pair_statistics_plot(pairs, os.path.join(workdir, "pair_statistics.png"), names,
                               title=f"{'OT' if rcp.ot else 'random (CMO)'} pairs: "
                                     "foreground x background")
    out["pair_counts"] = pairs
  return out
