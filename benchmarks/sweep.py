"""A sweep's wall time with a cold and a warm compilation cache (issue 15, "sweeps are fast").

Runs `python -m experiments.compare` twice on the same methods x seeds (default: ERM,
Mixup-DRW and OTmix x seeds 0, 1, 2 on Digits-LT, the quickstart's config):

- **cold**: an empty persistent compilation cache (`--compilation_cache`), a fresh workdir,
  a fresh process: every executable is traced, lowered and compiled by XLA;
- **warm**: the same cache, another fresh workdir, another fresh process: every executable
  is traced and lowered again (a new process) but comes from the cache, not from XLA.

Both processes run every run one after the other in one process (compare's default,
`--parallel=1`), with the progress bar off. Recorded per phase: the process's wall time and
CPU time (user + system: on a machine shared with other jobs it moves much less than the
wall time), the 1-minute load average before it, the cache's entries and bytes after it,
and per run the `timing` of its results.json (experiments/timing.py): wall, import, data,
compile (JAX tracing, lowering and XLA compilation or cache retrieval), train (fit less
compile: steps, evaluations, checkpoints) and other (wall - compile - train: imports of the
first run, data loading, setup); `outside runs` is the process's wall less the runs' walls
(plots, the methods' analysis views, the summary, interpreter start and exit). The goal:
warm wall at most 0.4x cold wall.

Results: benchmarks/results/sweep-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.sweep
  python -m benchmarks.sweep --methods=erm,mixup_drw --seeds=0,1 --config_args=epochs=20
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks import epoch_speed
from ltjax import reporting

GOAL_RATIO = 0.4
PHASES = ("cold", "warm")
RUN_FIELDS = ("wall_time_s", "import_s", "data_s", "compile_s", "train_s")


def compare_command(args: argparse.Namespace, workdir: str, cache: str) -> list[str]:
  """The `experiments.compare` command line of one phase."""
  spec = args.config + (f":{args.config_args}" if args.config_args else "")
  return [sys.executable, "-m", "experiments.compare", f"--config={spec}",
          f"--methods={args.methods}", f"--seeds={args.seeds}", f"--workdir={workdir}",
          f"--compilation_cache={cache}", "--config.progress=False", *args.extra]


def cache_stats(cache: str) -> dict[str, int]:
  """Number of files and their bytes in the compilation cache folder."""
  sizes = [os.path.getsize(os.path.join(root, name))
           for root, _, names in os.walk(cache) for name in names]
  return {"entries": len(sizes), "bytes": int(sum(sizes))}


def run_timing(directory: str) -> dict[str, float]:
  """A run's timing fields from its results.json, with `other_s` = wall - compile - train."""
  timing = reporting.read_json(os.path.join(directory, "results.json"))["timing"]
  out = {k: float(timing[k]) for k in RUN_FIELDS}
  out["other_s"] = out["wall_time_s"] - out["compile_s"] - out["train_s"]
  out["epoch_time_s"] = timing.get("epoch_time_s")
  return out


def _children_cpu_s() -> float:
  """User + system CPU seconds of the finished child processes so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_phase(name: str, args: argparse.Namespace, scratch: str, cache: str
              ) -> dict[str, Any]:
  """Runs one compare process into `<scratch>/<name>`; its wall time, cache and runs.

  Raises:
    RuntimeError: the compare process failed (the message holds the end of its log).
  """
  workdir = os.path.join(scratch, name)
  command = compare_command(args, workdir, cache)
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  print(f"--- {name}: {' '.join(command[1:])}", flush=True)
  load, cpu = os.getloadavg()[0], _children_cpu_s()
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  cpu = _children_cpu_s() - cpu
  with open(os.path.join(scratch, f"{name}.log"), "w", encoding="utf-8") as f:
    f.write(proc.stdout + proc.stderr)
  if proc.returncode:
    raise RuntimeError(f"{name} compare failed (exit {proc.returncode}):\n"
                       f"{(proc.stdout + proc.stderr)[-3000:]}")
  runs = {f"{m}/seed{s}": run_timing(os.path.join(workdir, m, f"seed{s}"))
          for m in args.method_list for s in args.seed_list}
  runs_wall = sum(r["wall_time_s"] for r in runs.values())
  result = {"wall_s": wall, "cpu_s": cpu, "load_before": load,
            "load_after": os.getloadavg()[0], "runs_wall_s": runs_wall,
            "outside_runs_s": wall - runs_wall, "cache": cache_stats(cache), "runs": runs}
  print(f"{name}: {wall:.1f} s, {cpu:.1f} CPU s ({runs_wall:.1f} s in runs), cache "
        f"{result['cache']['entries']} entries", flush=True)
  return result


def markdown(result: dict[str, Any]) -> str:
  """The RESULTS.md section: settings, the two phases and every run's timing."""
  cold, warm = result["phases"]["cold"], result["phases"]["warm"]
  args = result["args"]
  lines = epoch_speed.header_lines("sweep", result["environment"], result["command"])
  new = warm["cache"]["entries"] - cold["cache"]["entries"]
  lines += [f"- sweep: `experiments.compare --config={args['config']}"
            f"{':' + args['config_args'] if args['config_args'] else ''}` "
            f"methods {args['methods']} x seeds {args['seeds']}, one process per phase, "
            "runs one after another, progress bar off; cold: empty compilation cache; warm: "
            "the same cache, a fresh workdir and process",
            f"- **warm / cold wall: {result['ratio']:.2f}** (goal <= {GOAL_RATIO}); CPU "
            f"time (user + system, less sensitive to other jobs' load): "
            f"{result['cpu_ratio']:.2f}; load average (1 min) before cold / warm: "
            f"{cold['load_before']:.1f} / {warm['load_before']:.1f}; cache "
            f"{cold['cache']['entries']} entries ({cold['cache']['bytes'] / 2**20:.1f} MiB) "
            f"after cold, {new} new after warm", "",
            "| phase | process wall s | CPU s | in runs s | outside runs s | compile s "
            "| train s | other s |", "|---|---|---|---|---|---|---|---|"]
  for name in PHASES:
    phase = result["phases"][name]
    total = {k: sum(r[k] for r in phase["runs"].values()) for k in ("compile_s", "train_s",
                                                                    "other_s")}
    lines.append(f"| {name} | {phase['wall_s']:.1f} | {phase['cpu_s']:.1f} "
                 f"| {phase['runs_wall_s']:.1f} "
                 f"| {phase['outside_runs_s']:.1f} | {total['compile_s']:.1f} "
                 f"| {total['train_s']:.1f} | {total['other_s']:.1f} |")
  lines += ["", "Per run (cold / warm), seconds; other = wall - compile - train (imports of "
            "the process's first run, data, setup):", "",
            "| run | wall | compile | train | other | epoch |", "|---|---|---|---|---|---|"]
  for run in cold["runs"]:
    c, w = cold["runs"][run], warm["runs"][run]
    cells = [f"{c[k]:.1f} / {w[k]:.1f}" for k in ("wall_time_s", "compile_s", "train_s",
                                                  "other_s")]
    epoch = f"{c['epoch_time_s']:.3f} / {w['epoch_time_s']:.3f}"
    lines.append(f"| {run} | " + " | ".join(cells) + f" | {epoch} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/configs/digits_lt.py")
  p.add_argument("--config_args", default="", help="e.g. epochs=20 (after the config's ':')")
  p.add_argument("--methods", default="erm,mixup_drw,otmix")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--scratch", default=None,
                 help="folder for the cache, workdirs and logs (default: a temporary one, "
                      "removed at the end)")
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  p.add_argument("extra", nargs="*", help="more experiments.compare flags (after --)")
  args = p.parse_args(argv)
  args.method_list = [m for m in args.methods.split(",") if m]
  args.seed_list = [int(s) for s in args.seeds.split(",") if s]
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  scratch = args.scratch or tempfile.mkdtemp(prefix="ltjax-sweep-")
  cache = os.path.join(scratch, "cache")
  if os.path.exists(cache):
    shutil.rmtree(cache)
  try:
    phases = {name: run_phase(name, args, scratch, cache) for name in PHASES}
  finally:
    if args.scratch is None:
      shutil.rmtree(scratch, ignore_errors=True)
  result = {"benchmark": "sweep", "command": epoch_speed.command_line("benchmarks.sweep"),
            "args": {k: v for k, v in vars(args).items()
                     if k not in ("method_list", "seed_list")},
            "environment": epoch_speed.environment(), "phases": phases,
            "ratio": phases["warm"]["wall_s"] / phases["cold"]["wall_s"],
            "cpu_ratio": phases["warm"]["cpu_s"] / phases["cold"]["cpu_s"],
            "goal_ratio": GOAL_RATIO}
  epoch_speed.publish("sweep", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
