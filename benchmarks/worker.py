"""Benchmark workers in subprocesses: one JSON result line from the child to the parent.

XLA_FLAGS (and CPU affinity) are read once, when a process starts its backend, so the
benchmarks that compare XLA:CPU settings (cpu_step.py, scan_slowdown.py, compile_flags.py)
run each setting in a fresh `python -m benchmarks.<name> --worker...` process. The child
prints its result with `report`; the parent reads it back with `run`.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, Callable, Mapping, Sequence

RESULT_PREFIX = "BENCHMARK_WORKER_RESULT "
_TAIL = 2000


class WorkerFailed(RuntimeError):
  """The worker exited with an error or printed no result; the message is its output's end."""


def report(result: Mapping[str, Any]) -> None:
  """In the child: prints `result` as the line `run` reads back."""
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def run(command: Sequence[str], env: Mapping[str, str],
        preexec_fn: Callable[[], None] | None = None) -> dict[str, Any]:
  """Runs `command` with `env`; returns the last result it `report`ed.

  Raises:
    WorkerFailed: the command failed or reported nothing (the message holds the end of its
      stderr, or of its stdout when stderr is empty).
  """
  proc = subprocess.run(list(command), env=dict(env), capture_output=True, text=True,
                        check=False, preexec_fn=preexec_fn)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  if proc.returncode or not lines:
    raise WorkerFailed((proc.stderr or proc.stdout)[-_TAIL:])
  return json.loads(lines[-1][len(RESULT_PREFIX):])
