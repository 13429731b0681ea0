"""Test-session settings.

JAX's persistent compilation cache is shared by the test processes and the scripts and
notebooks they start: the same small models and recipes are compiled by many tests, and
compilation dominates their CPU time.
"""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
