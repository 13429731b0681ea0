"""The README's Python examples run as written (API tour and the custom recipe)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
  proc = subprocess.run([sys.executable, "-c", BLOCKS[index]], capture_output=True,
                        text=True, timeout=600, cwd=README.parent)
  # A smoke test by design: the examples' API is tested by the module tests; here, that
  # the README's code runs as written.
  assert proc.returncode == 0, proc.stderr[-3000:]
