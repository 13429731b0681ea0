"""Compile time of a model's initialiser, per compiler options (issue 15).

`ltjax.training.create_state` compiles `model.init` once per run. This benchmark asks what
compiling it with other options (`--options`; default XLA:CPU's backend optimisation level
0) would gain and what it would change: per model, `jax.jit(model.init)` on a (1, H, W, C)
input is lowered and compiled with the default options and with `--options`
(`Lowered.compile`, no persistent cache; lowered afresh for each compile, as a `Lowered`
keeps its executable), `--rounds` times interleaved; reported are the median compile
seconds, the median run seconds of the compiled initialiser, and how the initial variables
differ: the largest difference in units in the last place (ulp) over all float32 leaves
and the fraction of values that differ.

Results: benchmarks/results/init_compile-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.init_compile
  python -m benchmarks.init_compile --models=small_cnn,resnet32 --rounds=3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import epoch_speed
from ltjax.models import registry

# (model name, input shape without the batch axis, get_model keywords).
MODELS = {
    "mlp": ((64,), {}),
    "small_cnn": ((16, 16, 3), {}),
    "dual_small_cnn": ((16, 16, 3), {}),
    "ride_small_cnn": ((16, 16, 3), {"num_experts": 6}),
    "resnet32": ((32, 32, 3), {}),
    "resnet50": ((64, 64, 3), {}),
}


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a - b| in float32 units in the last place (both finite, same sign near zero)."""
  ints = [np.asarray(v, np.float32).view(np.int32).astype(np.int64) for v in (a, b)]
  return np.abs(ints[0] - ints[1])


def compare_variables(reference: Any, other: Any) -> dict[str, float]:
  """Largest ulp distance and fraction of differing values over all leaves."""
  distances = [ulp_distance(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(other))]
  flat = np.concatenate([d.ravel() for d in distances])
  return {"max_ulp": int(flat.max()), "fraction_differing": float(np.mean(flat > 0)),
          "values": int(flat.size)}


def measure(name: str, rounds: int, options: dict[str, Any]) -> dict[str, Any]:
  """Median compile / run seconds of `name`'s initialiser, default against `options`."""
  shape, kwargs = MODELS[name]
  model = registry.get_model(name, 10, **kwargs)
  x, key = jnp.zeros((1, *shape), jnp.float32), jax.random.key(0)
  settings = {"default": None, "init_options": options}
  times: dict[str, dict[str, list[float]]] = {s: {"compile": [], "run": []} for s in settings}
  variables = {}
  for r in range(rounds):
    order = list(settings) if r % 2 == 0 else list(settings)[::-1]
    for setting in order:
      lowered = jax.jit(model.init, static_argnames="train").lower(key, x, train=False)
      start = time.perf_counter()
      compiled = lowered.compile(settings[setting])
      times[setting]["compile"].append(time.perf_counter() - start)
      start = time.perf_counter()
      variables[setting] = jax.block_until_ready(compiled(key, x))
      times[setting]["run"].append(time.perf_counter() - start)
  row = {"model": name, "input": list(shape),
         "parameters": sum(int(np.prod(v.shape))
                           for v in jax.tree.leaves(variables["default"]["params"]))}
  for setting, t in times.items():
    row[f"{setting}_compile_s"] = statistics.median(t["compile"])
    row[f"{setting}_run_s"] = statistics.median(t["run"])
  row["compile_ratio"] = row["init_options_compile_s"] / row["default_compile_s"]
  row.update(compare_variables(variables["default"], variables["init_options"]))
  return row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--options", type=json.loads, default={"xla_backend_optimization_level": 0},
                 help="compiler options (JSON) compared with the defaults")
  p.add_argument("--models", default=",".join(MODELS),
                 help=f"comma-separated, of: {', '.join(MODELS)}")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  args = p.parse_args(argv)
  unknown = sorted(set(args.models.split(",")) - set(MODELS))
  if unknown:
    p.error(f"--models: unknown {unknown}; valid: {', '.join(MODELS)}")
  if args.rounds < 1:
    p.error(f"--rounds={args.rounds}: must be >= 1")
  return args


def markdown(result: dict[str, Any]) -> str:
  lines = epoch_speed.header_lines("init_compile", result["environment"], result["command"])
  lines += [f"- compared options: `{result['init_options']}`; median of "
            f"{result['args']['rounds']} interleaved rounds, (1, H, W, C) input", "",
            "| model | parameters | compile s default | compile s init options | ratio | "
            "run s default | run s init options | max ulp | values differing |",
            "|---|---|---|---|---|---|---|---|---|"]
  for row in result["rows"]:
    lines.append(
        f"| {row['model']} | {row['parameters']:,} | {row['default_compile_s']:.2f} | "
        f"{row['init_options_compile_s']:.2f} | {row['compile_ratio']:.2f}x | "
        f"{row['default_run_s']:.3f} | {row['init_options_run_s']:.3f} | {row['max_ulp']} | "
        f"{100 * row['fraction_differing']:.1f} % |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  jax.jit(lambda v: v + 1).lower(jnp.zeros(())).compile()   # the backend's first compile
  rows = [measure(name, args.rounds, args.options) for name in args.models.split(",")]
  result = {"benchmark": "init_compile",
            "command": epoch_speed.command_line("benchmarks.init_compile"),
            "args": vars(args), "environment": epoch_speed.environment(),
            "init_options": args.options, "rows": rows}
  epoch_speed.publish("init_compile", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
