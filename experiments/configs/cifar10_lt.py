"""CIFAR-10-LT: exponential profile (rho=100 by default), ResNet-32, the papers' recipes.

Every method trains on its CIFAR-LT protocol (`ltjax.methods.protocols`), as its paper
states it (`protocol=paper`, default) or as its authors' code trains it (`protocol=code`,
which produced the published tables); the resolved config and results.json record which
and the table it reproduces. DBN-Mix eta=3, eps=0.6; CP-Mix fine-tunes the classifier at
lr 0.1 (the protocols' CIFAR-10 values).

Usage:
  python -m experiments.train \
      --config=experiments/configs/cifar10_lt.py:method=dbn_mix,protocol=code,rho=100 \
      --workdir=/tmp/dbn_mix
  python -m experiments.compare --config=experiments/configs/cifar10_lt.py:rho=100 \
      --methods=erm,mixup_drw,dbn_mix --seeds=0,1,2 --workdir=/tmp/cifar10_lt
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick. `--config.dataset.data_dir=PATH` says where the dataset's files are
(default: the search path of `ltjax.data`, `LTJAX_DATA_DIR`).
"""

from experiments.configs import common

DATASET = {"name": "cifar10_lt"}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, default_rho=100.0)
