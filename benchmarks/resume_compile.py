"""What a resumed run compiles (issue 15, "nothing compiles twice", in a new process too).

Runs `python -m experiments.train` twice on one workdir with one persistent compilation
cache, empty at the start (default: CP-Mix on Digits-LT, quick, 3 epochs and the
fine-tuning phase):

- **first**: a fresh run stopped after `--stop_after` epochs (default 2; a checkpoint every
  epoch);
- **resumed**: a new process that restores the checkpoint and finishes the run: the rest
  of the main phase, then the fine-tuning phase.

Recorded per process: its wall time, the cache entries it added, named by program
(`jit_step`, `jit_batch_counts`, ...), and the `timing.segments` entry of its
results.json (epochs trained, compile seconds, seconds per epoch). A resumed process
should add only the programs of phases the first one never reached (here the fine-tuning
phase's `jit_step` and `jit_begin_epoch`).

Results: benchmarks/results/resume_compile-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.resume_compile
  python -m benchmarks.resume_compile --config_args=method=mixup_drw,quick,epochs=2 \
      --stop_after=1
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks import epoch_speed
from ltjax import reporting

PROCESSES = ("first", "resumed")
MAX_LISTED = 12  # programs named in the RESULTS.md table; every one is in the JSON file
_ENTRY = re.compile(r"^(.+)-[0-9a-f]{64}-cache$")


def program_names(entries: set[str]) -> dict[str, int]:
  """Cache entry file names counted by program name (`jit_step-<hash>-cache` ->
  `jit_step`); files that are not executables (e.g. access-time stamps) are left out."""
  names = [m.group(1) for m in map(_ENTRY.match, sorted(entries)) if m]
  return dict(sorted(collections.Counter(names).items()))


def _entries(cache: str) -> set[str]:
  return set(os.listdir(cache)) if os.path.isdir(cache) else set()


def train_command(args: argparse.Namespace, workdir: str, cache: str,
                  stop_after: int | None) -> list[str]:
  """The `experiments.train` command line of one process."""
  command = [sys.executable, "-m", "experiments.train",
             f"--config={args.config}:{args.config_args}", f"--workdir={workdir}",
             f"--compilation_cache={cache}", "--config.checkpoint_every=1",
             "--config.progress=False"]
  return command + ([f"--stop_after={stop_after}"] if stop_after else [])


def run_process(name: str, command: list[str], cache: str) -> dict[str, Any]:
  """Runs one training process; its wall time and the cache entries it added.

  Raises:
    RuntimeError: the process failed (the message holds the end of its log).
  """
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  print(f"--- {name}: {' '.join(command[1:])}", flush=True)
  before = _entries(cache)
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n"
                       f"{(proc.stdout + proc.stderr)[-3000:]}")
  new = program_names(_entries(cache) - before)
  print(f"{name}: {wall:.1f} s, new cache entries {new}", flush=True)
  return {"wall_s": wall, "new_programs": new}


def run(args: argparse.Namespace, scratch: str) -> dict[str, dict[str, Any]]:
  """Both processes on `<scratch>/run` with the cache `<scratch>/cache`."""
  workdir, cache = os.path.join(scratch, "run"), os.path.join(scratch, "cache")
  processes = {name: run_process(name, train_command(args, workdir, cache, stop), cache)
               for name, stop in zip(PROCESSES, (args.stop_after, None))}
  segments = reporting.read_json(os.path.join(workdir, "results.json"))["timing"]["segments"]
  for name, segment in zip(PROCESSES, segments):
    processes[name]["segment"] = {k: segment[k] for k in ("from_epoch", "epochs",
                                                           "compile_s", "epoch_times_s")}
  return processes


def markdown(result: dict[str, Any]) -> str:
  """The RESULTS.md section: the two processes' wall, compile and new programs."""
  args = result["args"]
  lines = epoch_speed.header_lines("resume_compile", result["environment"],
                                   result["command"])
  lines += [f"- `experiments.train --config={args['config']}:{args['config_args']}`, first "
            f"process stopped after {args['stop_after']} epochs, then resumed in a new "
            "process; one compilation cache, empty at the start", "",
            "| process | wall s | from epoch | epochs | compile s | epoch s | new cache "
            "entries |", "|---|---|---|---|---|---|---|"]
  for name in PROCESSES:
    p = result["processes"][name]
    s = p["segment"]
    count = sum(p["new_programs"].values())
    programs = (", ".join(f"{k} x{v}" if v > 1 else k for k, v in p["new_programs"].items())
                if count <= MAX_LISTED else "listed in the JSON file")
    lines.append(f"| {name} | {p['wall_s']:.1f} | {s['from_epoch']} | {s['epochs']} | "
                 f"{s['compile_s']:.1f} | "
                 f"{' / '.join(f'{t:.2f}' for t in s['epoch_times_s'])} | "
                 f"{count}: {programs or '-'} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="experiments/configs/digits_lt.py")
  p.add_argument("--config_args", default="method=cp_mix,quick,epochs=3")
  p.add_argument("--stop_after", type=int, default=2,
                 help="epochs the first process trains before it stops")
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  args = p.parse_args(argv)
  if args.stop_after < 1:
    p.error(f"--stop_after={args.stop_after}: must be >= 1")
  if not os.path.isfile(args.config):
    p.error(f"--config={args.config}: no such file")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  with tempfile.TemporaryDirectory(prefix="resume_compile-") as scratch:
    processes = run(args, scratch)
  result = {"benchmark": "resume_compile",
            "command": epoch_speed.command_line("benchmarks.resume_compile"),
            "args": vars(args), "environment": epoch_speed.environment(),
            "processes": processes}
  epoch_speed.publish("resume_compile", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
