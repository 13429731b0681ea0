"""Wall time of test files per persistent-compilation-cache threshold (issue 15, item 5).

`tests/conftest.py` points every test process (and the scripts and notebooks they start)
at one JAX persistent compilation cache. JAX writes a program there only when its compile
took at least `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` (1 s by default). Each
`trainer.fit` builds new jitted functions (a model's `init`, the evaluation's
`batch_counts`, the epoch), so a program that compiles under the threshold is compiled
again by every test that builds it. This benchmark runs the same test files under each
threshold, every time with an empty cache, as on a clean clone in CI.

Per threshold and round, in its own `pytest` subprocess (one process, no xdist): the wall
time, the passed / failed counts from pytest's summary line, and the entries and bytes the
cache holds at the end. `--rounds` rounds run every threshold once, interleaved, so that a
change of load on the machine hits all of them alike; reported are the medians.

Results: benchmarks/results/suite_cache-<device>-<date>.json and a section appended to
benchmarks/results/RESULTS.md.

Usage (from the repository root):
  python -m benchmarks.suite_cache
  python -m benchmarks.suite_cache --thresholds=0.5,0 --files=tests/test_methods_e2e.py
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks import epoch_speed, worker

SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped)")


def outcome_counts(output: str) -> dict[str, int]:
  """Counts of pytest's last summary line ("3 passed, 1 failed in 2.0s") by outcome."""
  lines = [line for line in output.splitlines() if SUMMARY.search(line)]
  if not lines:
    return {}
  return {("error" if kind.startswith("error") else kind): int(n)
          for n, kind in SUMMARY.findall(lines[-1])}


def cache_size(directory: str) -> tuple[int, int]:
  """(files, bytes) under `directory`."""
  sizes = [os.path.getsize(os.path.join(root, name))
           for root, _, names in os.walk(directory) for name in names]
  return len(sizes), sum(sizes)


def run_files(files: Sequence[str], threshold: float, cache_dir: str) -> dict[str, Any]:
  """Runs `pytest -q files` with an empty cache at `cache_dir` and the given threshold.

  Raises:
    worker.WorkerFailed: pytest reported no outcome (the message holds the end of its
      output). Failing tests are counted, not raised: the timing is still comparable.
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(threshold),
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
  start = time.perf_counter()
  proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  wall_s = time.perf_counter() - start
  counts = outcome_counts(proc.stdout)
  if not counts:
    raise worker.WorkerFailed(f"pytest (threshold {threshold}) reported no outcome:\n"
                              + (proc.stdout + proc.stderr)[-3000:])
  entries, size = cache_size(cache_dir)
  print(f"threshold {threshold}: {wall_s:.1f} s, {counts}, {entries} cache files",
        flush=True)
  return {"wall_s": wall_s, "counts": counts, "cache_files": entries, "cache_bytes": size}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
  """Median wall time over the rounds of one threshold, with every round's figures."""
  return {"wall_s": statistics.median(r["wall_s"] for r in rounds),
          "counts": rounds[-1]["counts"], "cache_files": rounds[-1]["cache_files"],
          "cache_bytes": rounds[-1]["cache_bytes"], "rounds": rounds}


def markdown(result: dict[str, Any]) -> str:
  """The RESULTS.md section: one row per threshold, the wall time's ratio to the first."""
  args, rows = result["args"], result["thresholds"]
  base = next(iter(rows.values()))
  lines = epoch_speed.header_lines("suite_cache", result["environment"], result["command"])
  lines += [f"- files: {' '.join(args['files'])}; one pytest process each (no xdist), "
            f"empty cache every time; medians over {args['rounds']} interleaved rounds", "",
            "| min compile s | wall s | wall / first | outcomes | cache files | cache MiB |",
            "|---|---|---|---|---|---|"]
  for threshold, r in rows.items():
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(r["counts"].items()))
    lines.append(f"| {threshold} | {r['wall_s']:.1f} | {r['wall_s'] / base['wall_s']:.2f} "
                 f"| {outcomes} | {r['cache_files']} | {r['cache_bytes'] / 2**20:.1f} |")
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--thresholds", default="0.5,0",
                 help="comma-separated minimum compile seconds; the first is the reference")
  p.add_argument("--files", default="tests/test_methods_e2e.py",
                 help="comma-separated test files or node ids")
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--results_dir", default=epoch_speed.RESULTS_DIR)
  args = p.parse_args(argv)
  try:
    args.threshold_list = [float(t) for t in args.thresholds.split(",") if t]
  except ValueError:
    p.error(f"--thresholds must be comma-separated numbers, got {args.thresholds!r}")
  if not args.threshold_list or min(args.threshold_list) < 0:
    p.error(f"--thresholds must name at least one number >= 0, got {args.thresholds!r}")
  if args.rounds < 1:
    p.error(f"--rounds must be at least 1, got {args.rounds}")
  args.files = [f for f in args.files.split(",") if f]
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  rounds = []
  for _ in range(args.rounds):
    with tempfile.TemporaryDirectory(prefix="ltjax-suite-cache-") as scratch:
      rounds.append({t: run_files(args.files, t, os.path.join(scratch, f"cache-{t}"))
                     for t in args.threshold_list})
  rows = {t: summarise([r[t] for r in rounds]) for t in args.threshold_list}
  result = {"benchmark": "suite_cache",
            "command": epoch_speed.command_line("benchmarks.suite_cache"),
            "args": {k: v for k, v in vars(args).items() if k != "threshold_list"},
            "environment": epoch_speed.environment(),
            "thresholds": {str(t): row for t, row in rows.items()}}
  epoch_speed.publish("suite_cache", result, markdown(result), args.results_dir)
  return result


if __name__ == "__main__":
  main()
