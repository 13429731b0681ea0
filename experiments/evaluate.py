r"""Re-evaluates a run's checkpoint on the test set and writes eval.json.

Usage:

  python -m experiments.evaluate --workdir=/tmp/dbn_mix            # latest checkpoint
  python -m experiments.evaluate --workdir=/tmp/dbn_mix --epoch=150 --output=/tmp/e.json

It rebuilds the dataset, model and recipe from the run's config.json (so the same
long-tailed subset, normalisation and inference logits: dual-branch models average their
branches), restores the orbax checkpoint into that structure and prints top-1, top-5,
many / medium / few accuracy. eval.json (default `<workdir>/eval.json`) holds these, the
per-class accuracy and the confusion matrix.

A workdir without config.json or without a complete checkpoint (or without the one asked
for by --epoch, then the epochs that have one are listed) is a user error: one line on
stderr, exit status 2 (experiments/cli.py). The data directory of the run's config.json is
used unless --data_dir gives another.
"""

from __future__ import annotations

from experiments import cli  # first: its import time is the script's start

import os
from typing import Any

from absl import flags
from absl import logging
import ml_collections

from experiments import runner
from experiments.cli import UserError
from ltjax import reporting
from ltjax.training import evaluation
from ltjax.training.checkpoint import Checkpointer
from ltjax.training import trainer
from ltjax.training.state import create_state, run_keys

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so the three scripts import side by side)."""
  flags.DEFINE_string("workdir", None, "Run folder with config.json and checkpoints/.")
  flags.DEFINE_integer("epoch", None, "Checkpoint (completed epochs); default latest.")
  flags.DEFINE_string("output", None, "Where to write eval.json.")
  flags.DEFINE_string("data_dir", None,
                      "Where the dataset's files are (default: the run's config).")
  flags.mark_flags_as_required(["workdir"])


def read_config(workdir: str, data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The run's config.json (with `dataset.data_dir` replaced when `data_dir` is given)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: is {workdir} a run folder? Train one with "
                    f"python -m experiments.train --config=... --workdir={workdir}.")
  config = ml_collections.ConfigDict(reporting.read_json(path))
  if data_dir is not None:
    with config.unlocked():
      config.dataset.data_dir = data_dir
  return config


def checkpoint_epoch(ckpt: Checkpointer, workdir: str, epoch: int | None) -> int:
  """`epoch`, or the latest, checked to have a complete checkpoint.

  Raises:
    UserError: no checkpoint at all (says how to train), or none for `epoch` (lists the
      epochs that have one).
  """
  epochs = ckpt.all_epochs()
  if not epochs:
    raise UserError(f"no complete checkpoint in {ckpt.directory}: train (or resume) the run "
                    f"with python -m experiments.train --config=... --workdir={workdir}.")
  if epoch is not None and epoch not in epochs:
    raise UserError(f"no complete checkpoint for epoch {epoch} in {ckpt.directory}; epochs "
                    f"with one: {', '.join(map(str, epochs))}.")
  return epochs[-1] if epoch is None else epoch


def evaluate_checkpoint(workdir: str, epoch: int | None = None,
                        data_dir: str | None = None) -> dict[str, Any]:
  """Test metrics of the checkpoint after `epoch` epochs (default: latest) of a run."""
  config = read_config(workdir, data_dir)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"{workdir} has no checkpoints/ folder: train the run first with "
                    f"python -m experiments.train --config=... --workdir={workdir}.")
  ckpt = Checkpointer(workdir)
  try:
    epoch = checkpoint_epoch(ckpt, workdir, epoch)
    ds = runner.load_dataset(config)
    rcp, model = runner.check_setup(config, ds.num_classes, ds.train_images.shape[1:])
    normalize_fn, _ = runner.normalizer(config, ds.train_images)
    phases = runner.build_phases(config, rcp, ds.train_labels.size)
    counts = ds.train_counts
    index = ckpt.metadata(epoch)["phase"]
    phase = phases[index]
    fresh = create_state(model, phases[0].recipe, phases[0].tx,
                         normalize_fn(ds.train_images[:1]), run_keys(config.seed).init, counts)
    state, meta = ckpt.restore(trainer.phase_template(fresh, phases, index, counts), epoch)
  finally:
    ckpt.close()
  eval_fn = evaluation.make_eval_fn(model.apply, phase.recipe, config.eval_batch_size,
                                    normalize_fn)
  result = evaluation.evaluate(eval_fn, state.params, state.batch_stats, ds.test_images,
                               ds.test_labels, counts)
  return {"workdir": os.path.abspath(workdir), "epoch": meta["epoch"],
          "phase": meta["phase"], "method": config.method, **result}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise UserError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  output = FLAGS.output or os.path.join(FLAGS.workdir, "eval.json")
  with cli.disk_full_errors(output):
    result = evaluate_checkpoint(FLAGS.workdir, FLAGS.epoch, FLAGS.data_dir)
    reporting.write_json(output, result)
  print(f"{result['method']} after epoch {result['epoch']}: top-1 "
        f"{100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}  many "
        f"{runner.pct(result['many'])}  medium {runner.pct(result['medium'])}  few "
        f"{runner.pct(result['few'])}  -> {output}")


def run() -> None:
  """The script (`python -m experiments.evaluate`, the `ltjax-evaluate` console script)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
