"""ltjax: long-tailed image recognition with mixup, functionally in JAX/Flax.

The primitives are pure functions grouped by concept:

- `ltjax.longtail`: long-tailed class counts and seeded subsets.
- `ltjax.samplers`: class-conditional, PRNG-keyed index draws.
- `ltjax.mixing`, `ltjax.label_rules`: input mixing (mixup, CutMix) and label rules.
- `ltjax.pairing`: random, nearest-neighbour, confusion and optimal-transport pairs.
- `ltjax.losses`, `ltjax.metrics`, `ltjax.augment`.

Heavier pieces load on first access: `ltjax.models` (Flax), `ltjax.training` (optax,
orbax), `ltjax.methods` (the recipes), `ltjax.data` (datasets), `ltjax.reporting` and
`ltjax.plots` (matplotlib). Optional or slow dependencies load only where they are used:
ott-jax with the first OT solve (`ltjax.pairing`), scikit-learn with the digits dataset,
grain (the `grain` extra) with `ltjax.data.pipeline`.

`__version__` is the package's one version number (pyproject.toml reads it).
"""

import importlib

__version__ = "0.1.0"

_LAZY_SUBMODULES = (
    "augment", "data", "label_rules", "longtail", "losses", "methods", "metrics",
    "mixing", "models", "pairing", "plots", "recipe", "reporting", "samplers", "training",
)


def __getattr__(name: str):
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"ltjax.{name}")
  raise AttributeError(f"module 'ltjax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY_SUBMODULES))
