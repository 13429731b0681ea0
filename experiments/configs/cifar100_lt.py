"""CIFAR-100-LT: exponential profile (rho=100 by default), ResNet-32, the papers' recipes.

Differences from CIFAR-10-LT: DBN-Mix / SBN-Mix eta=7 (DBN-Mix paper), CP-Mix classifier
fine-tuning at lr 0.5 (CP-Mix appendix B.3). CIFAR-100 needs the python archive or
tensorflow-datasets (not available offline here); see `ltjax.data`.

Usage:
  python -m experiments.train \
      --config=experiments/configs/cifar100_lt.py:method=cp_mix,rho=100 --workdir=/tmp/cp
Arguments: method, rho, profile (exp|step), seed, epochs (rescales the recipe), quick.
"""

from experiments.configs import common

DATASET = {"name": "cifar100_lt"}
_DBN = {"recipe": {"eta": 7.0, "eps": 0.6}}
METHOD_OVERRIDES = {
    "dbn_mix": _DBN,
    "sbn_mix": _DBN,
    "cp_mix": {"finetune": {"lr": 0.5}},
}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, method_overrides=METHOD_OVERRIDES,
                            default_rho=100.0)
