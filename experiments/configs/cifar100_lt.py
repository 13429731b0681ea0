"""CIFAR-100-LT: exponential profile (rho=100 by default), ResNet-32, the papers' recipes.

Every method trains on its CIFAR-LT protocol (`ltjax.methods.protocols`), `protocol=paper`
(default) or `protocol=code` (the authors' code, which produced the published tables).
Differences from CIFAR-10-LT, in both protocols: DBN-Mix / SBN-Mix eta=7 (DBN-Mix sec. 4.2;
the code's experiments/cifar100.sh), CP-Mix classifier fine-tuning at lr 0.5 (CP-Mix
appendix B.3.1). Under protocol=code, DBN-Mix / SBN-Mix normalise with the CIFAR-100
statistics of their code. CIFAR-100 needs the python archive or tensorflow-datasets (not
available offline here); see `ltjax.data`.

Usage:
  python -m experiments.train \
      --config=experiments/configs/cifar100_lt.py:method=cp_mix,rho=100 --workdir=/tmp/cp
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick. `--config.dataset.data_dir=PATH` says where the dataset's files are
(default: the search path of `ltjax.data`, `LTJAX_DATA_DIR`).
"""

from experiments.configs import common

DATASET = {"name": "cifar100_lt"}
METHOD_OVERRIDES = common.per_method(
    (("dbn_mix", "sbn_mix"), {"recipe": {"eta": 7.0}}),
    (("cp_mix",), {"finetune": {"lr": 0.5}}),
)


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, method_overrides=METHOD_OVERRIDES,
                            default_rho=100.0)
