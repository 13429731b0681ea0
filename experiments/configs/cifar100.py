"""Balanced CIFAR-100 (all 50,000 training images), ResNet-32: OTmix's balanced-data table.

The protocol of `cifar10.py` (OTmix sec. 5.3: "the same details as on the CIFAR-LT") on
CIFAR-100, rho=1 (500 images per class), with CIFAR-100-LT's per-dataset changes for the
other methods (`cifar100_lt.py`: DBN-Mix / SBN-Mix eta=7, CP-Mix fine-tuning lr 0.5).
OTmix Table 3 (errors, %): otmix '+ OTmix (Cutmix)' 28.0, otmix_saliency
'+ OTmix (SaliencyMix)' 21.7. CIFAR-100 needs the python archive or tensorflow-datasets
(not available offline here); see `ltjax.data`.

Usage:
  python -m experiments.train \
      --config=experiments/configs/cifar100.py:method=otmix_saliency --workdir=/tmp/ots100
Arguments: as `cifar10.py`.
"""

from experiments.configs import cifar100_lt, cifar10, common

DATASET = {"name": "cifar100_lt"}
# OTmix Table 3 (top-1 errors, %, ResNet-32, balanced CIFAR-100).
TABLE_3 = {"otmix": "'+ OTmix (Cutmix)' (error 28.0)",
           "otmix_saliency": "'+ OTmix (SaliencyMix)' (error 21.7)"}
# CIFAR-100-LT's per-method changes (DBN-Mix / SBN-Mix, CP-Mix) and OTmix's Table 3 rows.
METHOD_OVERRIDES = {**cifar100_lt.METHOD_OVERRIDES, **cifar10.reproduces(TABLE_3, "CIFAR-100")}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=cifar10.BASE,
                            method_overrides=METHOD_OVERRIDES,
                            code_overrides=cifar10.reproduces(TABLE_3, "CIFAR-100", code=True),
                            default_method="otmix", default_rho=1.0)
