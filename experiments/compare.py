r"""Trains several methods over several seeds and writes a comparison table.

Quickstart (ERM, Mixup and every seed method on Digits-LT, a SmallCNN on the CPU):

  python -m experiments.compare --config=experiments/configs/digits_lt.py

More:

  python -m experiments.compare \
      --config=experiments/configs/cifar10_lt.py:rho=100 \
      --methods=erm,mixup_drw,mamix_drw,dbn_mix --seeds=0,1,2 \
      --config.num_epochs=200 --workdir=/tmp/cifar10_lt --parallel=2

Each (method, seed) run is `experiments.runner.run` on the config file's
`get_config("<args>,method=M,seed=S")`, with the `--config.X=Y` overrides applied, in
`<workdir>/<method>/seed<S>` (resumed if it holds a checkpoint, skipped if it holds a
complete results.json of the same config). An override must name a field of at least one
compared method's config: one that exists for some methods only (`--config.recipe.alpha`
with ERM, which has no alpha) is applied where it exists and reported once; one that exists
for none (a misspelling) is an error naming the field and its close matches, like
experiments.train. `--config.dataset.data_dir=PATH` sets where every run reads its data.
Then `<workdir>/comparison.md` and `comparison.json` hold, per method: top-1, many /
medium / few accuracy (mean ± std over seeds, in %), epoch time, compile time and wall time
(summed over the processes of each run; experiments/timing.py); the markdown table is
printed.

Every run folder follows the workdir rules of experiments/workdir.py (fingerprint, lock).
Before any run starts, every run folder that holds a run of another config (a rerun with
another `rho`, lr, ...; a complete one included) is listed with its differing fields and
the comparison stops, unless `--on_mismatch=fresh`: those runs move to
`<run folder>-old<N>` and train again (`fork` is experiments.train's only: a comparison
keeps one folder per run, so use another --workdir).

A run that fails does not stop the others: the comparison finishes them, summarises what
completed, then lists each failure (method, seed, one-line reason, its log: `error.log`, or
`stdout.log` with --parallel, in the run folder; `<workdir>/<method>/worker.log` for a
worker that stopped before it reported the run) and exits with status 1. Errors in the
command line (unknown methods, seeds, fields; mismatched runs) stop it before any run, as
one line with exit status 2.

`--methods` / `--seeds` default to the config's `methods` / `seeds` fields (the quickstart's
list: ERM, Mixup and the seed papers' methods). The default runs every run one after
another in this process: the imports are paid once, and a method's later seeds retrace its
functions but compile nothing (experiments/cli.py: the persistent compilation cache).
`--parallel=N` runs N methods at a time, each in a worker subprocess that trains all of that
method's seeds one after another (one process start-up and one first tracing per method, not
per run; each run's output in its run folder's stdout.log, the worker's own in
`<workdir>/<method>/worker.log`); set XLA_PYTHON_CLIENT_MEM_FRACTION, e.g. 0.3, to share one
GPU.
"""

from __future__ import annotations

from experiments import cli  # first: its import time is the script's start

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import traceback
from typing import IO, Any, Callable, Iterator

from absl import flags
from absl import logging
from ml_collections import config_flags
import ml_collections

from experiments import runner
from experiments import workdir as workdir_lib
from experiments.cli import UserError, load_config_module
from ltjax import methods as ltmethods
from ltjax import reporting

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so the three scripts import side by side)."""
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config: experiments/configs/<dataset>.py[:args].",
      lock_config=False, accept_new_attributes=True)
  flags.DEFINE_string("workdir", None,
                      "Output folder (default /tmp/ltjax_compare/<config name>).")
  flags.DEFINE_list("methods", None, "Methods to compare (default config.methods).")
  flags.DEFINE_list("seeds", None, "Seeds (default config.seeds).")
  flags.DEFINE_integer("parallel", 1, "Runs at a time (>1: subprocesses).")
  flags.DEFINE_bool("summarize", True,
                    "Write comparison.md / .json (off in worker subprocesses).")
  flags.DEFINE_bool("run_logs", False,
                    "Send each run's output to <run folder>/stdout.log (on in worker "
                    "subprocesses).")
  cli.define_distributed_flags()
  flags.DEFINE_enum("on_mismatch", "refuse", ("refuse", "fresh"),
                    "When a run folder holds a run of another config: refuse, or fresh "
                    "(move it to <run folder>-old<N> and train again).")
  flags.mark_flags_as_required(["config"])


METRICS = ("top1", "many", "medium", "few")
Key = tuple[str, int]


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


def check_overrides(overrides: dict[str, Any], configs: dict[str, ml_collections.ConfigDict],
                    log: Callable[[str], None] = print) -> None:
  """Each override must name a field of some method's config (`configs`: method -> config).

  One that only some methods have is reported once (it is applied where it exists).

  Raises:
    UserError: an override that no compared method's config has (the message names the
      field, its close matches and the section's fields).
  """
  for path in overrides:
    missing = {m: cli.unknown_field_message(c, path) for m, c in configs.items()}
    missing = {m: message for m, message in missing.items() if message}
    if len(missing) == len(configs):
      hinted = [message for message in missing.values() if "did you mean" in message]
      raise UserError(f"--config.{path} exists for none of the compared methods "
                      f"({', '.join(configs)}): {(hinted or list(missing.values()))[0]}")
    if missing:
      log(f"--config.{path} is set for {', '.join(m for m in configs if m not in missing)}; "
          f"{', '.join(missing)} ha{'s' if len(missing) == 1 else 've'} no such field.")


def _method_config(module: Any, arg: str, method: str, seed: int
                   ) -> ml_collections.ConfigDict:
  try:
    return module.get_config(with_args(arg, method=method, seed=seed))
  except ValueError as e:
    raise UserError(f"{method}: {e}") from e


def run_configs(spec: str, overrides: dict[str, Any], methods: list[str], seeds: list[int],
                log: Callable[[str], None] = print
                ) -> dict[Key, ml_collections.ConfigDict]:
  """The resolved config of every (method, seed), validated before anything runs."""
  if not methods:
    raise UserError("no methods to compare: pass --methods or set the config's methods.")
  bad = [m for m in methods if m not in ltmethods.METHODS]
  if bad:
    raise UserError(f"Unknown methods {bad}; valid methods: {', '.join(ltmethods.METHODS)}.")
  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  configs = {(m, s): _method_config(module, arg, m, s) for m in methods for s in seeds}
  check_overrides(overrides, {m: configs[(m, seeds[0])] for m in methods}, log)
  for config in configs.values():
    apply_overrides(config, overrides)
    runner.validate_names(config)
    runner.build_recipe(config)  # hyperparameters checked before any run starts
  return configs


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed{seed}")


def is_complete(directory: str) -> bool:
  path = os.path.join(directory, "results.json")
  return os.path.exists(path) and bool(
      reporting.read_json(path).get("extra", {}).get("complete"))


def run_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fingerprinted fields of the run `runner.run` would make of `config`."""
  return workdir_lib.fingerprint_fields(runner.resolve(config, runner.build_recipe(config)))


def pending_runs(configs: dict[Key, ml_collections.ConfigDict], workdir: str,
                 on_mismatch: str) -> list[Key]:
  """The runs to train: all but the complete runs of the same config (skipped, with a note).

  Raises:
    UserError: under on_mismatch="refuse", run folders that hold a run of another config
      (each named with its differing fields).
  """
  pending, mismatched = [], []
  for (method, seed), config in configs.items():
    directory = run_dir(workdir, method, seed)
    diffs = workdir_lib.mismatch(directory, run_fields(config))
    if diffs:
      mismatched.append(f"{directory} ({'; '.join(diffs)})")
    if diffs or not is_complete(directory):
      pending.append((method, seed))
    else:
      print(f"{method} seed {seed}: complete in {directory}, skipped.", flush=True)
  if mismatched and on_mismatch == "refuse":
    raise UserError(f"run folders hold runs of another config: {' | '.join(mismatched)}. "
                    "Rerun with --on_mismatch=fresh (moves each to <run folder>-old<N> and "
                    "trains it again) or use another --workdir.")
  return pending


def _failure(key: Key, directory: str, error: Exception) -> dict[str, Any]:
  """A failed run: method, seed, one-line reason and the log holding its traceback."""
  first_line = (str(error).strip().splitlines() or [""])[0]
  reason = first_line if isinstance(error, UserError) else (
      f"{type(error).__name__}: {first_line}")
  log = os.path.join(directory, "error.log")
  with contextlib.suppress(OSError):
    os.makedirs(directory, exist_ok=True)
    with open(log, "w") as f:
      f.write("".join(traceback.format_exception(error)))
  return {"method": key[0], "seed": key[1], "reason": reason, "log": log}


def run_sequential(configs: dict[Key, ml_collections.ConfigDict], pending: list[Key],
                   workdir: str, on_mismatch: str, run_logs: bool = False
                   ) -> list[dict[str, Any]]:
  """Runs the pending runs one after another in this process; returns the failures.

  With `run_logs` (the --parallel workers), each run's output goes to its run folder's
  stdout.log.
  """
  failures = []
  import_s = cli.seconds_since_start()
  for method, seed in pending:
    directory = run_dir(workdir, method, seed)
    with _run_output(directory, run_logs):
      print(f"=== {method} seed {seed} -> {directory}", flush=True)
      try:
        runner.run(configs[(method, seed)], directory, on_mismatch=on_mismatch,
                   import_s=import_s)
      except Exception as e:  # pylint: disable=broad-except  # reported, the others go on
        failures.append(_failure((method, seed), directory, e))
        print(f"{method} seed {seed} failed: {failures[-1]['reason']} (log: "
              f"{failures[-1]['log']})", flush=True)
    import_s = 0.0
  return failures


@contextlib.contextmanager
def _run_output(directory: str, to_file: bool) -> Iterator[None]:
  """While a run trains, this process's output goes to `<directory>/stdout.log` (to_file)."""
  if not to_file:
    yield
    return
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "stdout.log"), "a") as log, \
       contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
    yield


def worker_groups(pending: list[Key]) -> list[tuple[str, list[int]]]:
  """The pending runs as (method, seeds), in order: what one --parallel worker trains."""
  groups: dict[str, list[int]] = {}
  for method, seed in pending:
    groups.setdefault(method, []).append(seed)
  return list(groups.items())


def _size(path: str) -> int:
  return os.path.getsize(path) if os.path.exists(path) else 0


def _lines_after(path: str, offset: int) -> list[str]:
  """The non-empty lines of `path` from byte `offset` on (none when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    f.seek(offset)
    text = f.read().decode(errors="replace")
  return [line.strip() for line in text.splitlines() if line.strip()]


@dataclasses.dataclass
class _Worker:
  """A running --parallel worker: its method and seeds, process, log and log offsets."""
  method: str
  seeds: list[int]
  proc: subprocess.Popen
  log: IO[str]
  offsets: dict[str, int]  # log path -> size when the worker started

  def failures(self, workdir: str) -> list[dict[str, Any]]:
    """The worker's failed runs, once it has exited.

    A run failed if the worker reported it (`<method> seed <s> failed: <reason> ...` in
    the run's stdout.log, which is then its log) or, when the worker exited with an error,
    if it has no complete results.json (reason: the worker log's last line).
    """
    if not self.proc.returncode:
      return []
    worker_lines = _lines_after(self.log.name, self.offsets[self.log.name])
    failures = []
    for seed in self.seeds:
      directory = run_dir(workdir, self.method, seed)
      log = os.path.join(directory, "stdout.log")
      prefix = f"{self.method} seed {seed} failed: "
      reported = [line.removeprefix(prefix).rpartition(" (log: ")[0]
                  for line in _lines_after(log, self.offsets.get(log, 0))
                  if line.startswith(prefix)]
      if reported:
        failures.append({"method": self.method, "seed": seed, "reason": reported[-1],
                         "log": log})
      elif not is_complete(directory):
        failures.append({"method": self.method, "seed": seed, "log": self.log.name,
                         "reason": worker_lines[-1] if worker_lines else "(empty log)"})
    return failures


def _start_worker(method: str, seeds: list[int], workdir: str, on_mismatch: str) -> _Worker:
  """Starts `python -m experiments.compare` on one method's seeds, with run logs on."""
  passthrough = [a for a in sys.argv[1:]
                 if a.startswith(("--config", "-config", f"--{cli.CACHE_FLAG}"))]
  logs = [os.path.join(run_dir(workdir, method, s), "stdout.log") for s in seeds]
  worker_log = os.path.join(workdir, method, "worker.log")
  os.makedirs(os.path.dirname(worker_log), exist_ok=True)
  offsets = {path: _size(path) for path in [*logs, worker_log]}
  log = open(worker_log, "a")
  cmd = [sys.executable, "-m", "experiments.compare", *passthrough, f"--methods={method}",
         f"--seeds={','.join(str(s) for s in seeds)}", f"--workdir={workdir}",
         f"--on_mismatch={on_mismatch}", "--parallel=1", "--nosummarize", "--run_logs"]
  print(f"=== {method} seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(str(s) for s in seeds)} -> {os.path.join(workdir, method)} "
        f"(subprocess; logs: seed<S>/stdout.log, worker.log)", flush=True)
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  return _Worker(method, seeds, proc, log, offsets)


def run_parallel(pending: list[Key], workdir: str, parallel: int, on_mismatch: str
                 ) -> list[dict[str, Any]]:
  """Runs the pending runs in `python -m experiments.compare` workers, N at a time.

  One worker per method trains that method's pending seeds one after another, so a
  method pays one process start-up and one tracing of its functions, not one per run.
  Returns the failures (`_Worker.failures`).
  """
  queue, running, failures = worker_groups(pending), [], []
  while queue or running:
    while queue and len(running) < parallel:
      running.append(_start_worker(*queue.pop(0), workdir, on_mismatch))
    time.sleep(0.5)
    for worker in [w for w in running if w.proc.poll() is not None]:
      worker.log.close()
      running.remove(worker)
      failed = worker.failures(workdir)
      failures += failed
      for f in failed:
        print(f"{f['method']} seed {f['seed']} failed (exit {worker.proc.returncode}); "
              f"see {f['log']}", flush=True)
  return failures


def report_failures(failures: list[dict[str, Any]], num_runs: int) -> None:
  """Prints the failed runs: method, seed, reason, log."""
  lines = [f"{len(failures)} of {num_runs} runs failed:"]
  lines += [f"  {f['method']} seed {f['seed']}: {f['reason']} (log: {f['log']})"
            for f in failures]
  print("\n".join(lines), file=sys.stderr, flush=True)


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
    for name in ("epoch_time_s", "compile_s", "wall_time_s"):
      entry[name] = reporting.aggregate(r["timing"].get(name) for _, r in runs)
    entry["seeds"] = [s for s, _ in runs]
    entry["per_seed"] = {str(s): r["final"] for s, r in runs}
    table[method] = entry
  header = ["method", "top-1", "many", "medium", "few", "epoch (s)", "compile (s)",
            "wall (s)", "seeds"]
  rows = [[m, *(reporting.format_mean_std(e[k]) for k in METRICS),
           reporting.format_mean_std(e["epoch_time_s"], scale=1.0, digits=3),
           reporting.format_mean_std(e["compile_s"], scale=1.0, digits=1),
           reporting.format_mean_std(e["wall_time_s"], scale=1.0, digits=1),
           str(len(e["seeds"]))] for m, e in table.items()]
  markdown = ("Accuracy in % (mean ± std over seeds); epoch time: median per run, each "
              "process's first (compiling) epoch excluded; compile: JAX tracing, lowering "
              "and XLA compilation; compile and wall time summed over the processes that "
              "trained the run.\n\n" + reporting.markdown_table(header, rows))
  reporting.write_json(os.path.join(workdir, "comparison.json"),
                       {"methods": table, "seeds": seeds})
  reporting.write_text(os.path.join(workdir, "comparison.md"), markdown)
  print(markdown, flush=True)
  return table


def _seeds(base: ml_collections.ConfigDict) -> list[int]:
  try:
    return [int(s) for s in (FLAGS.seeds or str(base.get("seeds", "0")).split(","))]
  except ValueError:
    raise UserError(f"--seeds must be integers, got {FLAGS.seeds}.") from None


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.parallel < 1:
    raise UserError(f"--parallel must be >= 1, got {FLAGS.parallel}.")
  logging.set_verbosity(logging.WARNING)
  base = FLAGS.config
  runner.maybe_initialize_distributed(base, cli.distributed_coordinates())
  spec = FLAGS["config"].config_filename
  overrides = dict(config_flags.get_override_values(FLAGS["config"]))
  methods = FLAGS.methods or [m for m in base.get("methods", "").split(",") if m]
  seeds = _seeds(base)
  workdir = FLAGS.workdir or os.path.join(
      "/tmp/ltjax_compare", os.path.splitext(os.path.basename(spec.partition(":")[0]))[0])
  configs = run_configs(spec, overrides, methods, seeds)
  print(f"Comparing {methods} over seeds {seeds} in {workdir}", flush=True)
  pending = pending_runs(configs, workdir, FLAGS.on_mismatch)
  if FLAGS.parallel > 1:
    failures = run_parallel(pending, workdir, FLAGS.parallel, FLAGS.on_mismatch)
  else:
    failures = run_sequential(configs, pending, workdir, FLAGS.on_mismatch,
                              FLAGS.run_logs)
  if FLAGS.summarize:
    summarize(workdir, methods, seeds)
  if failures:
    report_failures(failures, len(configs))
    sys.exit(1)


def run() -> None:
  """The script (`python -m experiments.compare`, the `ltjax-compare` console script)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
