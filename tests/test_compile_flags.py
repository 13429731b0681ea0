"""benchmarks/compile_flags.py's parameter comparison and medians; benchmarks/worker.py;
the results files every benchmark writes (`epoch_speed.publish`)."""

import datetime
import os
import pathlib
import sys

import numpy as np
import pytest

from benchmarks import compile_flags, epoch_speed, worker
from ltjax import reporting

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_parameter_comparison_finds_the_largest_difference(tmp_path):
  a, b, c = (str(tmp_path / f"{n}.npz") for n in "abc")
  np.savez(a, np.float32([1.0, 2.0]), np.float32([[3.0]]))
  np.savez(b, np.float32([1.0, 2.0]), np.float32([[3.0]]))
  np.savez(c, np.float32([1.0, 2.5]), np.float32([[2.0]]))
  assert compile_flags.compare_params(b, a) == {"max_abs_diff": 0.0, "bit_identical": True}
  assert compile_flags.compare_params(c, a) == {"max_abs_diff": 1.0, "bit_identical": False}


def test_summary_takes_medians_over_rounds():
  rounds = [{"compile_s": s, "step_ms": m, "loss": 1.0}
            for s, m in ((3.0, 10.0), (1.0, 30.0), (2.0, 20.0))]
  summary = compile_flags.summarise("o0", rounds)
  assert (summary["compile_s"], summary["step_ms"]) == (2.0, 20.0)
  assert summary["xla_flags"] == compile_flags.FLAG_SETS["o0"]


def test_worker_result_crosses_the_process_boundary_and_failures_name_the_error():
  report = "from benchmarks import worker; worker.report({'compile_s': 1.5, 'rows': [1, 2]})"
  path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
  env = {**os.environ, "PYTHONPATH": path}
  assert worker.run([sys.executable, "-c", f"print('noise'); {report}"], env) == {
      "compile_s": 1.5, "rows": [1, 2]}
  with pytest.raises(worker.WorkerFailed, match="ZeroDivisionError"):
    worker.run([sys.executable, "-c", "1 / 0"], env)
  with pytest.raises(worker.WorkerFailed):
    worker.run([sys.executable, "-c", "print('no result')"], env)


def test_publish_writes_the_json_appends_the_section_and_prints_both(tmp_path, capsys):
  first = epoch_speed.publish("demo", {"figure": 1.5}, "## demo\n\n| a |\n", str(tmp_path))
  second = epoch_speed.publish("other", {"figure": 2.5}, "## other", str(tmp_path))
  assert reporting.read_json(first) == {"figure": 1.5}
  assert reporting.read_json(second) == {"figure": 2.5}
  assert pathlib.Path(first).name.startswith(f"demo-{epoch_speed.device_slug()}-")
  results_md = (tmp_path / "RESULTS.md").read_text()
  assert results_md == "## demo\n\n| a |\n\n## other\n\n"
  printed = capsys.readouterr().out
  assert f"| a |\n\nwrote {first}\n" in printed and printed.endswith(f"wrote {second}\n")


def test_results_of_one_second_get_their_own_files(tmp_path, monkeypatch):
  class Frozen(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return datetime.datetime(2026, 12, 8, 1, 2, 3, tzinfo=tz)
  monkeypatch.setattr(epoch_speed.datetime, "datetime", Frozen)
  paths = [epoch_speed.write_results("demo", {"run": i}, f"## {i}", str(tmp_path))
           for i in range(3)]
  stem = f"demo-{epoch_speed.device_slug()}-2026-12-08-010203"
  assert [pathlib.Path(p).name for p in paths] == [
      f"{stem}.json", f"{stem}-2.json", f"{stem}-3.json"]
  assert [reporting.read_json(p)["run"] for p in paths] == [0, 1, 2]
