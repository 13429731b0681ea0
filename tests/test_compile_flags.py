"""benchmarks/compile_flags.py: the parameter comparison and the medians it reports."""

import numpy as np

from benchmarks import compile_flags


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
