"""Where a run's time goes: per launch (a segment) and summed over the launches of a run.

Every launch of a run (one process, or the processes of a multi-process job together) that
trains at least one epoch adds a segment to the workdir's run.json
(experiments/workdir.py); results.json's `timing` sums the segments, so a resumed run
reports the time of all its epochs and a rerun of a complete run (no epoch trained) keeps
the timing it had. A segment holds:

| field         | what is measured                                                        |
|---------------|-------------------------------------------------------------------------|
| import_s      | script start to `runner.run`: Python imports (jax, flax, ltjax), flag   |
|               | parsing, config resolution (0 for the later runs of one compare process) |
| data_s        | loading the dataset (decoding or cache) and putting it on the device    |
| compile_s     | JAX tracing, lowering to MLIR and XLA compilation (or persistent-cache  |
|               | retrieval) of everything the run compiles (model init, training step or |
|               | scan, evaluation), summed from `jax.monitoring` duration events         |
| train_s       | the rest of `fit`: steps, evaluations, checkpoints (fit's wall time     |
|               | minus the compilation inside it)                                        |
| wall_s        | import_s + the run's wall time up to the end of training (the plots and |
|               | the method's view drawn afterwards are not counted)                     |
| from_epoch, epochs, epoch_times_s | where the process started, how many epochs it   |
|               | trained, each epoch's wall time (the first includes its compilation)    |
| pid, host, finished | which process (process 0 of a job), and when its training ended  |
| processes     | every process of the launch: process_index, pid, host and its own    |
|               | import_s, data_s, compile_s, train_s, wall_s (`across_processes`)      |

The time fields of a multi-process launch are the slowest process's: the processes run side
by side, so the launch takes as long as its slowest one (each process's own figures stay
under `processes`).

`summary` adds `epoch_time_s`: the median epoch time over all segments, the first epoch of
each segment excluded (it compiles), or the first epochs when no other epoch ran.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
SUMMED = ("wall_s", "import_s", "data_s", "compile_s", "train_s")


@contextlib.contextmanager
def compile_clock() -> Iterator[Callable[[], float]]:
  """Yields a function returning the seconds JAX spent compiling since the block started."""
  total = [0.0]

  def listener(event: str, duration: float, **_: Any) -> None:
    if event in COMPILE_EVENTS:
      total[0] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield lambda: total[0]
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def segment(*, from_epoch: int, epoch_times: Sequence[float], import_s: float,
            data_s: float, compile_s: float, fit_s: float, fit_compile_s: float,
            run_s: float) -> dict[str, Any]:
  """One process's segment (module docstring); `fit_*`: fit's wall and compile time."""
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_epoch": from_epoch,
          "epochs": len(epoch_times), "import_s": import_s, "data_s": data_s,
          "compile_s": compile_s, "train_s": max(fit_s - fit_compile_s, 0.0),
          "wall_s": import_s + run_s, "epoch_times_s": [float(t) for t in epoch_times]}


HOST_BYTES = 64  # a host name's bytes gathered from every process


def across_processes(segment: dict[str, Any]) -> dict[str, Any]:
  """The launch's segment from this process's `segment` (module docstring).

  A collective when there are several processes: every process of the job calls it at the
  same point, and each gets the same result (one process: no communication).
  """
  own = [jax.process_index(), segment["pid"], *(segment[k] for k in SUMMED)]
  host = np.frombuffer(segment["host"].encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0"),
                       np.uint8)
  if jax.process_count() == 1:
    numbers, hosts = np.asarray([own], np.float64), host[None]
  else:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    numbers = np.asarray(multihost_utils.process_allgather(np.asarray(own, np.float64)))
    hosts = np.asarray(multihost_utils.process_allgather(host))
  processes = [{"process_index": int(row[0]), "pid": int(row[1]),
                "host": bytes(name).rstrip(b"\0").decode(errors="replace"),
                **{k: float(v) for k, v in zip(SUMMED, row[2:])}}
               for row, name in zip(numbers, hosts)]
  slowest = {k: max(p[k] for p in processes) for k in SUMMED}
  return {**segment, **slowest, "processes": processes}


def steady_epoch_time(segments: Sequence[dict[str, Any]]) -> float | None:
  """Median epoch time without each segment's first (compiling) epoch; None: no epoch."""
  times = [t for s in segments for t in s["epoch_times_s"][1:]]
  firsts = [s["epoch_times_s"][0] for s in segments if s["epoch_times_s"]]
  pool = times or firsts
  return float(np.median(pool)) if pool else None


def summary(segments: Sequence[dict[str, Any]], **extra: Any) -> dict[str, Any]:
  """results.json's `timing`: SUMMED fields as `<name>` totals (`wall_s` as `wall_time_s`),
  `epoch_time_s`, `first_epoch_time_s`, `epochs_trained`, the segments and `extra`."""
  totals = {("wall_time_s" if k == "wall_s" else k): float(sum(s[k] for s in segments))
            for k in SUMMED}
  firsts = [s["epoch_times_s"][0] for s in segments if s["epoch_times_s"]]
  return {**totals, "epoch_time_s": steady_epoch_time(segments),
          "first_epoch_time_s": firsts[0] if firsts else None,
          "epochs_trained": int(sum(s["epochs"] for s in segments)),
          "launches": len(segments), **extra, "segments": list(segments)}
