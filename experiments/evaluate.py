r"""Re-evaluates a run's checkpoint on the test set and writes eval.json.

Usage:

  python -m experiments.evaluate --workdir=/tmp/dbn_mix            # latest checkpoint
  python -m experiments.evaluate --workdir=/tmp/dbn_mix --epoch=150 --output=/tmp/e.json

It rebuilds the dataset, model and recipe from the run's config.json (so the same
long-tailed subset, normalisation and inference logits: dual-branch models average their
branches), restores the orbax checkpoint into that structure and prints top-1, top-5,
many / medium / few accuracy. eval.json (default `<workdir>/eval.json`) holds these, the
per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

import os
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

from experiments import runner
from ltjax import reporting
from ltjax.training import evaluation
from ltjax.training.checkpoint import Checkpointer
from ltjax.training.state import create_state, run_keys, start_phase

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder with config.json and checkpoints/.")
_EPOCH = flags.DEFINE_integer("epoch", None, "Checkpoint (completed epochs); default latest.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write eval.json.")


def evaluate_checkpoint(workdir: str, epoch: int | None = None) -> dict[str, Any]:
  """Test metrics of the checkpoint after `epoch` epochs (default: latest) of a run."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {workdir} a run folder?")
  config = ml_collections.ConfigDict(reporting.read_json(config_path))
  ds = runner.load_dataset(config)
  rcp, model = runner.check_setup(config, ds.num_classes, ds.train_images.shape[1:])
  normalize_fn, _ = runner.normalizer(config, ds.train_images)
  phases = runner.build_phases(config, rcp, ds.train_labels.size)
  counts = ds.train_counts
  ckpt = Checkpointer(workdir)
  try:
    meta = ckpt.metadata(epoch)
    phase = phases[meta["phase"]]
    fresh = create_state(model, phases[0].recipe, phases[0].tx,
                         normalize_fn(ds.train_images[:1]), run_keys(config.seed).init, counts)
    state, meta = ckpt.restore(start_phase(fresh, phase.recipe, phase.tx, counts),
                               meta["epoch"])
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
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  result = evaluate_checkpoint(_WORKDIR.value, _EPOCH.value)
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, "eval.json")
  reporting.write_json(output, result)
  print(f"{result['method']} after epoch {result['epoch']}: top-1 "
        f"{100 * result['top1']:.2f}  top-5 {100 * result['top5']:.2f}  many "
        f"{runner.pct(result['many'])}  medium {runner.pct(result['medium'])}  few "
        f"{runner.pct(result['few'])}  -> {output}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
