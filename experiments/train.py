r"""Trains one method on one long-tailed dataset and writes everything to its workdir.

Usage (from the repository root):

  python -m experiments.train \
      --config=experiments/configs/cifar10_lt.py:method=dbn_mix,protocol=code,rho=100 \
      --config.recipe.alpha=0.5 --workdir=/tmp/dbn_mix

  # smoke run: few epochs, small model
  python -m experiments.train --config=experiments/configs/digits_lt.py:method=mixup,quick \
      --workdir=/tmp/quick

The text after the colon selects method, protocol (paper: the method's recipe as its paper
states it, default; code: as its authors' code trains it), rho, profile, seed, epochs,
quick (see experiments/configs/common.py); `--config.X=Y` changes any resolved field. The run prints
the resolved config, shows a progress bar (loss, lr), evaluates on the test set every
`eval_every` epochs and resumes from the latest checkpoint when the workdir has one.
Method, dataset and model names, and the method / model combination, are checked before
any data is loaded or anything is compiled.

Workdir after a run:
  config.json      the resolved config (model name resolved for dual-branch methods)
  dataset.json     class counts (train / test), profile, rho, seed, source
  env.json         ltjax / jax versions, devices
  metrics.jsonl    one row per epoch: train/loss, train/lr, ..., eval/top1, eval/many, ...
  events.out.tfevents.*  the same scalars for TensorBoard
  results.json     final and best metrics, per-class accuracy, confusion, timing, and the
                   protocol (paper / code, the published table it reproduces, sources)
  per_class_accuracy.png, confusion.png, and the method's view (label_occurrence.png,
  temperatures.png, cp_confusion_pairs.png, pair_statistics.png)
  checkpoints/     orbax checkpoints (experiments/evaluate.py re-evaluates them)

Flags: --jax_distributed (or config.jax_distributed) calls
`ltjax.training.sharding.initialize_distributed()` first; config.num_devices (0: all local
devices) sets the data-parallel mesh; --stop_after=E stops after E epochs (a later run in
the same workdir resumes).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import runner

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: experiments/configs/<dataset>.py[:args].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (created; resumed if present).")
_JAX_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() before anything else.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after", None, "Stop after this many epochs; rerun to resume.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  runner.maybe_initialize_distributed(config, _JAX_DISTRIBUTED.value)
  print("Resolved config:\n" + str(config), flush=True)
  runner.run(config, _WORKDIR.value, stop_after=_STOP_AFTER.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
