r"""Trains several methods over several seeds and writes a comparison table.

Quickstart (ERM, Mixup and every seed method on Digits-LT, a SmallCNN on the CPU):

  python -m experiments.compare --config=experiments/configs/digits_lt.py

More:

  python -m experiments.compare \
      --config=experiments/configs/cifar10_lt.py:rho=100 \
      --methods=erm,mixup_drw,mamix_drw,dbn_mix --seeds=0,1,2 \
      --config.num_epochs=200 --workdir=/tmp/cifar10_lt --parallel=2

Each (method, seed) run is `experiments.runner.run` on the config file's
`get_config("<args>,method=M,seed=S")`, with the `--config.X=Y` overrides applied where the
method's config has that field (e.g. `--config.recipe.alpha` skips ERM), in
`<workdir>/<method>/seed<S>` (resumed if it holds a checkpoint, skipped if it holds a
complete results.json). Then `<workdir>/comparison.md` and `comparison.json` hold, per
method: top-1, many / medium / few accuracy (mean ± std over seeds, in %), epoch time and
wall time; the markdown table is printed.

`--methods` / `--seeds` default to the config's `methods` / `seeds` fields (the quickstart's
list: ERM, Mixup and the seed papers' methods). `--parallel=N` runs N runs at a time as
subprocesses (set XLA_PYTHON_CLIENT_MEM_FRACTION, e.g. 0.3, to share one GPU); the default
runs them one after another in this process. Methods and seeds are validated before any
run starts.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from experiments import runner
from ltjax import methods as ltmethods
from ltjax import reporting

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: experiments/configs/<dataset>.py[:args].",
    lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output folder (default /tmp/ltjax_compare/<config name>).")
_METHODS = flags.DEFINE_list("methods", None, "Methods to compare (default config.methods).")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds (default config.seeds).")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time (>1: subprocesses).")
_SUMMARIZE = flags.DEFINE_bool("summarize", True,
                               "Write comparison.md / .json (off in worker subprocesses).")
_JAX_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                     "Call jax.distributed.initialize() first.")

METRICS = ("top1", "many", "medium", "few")


def load_config_module(path: str):
  """Imports an experiment config file by path."""
  name = "experiment_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None:
    raise ValueError(f"Cannot load config file {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def with_args(arg: str, **values: Any) -> str:
  """The config argument string with `key=value` items replaced or added."""
  items = [a for a in (arg or "").split(",")
           if a.strip() and a.split("=", 1)[0].strip() not in values]
  return ",".join(items + [f"{k}={v}" for k, v in values.items()])


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                    ) -> list[str]:
  """Sets each `path: value` that exists in config; returns the skipped paths."""
  skipped = []
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      skipped.append(path)
      continue
    with node.unlocked():
      current = node[leaf]
      if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
      node[leaf] = value
  return skipped


def run_configs(spec: str, overrides: dict[str, Any], methods: list[str], seeds: list[int]
                ) -> dict[tuple[str, int], ml_collections.ConfigDict]:
  """The resolved config of every (method, seed), validated before anything runs."""
  bad = [m for m in methods if m not in ltmethods.METHODS]
  if bad:
    raise ValueError(f"Unknown methods {bad}; valid methods: {', '.join(ltmethods.METHODS)}.")
  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  configs = {}
  for method in methods:
    for seed in seeds:
      config = module.get_config(with_args(arg, method=method, seed=seed))
      skipped = apply_overrides(config, overrides)
      if skipped and seed == seeds[0]:
        logging.warning("%s: no config field %s; override skipped.", method, skipped)
      runner.validate_names(config)
      runner.build_recipe(config)  # hyperparameters checked before any run starts
      configs[(method, seed)] = config
  return configs


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed{seed}")


def is_complete(directory: str) -> bool:
  path = os.path.join(directory, "results.json")
  return os.path.exists(path) and reporting.read_json(path).get("extra", {}).get("complete")


def run_sequential(configs, workdir: str) -> None:
  for (method, seed), config in configs.items():
    directory = run_dir(workdir, method, seed)
    if is_complete(directory):
      print(f"{method} seed {seed}: complete in {directory}, skipped.", flush=True)
      continue
    print(f"=== {method} seed {seed} -> {directory}", flush=True)
    runner.run(config, directory)


def run_parallel(configs, workdir: str, parallel: int) -> None:
  """Runs each (method, seed) as `python -m experiments.compare` worker, N at a time."""
  passthrough = [a for a in sys.argv[1:] if a.startswith(("--config", "-config"))]
  pending = [(m, s) for (m, s) in configs if not is_complete(run_dir(workdir, m, s))]
  running: list[tuple[tuple[str, int], subprocess.Popen, Any]] = []
  failed = []
  while pending or running:
    while pending and len(running) < parallel:
      method, seed = pending.pop(0)
      directory = run_dir(workdir, method, seed)
      os.makedirs(directory, exist_ok=True)
      log = open(os.path.join(directory, "stdout.log"), "a")
      cmd = [sys.executable, "-m", "experiments.compare", *passthrough,
             f"--methods={method}", f"--seeds={seed}", f"--workdir={workdir}",
             "--parallel=1", "--nosummarize"]
      print(f"=== {method} seed {seed} -> {directory} (subprocess)", flush=True)
      running.append(((method, seed), subprocess.Popen(cmd, stdout=log,
                                                       stderr=subprocess.STDOUT), log))
    time.sleep(0.5)
    for item in list(running):
      key, proc, log = item
      if proc.poll() is not None:
        log.close()
        running.remove(item)
        if proc.returncode:
          failed.append(key)
          print(f"{key[0]} seed {key[1]} failed (exit {proc.returncode}); see "
                f"{run_dir(workdir, *key)}/stdout.log", flush=True)
  if failed:
    raise RuntimeError(f"Runs failed: {failed}.")


def summarize(workdir: str, methods: list[str], seeds: list[int]) -> dict[str, Any]:
  """comparison.json / comparison.md from the runs' results.json; returns the json."""
  table: dict[str, Any] = {}
  for method in methods:
    runs = []
    for seed in seeds:
      path = os.path.join(run_dir(workdir, method, seed), "results.json")
      if os.path.exists(path):
        runs.append((seed, reporting.read_json(path)))
    entry = {m: reporting.aggregate(r["final"].get(m) for _, r in runs) for m in METRICS}
    entry["best_top1"] = reporting.aggregate(r["extra"].get("best_top1") for _, r in runs)
    entry["epoch_time_s"] = reporting.aggregate(r["timing"].get("epoch_time_s")
                                                for _, r in runs)
    entry["wall_time_s"] = reporting.aggregate(r["timing"].get("wall_time_s")
                                               for _, r in runs)
    entry["seeds"] = [s for s, _ in runs]
    entry["per_seed"] = {str(s): r["final"] for s, r in runs}
    table[method] = entry
  header = ["method", "top-1", "many", "medium", "few", "epoch (s)", "wall (s)", "seeds"]
  rows = [[m, *(reporting.format_mean_std(e[k]) for k in METRICS),
           reporting.format_mean_std(e["epoch_time_s"], scale=1.0, digits=3),
           reporting.format_mean_std(e["wall_time_s"], scale=1.0, digits=1),
           str(len(e["seeds"]))] for m, e in table.items()]
  markdown = ("Accuracy in % (mean ± std over seeds); epoch time: median per run, "
              "first epoch (compilation) excluded.\n\n" + reporting.markdown_table(header, rows))
  reporting.write_json(os.path.join(workdir, "comparison.json"),
                       {"methods": table, "seeds": seeds})
  with open(os.path.join(workdir, "comparison.md"), "w") as f:
    f.write(markdown)
  print(markdown, flush=True)
  return table


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  base = _CONFIG.value
  runner.maybe_initialize_distributed(base, _JAX_DISTRIBUTED.value)
  spec = flags.FLAGS["config"].config_filename
  overrides = dict(config_flags.get_override_values(flags.FLAGS["config"]))
  methods = _METHODS.value or [m for m in base.get("methods", "").split(",") if m]
  try:
    seeds = [int(s) for s in (_SEEDS.value or str(base.get("seeds", "0")).split(","))]
  except ValueError:
    raise app.UsageError(f"--seeds must be integers, got {_SEEDS.value}.") from None
  if _PARALLEL.value < 1:
    raise app.UsageError(f"--parallel must be >= 1, got {_PARALLEL.value}.")
  workdir = _WORKDIR.value or os.path.join(
      "/tmp/ltjax_compare", os.path.splitext(os.path.basename(spec.partition(":")[0]))[0])
  configs = run_configs(spec, overrides, methods, seeds)
  print(f"Comparing {methods} over seeds {seeds} in {workdir}", flush=True)
  if _PARALLEL.value > 1:
    run_parallel(configs, workdir, _PARALLEL.value)
  else:
    run_sequential(configs, workdir)
  if _SUMMARIZE.value:
    summarize(workdir, methods, seeds)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
