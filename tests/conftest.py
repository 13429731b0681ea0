"""Test-session settings.

JAX's persistent compilation cache is shared by the test processes and the scripts and
notebooks they start: the same small models and recipes are compiled by many tests, and
compilation dominates their CPU time. Every program is cached, however short its compile
(as the experiment scripts do, `experiments.cli.enable_compilation_cache`): most of the
suite's repeated programs (a small model's `init`, an evaluation's `batch_counts`) compile
in 0.2-0.6 s, under JAX's threshold (1 s by default, 0.5 s here before), and each
`trainer.fit` builds new jitted functions, so without the disk cache every test compiles
them again. Measured by benchmarks/suite_cache.py: tests/test_methods_e2e.py in one
process, 148 s -> 135 s.
"""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
