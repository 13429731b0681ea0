"""Digits-LT, the quickstart: scikit-learn's 8x8 digits, long-tailed (rho=10), SmallCNN, CPU.

About 1,200 training images before subsampling (about 450 after, 120 down to 12 per class);
no file needed. Every method keeps its CIFAR-LT protocol's *shape* (`protocol=paper`, default,
or `protocol=code`: warm-up, milestones, DRW / deferral / stage-2 epochs, CP-Mix
fine-tuning, OTmix's schedule) rescaled to 100 epochs, with a SmallCNN, batch 32, lr 0.05,
1-pixel crop jitter, no flips (digits are not mirror-symmetric) and the training set's
normalisation statistics.

Quickstart (ERM and one method per seed paper, 3 seeds each, mean +- std; a few minutes on
2 CPU cores; `--methods=` / `--seeds=` choose others, e.g. every name of `common.SEED_METHODS`):
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
    # An orbax save costs about 0.15 s here, several epochs' worth: 4 saves per run, not 20
    # (a killed run redoes at most 24 epochs, about a second).
    "checkpoint_every": 25,
    "eval_batch_size": 512,
    # Extra phases at the run's batch size (RIDE's routing stage asks for 512: more than
    # the training set at rho=10).
    "finetune": {"batch_size": 0},
    "analysis_draws": 10,
    "reproduces": "nothing: the quickstart's toy dataset",
    # ERM and one method per seed paper (Mixup-DRW for MAMix, whose paper recommends it for
    # general imbalance), over 3 seeds: one seed's top-1 varies by 1.4-2.1 points here.
    # 18 runs take the wall time of the former 11 methods x 1 seed (benchmarks/README.md).
    "methods": "erm,mixup_drw,lobm_star,dbn_mix,cp_mix,otmix",
    "seeds": "0,1,2",
}
QUICK = {"num_epochs": 3, "batch_size": 32}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE, quick=QUICK, default_rho=10.0,
                            default_epochs=100)
