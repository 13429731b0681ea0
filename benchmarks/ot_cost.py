"""Cost of OTmix's optimal-transport pairing against one ResNet-32 training step.

OTmix (Gao et al.) pairs each foreground image with a background image by entropic OT:
cost `C_ij = w (1 - cos(z_i, z_j)) + (1 - w)(1 - F_hat[y_i, y_j])` (`ltjax.pairing.ot_cost`),
ott-jax log-domain Sinkhorn with eps = 0.01 and uniform marginals, then the argmax of each
plan row (`ltjax.pairing.ot_pairs`). This script times that pairing at B = 128 and divides
it by the time of one ERM training step of the same model at the same batch (the median
compiled epoch of `benchmarks.epoch_speed` divided by its steps). Goal: <= 10 %.

Inputs are realistic: the features are those of the model after the timed ERM epochs, of R
foreground batches (inverse-frequency sampler, r = 1) and R background batches (uniform
instances) of the training set, and F_hat is the normalised confusion of that model on up
to 20 training images per class, as OTmix's `begin_epoch` computes it. Reported:

  pairing_call_s   median of single jitted calls (cost + Sinkhorn + argmax), dispatch included
  pairing_scan_s   R pairings in one jitted `lax.map`, divided by R (as inside the epoch scan)
  with_features_*  the same plus the inference forward of the 2B images that OTmix runs
  sinkhorn         iterations and convergence over the R problems (`solve_sinkhorn`)
  fraction         pairing_scan_s / step_s (and the other variants)

Usage (from the repository root):
  python -m benchmarks.ot_cost
  python -m benchmarks.ot_cost --steps_per_epoch=3 --epochs=1 --repeats=5 --scan_batches=4
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import epoch_speed
from ltjax import methods, pairing, recipe, samplers
from ltjax.training import loop

GOAL_FRACTION = 0.10


def median_seconds(fn: Callable[[int], Any], repeats: int) -> float:
  """Median wall time of `fn(i)` (blocked) over `repeats` calls, after one untimed call."""
  epoch_speed.block(fn(0))
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    epoch_speed.block(fn(i))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def draw_batches(key: jax.Array, counts: jax.Array, index: samplers.ClassIndex,
                 num_samples: int, batches: int, batch_size: int
                 ) -> tuple[jax.Array, jax.Array]:
  """(R, B) foreground (inverse frequency, r=1) and background (uniform) index batches."""
  k_fore, k_back = jax.random.split(key)
  probs = samplers.inverse_power_probs(counts, 1.0)
  fore = samplers.draw_indices(k_fore, index, probs, batches * batch_size)
  back = samplers.draw_instances(k_back, num_samples, batches * batch_size)
  return fore.reshape(batches, batch_size), back.reshape(batches, batch_size)


def confusion_hat(run: epoch_speed.Run, data: recipe.DeviceDataset,
                  key: jax.Array) -> jax.Array:
  """F_hat as OTmix computes it at the start of an epoch, from the trained run's model."""
  ot = methods.OTmix()
  evaluate = loop.make_evaluate(run.model.apply, run.state.params,
                                run.state.batch_stats, run.normalize_fn)
  state = ot.begin_epoch(ot.init_state(data.class_counts), jnp.int32(0), data, evaluate, key)
  return state["confusion"]


def fraction_key(seconds_key: str) -> str:
  """'pairing_scan_s' -> 'pairing_scan_fraction'."""
  return seconds_key[:-len("_s")] + "_fraction"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", default="cifar10_lt")
  p.add_argument("--model", default=None, help="default: the config's (resnet32)")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--rho", type=float, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--synthetic", action="store_true")
  p.add_argument("--epsilon", type=float, default=0.01)
  p.add_argument("--w", type=float, default=0.05)
  p.add_argument("--epochs", type=int, default=3, help="timed ERM epochs (median)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--steps_per_epoch", type=int, default=None)
  p.add_argument("--timing_epoch", type=int, default=-1)
  p.add_argument("--repeats", type=int, default=50, help="timed single pairing calls")
  p.add_argument("--scan_batches", type=int, default=32, help="R pairings per lax.map")
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  return p.parse_args(argv)


def step_time(args: argparse.Namespace, ds) -> tuple[dict[str, Any], epoch_speed.Run,
                                                     Any]:
  """One ERM training step's time (median epoch / steps); the trained run and its data."""
  config = epoch_speed.method_config(args.dataset, "erm", args.rho, args.seed,
                                     args.batch_size, args.model)
  train = epoch_speed.train_set_for(ds, args.steps_per_epoch, config.batch_size)
  run = epoch_speed.build_epoch(config, train, args.seed)
  epoch = config.num_epochs - 1 if args.timing_epoch < 0 else args.timing_epoch
  timing = epoch_speed.time_epoch(run.epoch_fn, run.state, epoch, args.warmup, args.epochs)
  run = run._replace(state=timing.pop("state"))
  steps = run.epoch_fn.steps_per_epoch
  return ({**timing, "model": run.model_name, "steps_per_epoch": steps,
           "step_s": timing["epoch_s"] / steps}, run, train)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  env = epoch_speed.environment()
  ds, note = epoch_speed.load_train_set(args.dataset, args.rho, args.seed, args.data_dir,
                                        args.synthetic)
  step, run, train = step_time(args, ds)
  print(f"{env['device_kind']}: {step['model']} ERM step at B={args.batch_size}: "
        f"{1e3 * step['step_s']:.2f} ms ({note})", flush=True)

  variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
  apply = lambda x: run.model.apply(variables, run.normalize_fn(x), train=False)
  evaluate = jax.jit(apply)
  data = recipe.DeviceDataset.from_arrays(train.train_images, train.train_labels,
                                          train.num_classes)
  images, labels, index = data.images, data.labels, data.index
  f_hat = confusion_hat(run, data, jax.random.key(args.seed))
  fore, back = draw_batches(jax.random.key(args.seed), index.counts, index, labels.size,
                            args.scan_batches, args.batch_size)
  z_fore = jax.vmap(lambda i: evaluate(images[i])["features"])(fore)
  z_back = jax.vmap(lambda i: evaluate(images[i])["features"])(back)
  y_fore, y_back = labels[fore], labels[back]

  def pair(zf, zb, yf, yb):
    return pairing.ot_pairs(pairing.ot_cost(zf, zb, yf, yb, f_hat, args.w), args.epsilon)

  def pair_with_features(i_f, i_b):
    batch = i_f.shape[0]
    z = apply(images[jnp.concatenate([i_f, i_b])])["features"]
    return pair(z[:batch], z[batch:], labels[i_f], labels[i_b])

  r = args.scan_batches
  pair_jit, pair_feat_jit = jax.jit(pair), jax.jit(pair_with_features)
  pair_scan = jax.jit(lambda *a: jax.lax.map(lambda t: pair(*t), a))
  feat_scan = jax.jit(lambda *a: jax.lax.map(lambda t: pair_with_features(*t), a))
  figures = {
      "pairing_call_s": median_seconds(
          lambda i: pair_jit(z_fore[i % r], z_back[i % r], y_fore[i % r], y_back[i % r]),
          args.repeats),
      "pairing_scan_s": median_seconds(
          lambda i: pair_scan(z_fore, z_back, y_fore, y_back), max(3, args.repeats // r)) / r,
      "with_features_call_s": median_seconds(
          lambda i: pair_feat_jit(fore[i % r], back[i % r]), args.repeats),
      "with_features_scan_s": median_seconds(
          lambda i: feat_scan(fore, back), max(3, args.repeats // r)) / r,
  }
  solved = jax.jit(jax.vmap(lambda zf, zb, yf, yb: pairing.solve_sinkhorn(
      pairing.ot_cost(zf, zb, yf, yb, f_hat, args.w), args.epsilon)))(
          z_fore, z_back, y_fore, y_back)
  iterations = np.asarray(solved.iterations)
  sinkhorn = {"iterations_median": float(np.median(iterations)),
              "iterations_max": int(iterations.max()),
              "converged_fraction": float(np.mean(np.asarray(solved.converged))),
              "note": "vmapped solve: every problem runs until the slowest one stops"}
  fractions = {fraction_key(k): v / step["step_s"] for k, v in figures.items()}
  result = {"benchmark": "ot_cost", "command": epoch_speed.command_line("benchmarks.ot_cost"),
            "args": vars(args), "environment": env, "data_note": note,
            "train_images": int(train.train_labels.size), "step": step, "pairing": figures,
            "fractions": fractions, "sinkhorn": sinkhorn, "goal_fraction": GOAL_FRACTION}
  epoch_speed.publish("ot_cost", result, markdown(result), args.results_dir)
  return result


def markdown(result: dict[str, Any]) -> str:
  args, step, fig, frac = (result["args"], result["step"], result["pairing"],
                           result["fractions"])
  lines = epoch_speed.header_lines("ot_cost", result["environment"], result["command"])
  lines += [f"- data: {result['data_note']}; {result['train_images']} training images",
            f"- step: {step['model']} ERM, B={args['batch_size']}, median epoch "
            f"{step['epoch_s']:.3f} s / {step['steps_per_epoch']} steps = "
            f"{1e3 * step['step_s']:.2f} ms",
            f"- Sinkhorn (eps={args['epsilon']}, w={args['w']}): median "
            f"{result['sinkhorn']['iterations_median']:.0f} iterations, max "
            f"{result['sinkhorn']['iterations_max']}, converged "
            f"{100 * result['sinkhorn']['converged_fraction']:.0f} %", "",
            "| what | ms | fraction of a step |", "|---|---|---|"]
  for key, value in fig.items():
    lines.append(f"| {key[:-2]} | {1e3 * value:.3f} | "
                 f"{100 * frac[fraction_key(key)]:.1f} % |")
  met = frac["pairing_scan_fraction"] <= result["goal_fraction"]
  lines += ["", f"- goal OT pairing <= {100 * result['goal_fraction']:.0f} % of a step "
            f"(pairing_scan): {'met' if met else 'missed'}"]
  return "\n".join(lines)


if __name__ == "__main__":
  main()
