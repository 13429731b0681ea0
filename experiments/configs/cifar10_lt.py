"""CIFAR-10-LT: exponential profile (rho=100 by default), ResNet-32, the papers' recipes.

Every method uses its paper's CIFAR recipe (`common.METHOD_RECIPES`); DBN-Mix eta=3,
eps=0.6 (DBN-Mix paper, CIFAR-10); CP-Mix fine-tunes the classifier at lr 0.1.

Usage:
  python -m experiments.train \
      --config=experiments/configs/cifar10_lt.py:method=dbn_mix,rho=100 \
      --config.optim.lr=0.05 --workdir=/tmp/dbn_mix
  python -m experiments.compare --config=experiments/configs/cifar10_lt.py:rho=100 \
      --methods=erm,mixup_drw,dbn_mix --seeds=0,1,2 --workdir=/tmp/cifar10_lt
Arguments: method, rho, profile (exp|step), seed, epochs (rescales the recipe), quick.
"""

from experiments.configs import common

DATASET = {"name": "cifar10_lt"}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, default_rho=100.0)
