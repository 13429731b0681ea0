"""Places-LT (Liu et al. 2019; 365 classes, 4,980 to 5 images per class).

The class profile comes with the dataset's file lists (the `rho` argument is unused).
Base protocol, CP-Mix's (Table 6, appendix B.3.3), for every method: 30 epochs, batch 128,
lr 0.01, x0.1 at 5 and 15, wd 5e-4, no warm-up; DRW from the last decay (15), LOBM* defers
at the first (5). `protocol=paper|code` picks each method's CIFAR-LT protocol underneath
(`ltjax.methods.protocols`). CP-Mix: stage 2 from epoch 15, alpha=1.0,
gamma_cp=gamma_mix=2.0, no classifier fine-tuning (CP-Mix Table 2, Places-LT). The papers
start from an ImageNet-pretrained ResNet-152; ltjax has no pretrained weights, so the
default model is a ResNet-50 from scratch and numbers are not comparable with the papers'.

Usage:
  python -m experiments.train --config=experiments/configs/places_lt.py:method=cp_mix \
      --config.dataset.data_dir=/data/places365 --workdir=/tmp/places
Arguments: method, protocol (paper|code), seed, epochs (rescales the protocol), quick.
"""

from experiments.configs import common

DATASET = {"name": "places_lt"}
BASE = {
    "num_epochs": 30,
    "batch_size": 128,
    "model": {"name": "resnet50"},
    "optim": {"lr": 0.01, "weight_decay": 5e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 0, "milestones": (5, 15),
                 "factors": (0.1, 0.01)},
    "eval_every": 1,
    "checkpoint_every": 1,
    "eval_batch_size": 512,
    "reproduces": "nothing: no paper gives this method's Places-LT recipe",
}
METHOD_OVERRIDES = common.per_method(
    (common.DRW_METHODS, {"recipe": {"drw_epoch": 15}}),
    (("lobm_star",), {"recipe": {"defer_epoch": 5}}),
    (("cp_mix",), {"recipe": {"stage2_epoch": 15, "alpha": 1.0, "gamma_cp": 2.0,
                              "gamma_mix": 2.0},
                   "finetune": {"num_epochs": 0},
                   "reproduces": "nothing exactly: CP-Mix Table 2, Places-LT, starts from an "
                                 "ImageNet-pretrained ResNet-152"}),
)


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE, method_overrides=METHOD_OVERRIDES,
                            default_rho=996.0)
