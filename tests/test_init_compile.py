"""benchmarks/init_compile.py: the ulp comparison, a real one-model run, its argument errors."""

import jax
import numpy as np
import pytest

from benchmarks import init_compile
from ltjax import reporting


def test_ulp_distance_counts_representable_floats_between():
  x = np.float32([1.0, -3.5, 0.0, 1e-30])
  two_up = np.nextafter(np.nextafter(x, np.float32(np.inf)), np.float32(np.inf))
  np.testing.assert_array_equal(init_compile.ulp_distance(x, two_up), 2)
  np.testing.assert_array_equal(init_compile.ulp_distance(x, x), 0)
  got = init_compile.compare_variables({"a": x, "b": np.float32([[2.0]])},
                                       {"a": two_up, "b": np.float32([[2.0]])})
  assert got == {"max_ulp": 2, "fraction_differing": 0.8, "values": 5}


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the default --options is an XLA:CPU setting")
def test_one_model_run_writes_a_row_that_compares_both_compiles(tmp_path):
  result = init_compile.main(["--models=mlp", "--rounds=1", f"--results_dir={tmp_path}"])
  (row,) = result["rows"]
  assert row["model"] == "mlp" and row["parameters"] == 64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
  assert row["default_compile_s"] > 0 and row["init_options_compile_s"] > 0
  assert 0 <= row["max_ulp"] <= 8 and row["fraction_differing"] < 0.5
  (path,) = tmp_path.glob("init_compile-*.json")
  assert reporting.read_json(str(path))["rows"][0]["model"] == "mlp"
  assert "| mlp | 8,970 |" in (tmp_path / "RESULTS.md").read_text()


def test_argument_errors_name_the_problem(capsys):
  for argv, message in ((["--models=mlp,vit"], "unknown ['vit']"),
                        (["--rounds=0"], "--rounds=0: must be >= 1")):
    with pytest.raises(SystemExit):
      init_compile.parse_args(argv)
    assert message in capsys.readouterr().err
