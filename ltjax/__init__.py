"""ltjax: long-tailed image recognition with mixup, functionally in JAX/Flax."""

__version__ = "0.1.0"
