"""CINIC-10-LT: exponential profile (rho=100 by default), ResNet-18, the MAMix paper's recipe.

MAMix paper (Cheng et al.), appendix A.2: "ResNet-18 as our base network ... 200 epochs,
with a batch size of 128, and initial learning rate of 0.1, followed by decaying the
learning rate by 0.01 at the 160 and 180th epochs. We also use linear warm-up". ltjax reads
the decays as the CIFAR-LT schedule of its reference (Cao et al. 2019): x0.01 at 160, x1e-4
at 180, a 5-epoch warm-up; momentum 0.9 and weight decay 2e-4 from the same reference (the
code's config_cinic10.yaml). The paper then says "When DRW was deployed, it was deployed at
the 225th epoch", an epoch of its 300-epoch scheme that a 200-epoch run never reaches; the
DRW methods here start at 160, as the code does for 200 epochs (`epoch // 160`). LDAM's
largest margin 0.5 (the LDAM protocol's). Head-class size 9,000 (CINIC-10's training split),
so rho=100 keeps 90 images of the rarest class; the paper also reports rho 50 and 10 and the
step profile with mu 0.5 (`profile=step`), and rho 200 / 300 (its Tables 3, 4).

Model: `resnet18_cifar` (3x3 stem, no max pool: the code's net/resnet_liu.py); input: pad-4
random crop and horizontal flip, normalised with CINIC-10's mean / std (the code's
dataset/imbalance_dataset.py), on the device. Evaluation: the 90,000 `valid` images (the
code's `ImageFolder(cinic_root + "valid")`; the paper reports "validation accuracy"). Under
`protocol=code` the MAMix methods take the imbalanced-DL code's changes of their CIFAR-LT
protocol (`ltjax.methods.protocols`). Methods the paper does not run on CINIC-10 train on
this protocol and reproduce nothing.

Data layout (`ltjax.data.cinic`): CINIC-10.tar.gz from
https://datashare.ed.ac.uk/handle/10283/3192, or its unpacked folder holding train/, valid/,
test/ (one folder per class of 32x32 PNGs); `--config.dataset.data_dir=PATH`.

Usage:
  python -m experiments.train \
      --config=experiments/configs/cinic10_lt.py:method=mamix_drw,rho=100 \
      --config.dataset.data_dir=/data/cinic10 --workdir=/tmp/cinic
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "cinic10_lt", "eval_split": "valid"}
BASE = {
    "num_epochs": 200,
    "model": {"name": "resnet18_cifar"},
    "schedule": {"warmup_epochs": 5, "milestones": (160, 180), "factors": (0.01, 1e-4)},
    "normalize": "cinic10",
    "reproduces": "nothing: the MAMix paper does not run this method on CINIC-10-LT",
}
# MAMix Table 11 (top-1 validation accuracy, %, ResNet-18, exponential profile, rho=100).
TABLE_11 = {"erm": "ERM (61.08)", "drw": "DRW (63.75)", "ldam_drw": "LDAM-DRW (68.15)",
            "mixup_drw": "Mixup-DRW (71.40)", "remix_drw": "Remix-DRW (71.15)",
            "mamix_drw": "MAMix-DRW (71.76)"}
METHOD_OVERRIDES = common.per_method(
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 160}}),
    *common.table_rows("MAMix Table 11, CINIC-10-LT rho=100", TABLE_11))


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE,
                            method_overrides=METHOD_OVERRIDES, default_rho=100.0)
