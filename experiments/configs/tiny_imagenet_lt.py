"""Tiny-ImageNet-LT: exponential profile (rho=100 by default), ResNet-18, 64x64 images.

MAMix paper (Cheng et al.), appendix A.4: "horizontal flips, followed by taking random crops
of size 64 x 64 from images padded by 8 pixels on each side. We adopted ResNet-18 ... SGD
with momentum of 0.9, weight decay of 2e-4. We trained the model for 120 epochs, with
initial learning rate of 0.1 and batch size of 128. We used linear warm-up rate schedule,
and decay the learning rate by 0.1 at the 90th epoch. When DRW was deployed, it was
deployed at the 90th epoch." `protocol=paper`: that, with a 5-epoch warm-up (Cao et al.
2019). `protocol=code`: the imbalanced-DL code's config_tiny200.yaml trains 200 epochs on
its one 200-epoch schedule (x0.01 at 160, x1e-4 at 180, DRW `epoch // 160`), i.e. the
CIFAR-LT code protocol underneath. LDAM's largest margin 0.5. Head-class size 500 (every
Tiny-ImageNet class); the paper also reports rho 10 and the step profile (mu 0.5).

Model: `resnet18_cifar` (3x3 stem, no max pool: the code's net/resnet_liu.py, global
average pooling of the 8x8 last stage); input: pad-8 random crop and flip, ImageNet mean /
std (the code's dataset/imbalance_dataset.py), on the device. Evaluation: the 10,000
labelled `val` images.

Data layout (`ltjax.data.tiny_imagenet`): tiny-imagenet-200.zip from
http://cs231n.stanford.edu/tiny-imagenet-200.zip, or its unpacked folder (wnids.txt,
train/<wnid>/images/, val/images/ + val/val_annotations.txt);
`--config.dataset.data_dir=PATH`.

Usage:
  python -m experiments.train \
      --config=experiments/configs/tiny_imagenet_lt.py:method=mixup_drw \
      --config.dataset.data_dir=/data/tiny-imagenet-200 --workdir=/tmp/tiny
Arguments: method, protocol (paper|code), rho, profile (exp|step), seed, epochs (rescales
the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "tiny_imagenet_lt"}
BASE = {
    "num_epochs": 120,
    "model": {"name": "resnet18_cifar"},
    "schedule": {"warmup_epochs": 5, "milestones": (90,), "factors": (0.1,)},
    "augment": {"pad": 8},
    "normalize": "imagenet",
    "reproduces": "nothing: the MAMix paper does not run this method on Tiny-ImageNet-LT",
}
# MAMix Table 14 (top-1 validation accuracy, %, ResNet-18, exponential profile, rho=100).
TABLE_14 = {"erm": "ERM (32.86)", "drw": "DRW (33.81)", "ldam_drw": "LDAM-DRW (31.90)",
            "mixup_drw": "Mixup-DRW (37.97)", "remix_drw": "Remix-DRW (36.89)",
            "mamix_drw": "MAMix-DRW (37.73)"}
METHOD_OVERRIDES = common.per_method(
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 90}}),
    *common.table_rows("MAMix Table 14, Tiny-ImageNet-LT rho=100", TABLE_14))
# The code trains 200 epochs on its CIFAR-LT schedule (the protocol underneath).
CODE_OVERRIDES = {name: {"num_epochs": 200, "schedule": {"warmup_epochs": 5,
                                                         "milestones": (160, 180),
                                                         "factors": (0.01, 1e-4)},
                         **({"recipe": {"drw_epoch": 160}} if name in common.DRW_METHODS
                            else {})}
                  for name in common.protocols.PROTOCOLS}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE,
                            method_overrides=METHOD_OVERRIDES, code_overrides=CODE_OVERRIDES,
                            default_rho=100.0)
