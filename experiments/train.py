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
quick (see experiments/configs/common.py); `--config.X=Y` changes any resolved field, e.g.
`--config.dataset.data_dir=/data/cifar` (where the dataset's files are; default: the
search path of `ltjax.data`, `LTJAX_DATA_DIR`). The run prints the resolved config as
`field.path = value` lines, shows a progress bar (epoch, steps, ETA, images/s, loss, lr,
latest test top-1), evaluates on the test set every
`eval_every` epochs and resumes from the latest checkpoint when the workdir has one.
Method, dataset and model names, the method / model combination and the batch size are
checked before any data is loaded or anything is compiled.

Errors of the user (unknown names or fields, a config the method rejects, a workdir in
use or holding another run, missing data files, a full disk) are one line on stderr and
exit status 2; a traceback means a bug.

Workdir rules (experiments/workdir.py):
  fingerprint  a rerun continues the run in the workdir only if its config has the same
               fingerprint (every field but reporting / cadence / placement ones, listed
               in experiments/workdir.py); otherwise it stops, naming the differing fields
               (`optim.lr: 0.05 -> 0.07`), unless --on_mismatch=fresh (the old run moves to
               `<workdir>-old<N>`) or --on_mismatch=fork (trains in `<workdir>-fork<N>`).
  lock         one run per workdir (`<workdir>/.lock`, PID and host; process 0 holds it
               for every process of a multi-process run); a second one stops with
               "workdir <path> is in use by process N (host H)". A lock left by a killed
               process on this host is taken over.
  config.json  written before training a new run, and only after the restore (and the
               training) of a resumed one.

Workdir after a run:
  config.json      the resolved config (model name resolved for dual-branch methods)
  run.json         the config fingerprint and its fields; one timing segment per process
  dataset.json     class counts (train / test), profile, rho, seed, source
  env.json         ltjax / jax versions, devices
  metrics.jsonl    one row per epoch (with its global `step`): train/loss, train/lr, ...,
                   eval/top1, eval/loss, eval/many, ...
  events.out.tfevents.*  TensorBoard: the same scalars on the global-step axis (epoch as a
                   scalar), per-class test accuracy, and the resolved config as hparams
  results.json     final and best metrics, per-class accuracy, confusion, the fingerprint,
                   the protocol (paper / code, the published table it reproduces, sources)
                   and timing: import, data, compile and training seconds summed over the
                   processes that trained the run, each process's segment, the median
                   epoch time (experiments/timing.py)
  per_class_accuracy.png, confusion.png, and the method's view (label_occurrence.png,
  temperatures.png, cp_confusion_pairs.png, pair_statistics.png)
  checkpoints/     orbax checkpoints (experiments/evaluate.py re-evaluates them)

Flags: --jax_distributed (or config.jax_distributed), or --coordinator_address /
--num_processes / --process_id for a multi-process run, call
`ltjax.training.sharding.initialize_distributed` first (JAX detects what is not given on
SLURM and TPU pods). Every process of such a run starts the same command and trains on a
mesh over all the processes' devices; process 0 alone claims and locks the workdir
(the others follow it, forks included), logs, and writes the files above but the
checkpoints, which orbax writes from every process, so the workdir must be on a
filesystem they all see; a checkpoint resumes in any number of processes.
config.num_devices (0: all devices; a multi-process run uses all) sets the data-parallel
mesh; --stop_after=E (>= 1) stops after E epochs of the run
(a later run in the same workdir resumes). A stop before the first evaluation exits 0 with
"stopped after epoch E (checkpoint saved); no evaluation yet, rerun to continue" and writes
no results.json (nothing was evaluated; the next evaluation is the config's own).
--on_mismatch=refuse|fresh|fork (default refuse) settles a workdir holding another config.
"""

from __future__ import annotations

from experiments import cli  # first: its import time is the script's start

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import runner
from experiments import workdir as workdir_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so the three scripts import side by side)."""
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config: experiments/configs/<dataset>.py[:args].",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Run folder (created; resumed if present).")
  cli.define_distributed_flags()
  flags.DEFINE_integer("stop_after", None, "Stop after this many epochs (>= 1); rerun to "
                       "resume.")
  flags.DEFINE_enum("on_mismatch", "refuse", workdir_lib.ON_MISMATCH,
                    "When the workdir holds a run of another config: refuse, fresh (move it "
                    "to <workdir>-old<N>) or fork (train in <workdir>-fork<N>).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  runner.check_stop_after(FLAGS.stop_after)
  config = FLAGS.config
  runner.maybe_initialize_distributed(config, cli.distributed_coordinates())
  print("Resolved config:\n" + cli.format_config(config), flush=True)
  runner.run(config, FLAGS.workdir, stop_after=FLAGS.stop_after,
             on_mismatch=FLAGS.on_mismatch, import_s=cli.seconds_since_start())


def run() -> None:
  """The script (`python -m experiments.train`, the `ltjax-train` console script)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
