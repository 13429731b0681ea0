"""benchmarks/resume_compile.py: cache entries named by program, its table, argument errors
(the real two-process run is tests/test_compile_once.py's resumed-run test)."""

import pytest

from benchmarks import resume_compile


def test_cache_entries_are_counted_by_program():
  h1, h2 = "a" * 64, "0123456789abcdef" * 4
  entries = {f"jit_step-{h1}-cache", f"jit_step-{h2}-cache", f"jit_scatter-add-{h1}-cache",
             f"jit_step-{h1}-atime", "README"}
  assert resume_compile.program_names(entries) == {"jit_scatter-add": 1, "jit_step": 2}


def test_table_names_the_resumed_processs_new_programs():
  segment = {"from_epoch": 2, "epochs": 2, "compile_s": 5.3, "epoch_times_s": [2.75, 2.84]}
  many = {f"jit_op{i}": 1 for i in range(resume_compile.MAX_LISTED + 1)}
  result = {"args": {"config": "c.py", "config_args": "method=cp_mix", "stop_after": 2},
            "environment": {"device_kind": "cpu", "backend": "cpu", "utc": "now",
                            "jax": "0", "jaxlib": "0", "flax": "0", "optax": "0",
                            "ltjax": "0", "python": "3", "device_count": 1},
            "command": "python -m benchmarks.resume_compile",
            "processes": {"first": {"wall_s": 22.5, "new_programs": many,
                                    "segment": {**segment, "from_epoch": 0}},
                          "resumed": {"wall_s": 14.9, "segment": segment,
                                      "new_programs": {"jit_begin_epoch": 1, "jit_step": 2}}}}
  text = resume_compile.markdown(result)
  assert (f"| first | 22.5 | 0 | 2 | 5.3 | 2.75 / 2.84 | {len(many)}: listed in the JSON "
          "file |") in text
  assert "| resumed | 14.9 | 2 | 2 | 5.3 | 2.75 / 2.84 | 3: jit_begin_epoch, jit_step x2 |" in text


def test_argument_errors_name_the_problem(capsys):
  for argv, message in ((["--stop_after=0"], "--stop_after=0: must be >= 1"),
                        (["--config=nowhere.py"], "--config=nowhere.py: no such file")):
    with pytest.raises(SystemExit):
      resume_compile.parse_args(argv)
    assert message in capsys.readouterr().err
