"""XLA:CPU compile time against step time and results, per LLVM optimisation setting (issue 15).

Most of the test suite's CPU time is XLA compilation of small programs. XLA:CPU's
`--xla_backend_optimization_level` (LLVM's opt level, default 2) and
`--xla_llvm_disable_expensive_passes` trade compile time for code speed (and
`--xla_cpu_use_fusion_emitters=false` swaps the fusion code generator); this benchmark
asks whether the suite (or a sweep) could compile with less optimisation without changing
what it computes.

Per flag set, in its own subprocess (XLA_FLAGS are read once, when the backend starts; no
persistent compilation cache): one SGD-with-momentum step of `--model` (cross-entropy,
batch norm in training mode, batch `--batch_size` of 32x32x3 inputs) is lowered and
compiled once (`Lowered.compile`: a second call in the same process would come from JAX's
in-memory cache), then run `--steps` times from the same initial parameters (median ms per
step after one untimed step). `--rounds` rounds run every flag set once, interleaved, so
that a change of load on the machine hits all of them alike; reported are the medians
over the rounds. The final parameters are compared with those of the first flag set:
`max |diff|` over all parameters and whether they are bit-identical.

Results: benchmarks/results/compile_flags-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.compile_flags
  python -m benchmarks.compile_flags --model=small_cnn --steps=20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import epoch_speed, worker
from ltjax.models import registry

FLAG_SETS = {
    "default": "",
    "no_expensive_passes": "--xla_llvm_disable_expensive_passes=true",
    "o1": "--xla_backend_optimization_level=1",
    "o0": "--xla_backend_optimization_level=0",
    "o0_no_expensive_passes": ("--xla_backend_optimization_level=0 "
                               "--xla_llvm_disable_expensive_passes=true"),
    # XLA:CPU's older loop emitters instead of its MLIR fusion emitters.
    "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
}


def measure(model_name: str, batch_size: int, steps: int, params_out: str
            ) -> dict[str, float]:
  """In this process: compile and step times of one training step; saves final params."""
  model = registry.get_model(model_name, 10)
  x = jax.random.normal(jax.random.key(0), (batch_size, 32, 32, 3))
  y = jnp.arange(batch_size) % 10
  variables = model.init(jax.random.key(1), x, train=False)
  tx = optax.sgd(0.1, momentum=0.9)

  def step(params, opt_state, batch_stats):
    def loss_fn(p):
      out, new = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                             mutable=["batch_stats"])
      logp = jax.nn.log_softmax(out["logits"])
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, stats, loss

  state = (variables["params"], tx.init(variables["params"]), variables["batch_stats"])
  lowered = jax.jit(step).lower(*state)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  out = jax.block_until_ready(compiled(*state))
  step_times = []
  for _ in range(steps):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*out[:3]))
    step_times.append(time.perf_counter() - start)
  leaves = jax.tree.leaves(out[0])
  np.savez(params_out, *[np.asarray(a) for a in leaves])
  return {"compile_s": compile_s, "step_ms": 1e3 * statistics.median(step_times),
          "loss": float(out[3])}


def run_flag_set(name: str, args: argparse.Namespace, scratch: str) -> dict[str, float]:
  """Runs `measure` in a subprocess under FLAG_SETS[name]; its compile s, step ms, loss.

  Raises:
    worker.WorkerFailed: the subprocess failed (the message holds the end of its output).
  """
  params_out = os.path.join(scratch, f"{name}.npz")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=FLAG_SETS[name])
  command = [sys.executable, "-m", "benchmarks.compile_flags", "--child", params_out,
             f"--model={args.model}", f"--batch_size={args.batch_size}",
             f"--steps={args.steps}"]
  result = worker.run(command, env)
  print(f"{name}: compile {result['compile_s']:.2f} s, step {result['step_ms']:.0f} ms, "
        f"loss {result['loss']:.7g}", flush=True)
  return result


def summarise(name: str, rounds: list[dict[str, float]]) -> dict[str, Any]:
  """Medians over the rounds of one flag set, with its flags and every round's figures."""
  return {"xla_flags": FLAG_SETS[name], "rounds": rounds,
          **{k: statistics.median(r[k] for r in rounds) for k in ("compile_s", "step_ms")},
          "loss": rounds[-1]["loss"]}


def compare_params(path: str, reference: str) -> dict[str, Any]:
  """Max absolute difference of two saved parameter sets and whether they are identical."""
  with np.load(path) as a, np.load(reference) as b:
    diffs = [np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0)
             for k in a.files]
    identical = all(np.array_equal(a[k], b[k]) for k in a.files)
  return {"max_abs_diff": float(max(diffs)), "bit_identical": bool(identical)}


def markdown(result: dict[str, Any]) -> str:
  """The RESULTS.md section: one row per flag set, ratios to the first."""
  args, rows = result["args"], result["flag_sets"]
  base = next(iter(rows.values()))
  lines = epoch_speed.header_lines("compile_flags", result["environment"], result["command"])
  lines += [f"- program: one SGD step of {args['model']} (batch {args['batch_size']}, "
            f"32x32x3, batch norm in training mode); one compile per subprocess; step: median "
            f"of {args['steps']} steps after one untimed; medians over {args['rounds']} "
            "interleaved rounds; params: after all steps, against the first flag set", "",
            "| flags | XLA_FLAGS | compile s | compile / first | step ms | step / first "
            "| final loss | params max abs diff | bit-identical |",
            "|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | `{r['xla_flags'] or '(none)'}` | {r['compile_s']:.2f} "
                 f"| {r['compile_s'] / base['compile_s']:.2f} | {r['step_ms']:.0f} "
                 f"| {r['step_ms'] / base['step_ms']:.2f} | {r['loss']:.7g} "
                 f"| {r['max_abs_diff']:.2e} | {'yes' if r['bit_identical'] else 'no'} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--flag_sets", default=",".join(FLAG_SETS),
                 help=f"comma-separated, of {', '.join(FLAG_SETS)}; the first is the "
                      "reference of the ratios and the parameter comparison")
  p.add_argument("--model", default="resnet32")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.flag_list = [f for f in args.flag_sets.split(",") if f]
  unknown = sorted(set(args.flag_list) - set(FLAG_SETS))
  if unknown:
    p.error(f"unknown flag sets {unknown}; known: {', '.join(FLAG_SETS)}")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
  args = parse_args(argv)
  if args.child:
    worker.report(measure(args.model, args.batch_size, args.steps, args.child))
    return None
  with tempfile.TemporaryDirectory(prefix="ltjax-compile-flags-") as scratch:
    rounds = [{name: run_flag_set(name, args, scratch) for name in args.flag_list}
              for _ in range(args.rounds)]
    rows = {name: summarise(name, [r[name] for r in rounds]) for name in args.flag_list}
    reference = os.path.join(scratch, f"{args.flag_list[0]}.npz")
    for name, row in rows.items():
      row.update(compare_params(os.path.join(scratch, f"{name}.npz"), reference))
  result = {"benchmark": "compile_flags",
            "command": epoch_speed.command_line("benchmarks.compile_flags"),
            "args": {k: v for k, v in vars(args).items() if k not in ("flag_list", "child")},
            "environment": epoch_speed.environment(), "flag_sets": rows}
  epoch_speed.publish("compile_flags", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
