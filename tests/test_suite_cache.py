"""benchmarks/suite_cache.py: pytest's outcome line, the cache threshold, its arguments."""

import pytest

from benchmarks import suite_cache, worker

# A test file that compiles one small program (about 0.01-0.1 s on XLA:CPU).
TINY_TEST = """
import jax, jax.numpy as jnp

def test_compiles():
  assert float(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.float32(0.0))) == 0.0
"""


def test_outcome_counts_read_the_last_summary_line():
  output = "collected 5 items\n..F.s\nFAILED t.py::x\n3 passed, 1 failed, 1 skipped in 2.1s\n"
  assert suite_cache.outcome_counts(output) == {"passed": 3, "failed": 1, "skipped": 1}
  assert suite_cache.outcome_counts("2 passed, 1 error in 1s") == {"passed": 2, "error": 1}
  assert suite_cache.outcome_counts("ImportError: no module") == {}


def test_the_threshold_decides_what_reaches_the_cache(tmp_path):
  test_file = tmp_path / "test_tiny.py"
  test_file.write_text(TINY_TEST)
  every = suite_cache.run_files([str(test_file)], 0.0, str(tmp_path / "every"))
  none = suite_cache.run_files([str(test_file)], 1e6, str(tmp_path / "none"))
  assert every["counts"] == none["counts"] == {"passed": 1}
  assert every["cache_files"] > 0 and every["cache_bytes"] > 0
  assert none["cache_files"] == 0


def test_a_run_without_an_outcome_fails_with_its_output(tmp_path):
  with pytest.raises(worker.WorkerFailed, match="reported no outcome"):
    suite_cache.run_files([str(tmp_path / "missing_dir" / "test_nothing.py")], 0.0,
                          str(tmp_path / "cache"))


@pytest.mark.parametrize("argv, message", [
    (["--thresholds=a,b"], "comma-separated numbers"),
    (["--thresholds=-1"], ">= 0"),
    (["--rounds=0"], "at least 1"),
])
def test_bad_arguments_name_the_problem(argv, message, capsys):
  with pytest.raises(SystemExit):
    suite_cache.parse_args(argv)
  assert message in capsys.readouterr().err
