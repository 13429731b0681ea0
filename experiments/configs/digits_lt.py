"""Digits-LT, the quickstart: scikit-learn's 8x8 digits, long-tailed (rho=10), SmallCNN, CPU.

About 1,200 training images before subsampling (about 450 after, 120 down to 12 per class);
no file needed. Every method keeps its CIFAR-LT protocol's *shape* (`protocol=paper`, default,
or `protocol=code`: warm-up, milestones, DRW / deferral / stage-2 epochs, CP-Mix
fine-tuning, OTmix's schedule) rescaled to 100 epochs, with a SmallCNN, batch 32, lr 0.05,
1-pixel crop jitter, no flips (digits are not mirror-symmetric) and the training set's
normalisation statistics.

Quickstart (every seed method and the baselines, a few minutes on 2 CPU cores):
  python -m experiments.compare --config=experiments/configs/digits_lt.py
One method:
  python -m experiments.train --config=experiments/configs/digits_lt.py:method=lobm_star \
      --workdir=/tmp/digits_lobm
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "digits_lt"}
BASE = {
    "batch_size": 32,
    "model": {"name": "small_cnn"},
    "optim": {"lr": 0.05},
    "augment": {"pad": 1, "flip": False},
    "normalize": "dataset",
    "eval_every": 5,
    "checkpoint_every": 5,
    "eval_batch_size": 512,
    "analysis_draws": 10,
    "reproduces": "nothing: the quickstart's toy dataset",
}
QUICK = {"num_epochs": 3, "batch_size": 32}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE, quick=QUICK, default_rho=10.0,
                            default_epochs=100)
