"""Sweeps: compare's --parallel workers (one per method) and benchmarks/sweep.py's report."""

import os
import subprocess
import sys

from benchmarks import sweep
from experiments import compare
from ltjax import reporting


def test_one_worker_per_method_with_its_pending_seeds_in_order():
  pending = [("erm", 0), ("erm", 2), ("otmix", 1), ("erm", 5)]
  assert compare.worker_groups(pending) == [("erm", [0, 2, 5]), ("otmix", [1])]
  assert not compare.worker_groups([])


def test_run_output_goes_to_the_run_folder_only_when_asked(tmp_path, capsys):
  directory = str(tmp_path / "m" / "seed0")
  with compare._run_output(directory, True):
    print("inside")
    print("also inside", file=sys.stderr)
  with compare._run_output(str(tmp_path / "other"), False):
    print("outside")
  with open(os.path.join(directory, "stdout.log")) as f:
    assert f.read() == "inside\nalso inside\n"
  assert capsys.readouterr().out == "outside\n"
  assert not os.path.exists(tmp_path / "other")


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    f.write(text)


def test_worker_failures_come_from_this_workers_reports(tmp_path):
  workdir = str(tmp_path)
  logs = {s: os.path.join(compare.run_dir(workdir, "mixup", s), "stdout.log")
          for s in (0, 1, 2, 3)}
  worker_log = os.path.join(workdir, "mixup", "worker.log")
  _write(logs[0], "mixup seed 0 failed: an older failure (log: old)\n")  # before the worker
  _write(worker_log, "an older worker's last line\n")
  offsets = {path: os.path.getsize(path) if os.path.exists(path) else 0
             for path in [*logs.values(), worker_log]}
  _write(logs[0], "=== mixup seed 0\nmixup seed 0 failed: workdir x is in use (log: e)\n")
  reporting.write_json(os.path.join(compare.run_dir(workdir, "mixup", 1), "results.json"),
                       {"extra": {"complete": True}})  # trained: no failure
  _write(logs[2], "=== mixup seed 2\n")  # the worker died during this run
  _write(worker_log, "Comparing ...\nKilled\n")  # seed 3: never reached
  proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
  proc.wait()
  with open(worker_log) as log:
    worker = compare._Worker("mixup", [0, 1, 2, 3], proc, log, offsets)
    failures = worker.failures(workdir)
  assert failures == [
      {"method": "mixup", "seed": 0, "reason": "workdir x is in use", "log": logs[0]},
      {"method": "mixup", "seed": 2, "reason": "Killed", "log": worker_log},
      {"method": "mixup", "seed": 3, "reason": "Killed", "log": worker_log}]
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  with open(worker_log) as log:  # exit status 0: every run trained
    assert not compare._Worker("mixup", [0, 2], proc, log, offsets).failures(workdir)


def _timing(wall, compile_s, train):
  return {"wall_time_s": wall, "import_s": 1.0, "data_s": 0.5, "compile_s": compile_s,
          "train_s": train, "epoch_time_s": 0.02}


def test_sweep_reads_each_runs_timing_and_reports_the_ratio(tmp_path):
  run = tmp_path / "erm" / "seed0"
  reporting.write_json(str(run / "results.json"), {"timing": _timing(10.0, 6.0, 3.0)})
  timing = sweep.run_timing(str(run))
  assert timing["other_s"] == 1.0 and timing["compile_s"] == 6.0
  args = sweep.parse_args(["--methods=erm", "--seeds=0", "--config_args=epochs=2", "--",
                           "--config.plots=False"])
  command = sweep.compare_command(args, "/w", "/c")
  assert "--config=experiments/configs/digits_lt.py:epochs=2" in command
  assert command[-1] == "--config.plots=False" and "--compilation_cache=/c" in command
  phase = lambda wall, cpu, entries, run: {  # noqa: E731
      "wall_s": wall, "cpu_s": cpu, "load_before": 1.0, "runs_wall_s": run["wall_time_s"],
      "outside_runs_s": wall - run["wall_time_s"],
      "cache": {"entries": entries, "bytes": 2**20}, "runs": {"erm/seed0": run}}
  result = {"args": vars(args) | {"method_list": None}, "command": "python -m ...",
            "environment": {"device_kind": "cpu", "backend": "cpu", "utc": "now",
                            "jax": "j", "jaxlib": "j", "flax": "f", "optax": "o",
                            "ltjax": "l", "python": "p", "device_count": 1},
            "phases": {"cold": phase(20.0, 18.0, 5, {**timing}),
                       "warm": phase(6.0, 5.4, 5, {**timing, "wall_time_s": 5.0})},
            "ratio": 0.3, "cpu_ratio": 0.3}
  text = sweep.markdown(result)
  assert "**warm / cold wall: 0.30**" in text and "0 new after warm" in text
  assert "| cold | 20.0 | 18.0 | 10.0 | 10.0 | 6.0 | 3.0 | 1.0 |" in text
  assert "| erm/seed0 | 10.0 / 5.0 | 6.0 / 6.0 |" in text
