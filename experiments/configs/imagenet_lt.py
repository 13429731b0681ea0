"""ImageNet-LT (Liu et al. 2019; 1,000 classes, 1,280 to 5 images per class).

The class profile comes with the dataset's file lists (the `rho` argument is unused).
Protocol: ResNet-50, batch 256, SGD momentum 0.9, lr 0.2, wd 2e-4, x0.1 at 60 and 80 of 90
epochs (DBN-Mix paper, "standard schedule"); alpha=0.2 for the mixup family (LOBM,
DBN-Mix). Per method:

- LOBM / LOBM*: ResNet-10, 90 epochs, lr 0.2 with cosine decay (LOBM section 5);
  LOBM* defers at epoch 60.
- DBN-Mix / SBN-Mix: eta=9, eps=0.2 (DBN-Mix paper).
- CP-Mix: batch 192, 180 epochs with cosine decay, lr 0.1, wd 5e-4, stage 2 from 120,
  classifier fine-tuning 10 epochs at lr 0.5 (CP-Mix appendix B.3).
- OTmix: 200 epochs, lr 0.1, x0.1 at 40, x0.01 at 80, x1e-4 at 160 (OTmix section 5).
- DRW variants: DRW from the last decay (epoch 80).

Usage:
  python -m experiments.train --config=experiments/configs/imagenet_lt.py:method=dbn_mix \
      --config.dataset.data_dir=/data/imagenet --workdir=/tmp/inlt
Arguments: method, seed, epochs (rescales the recipe), quick.
"""

from experiments.configs import common

DATASET = {"name": "imagenet_lt"}
BASE = {
    "num_epochs": 90,
    "batch_size": 256,
    "model": {"name": "resnet50"},
    "optim": {"lr": 0.2, "weight_decay": 2e-4},
    "schedule": {"name": "multistep", "warmup_epochs": 5, "milestones": (60, 80),
                 "factors": (0.1, 0.01)},
    "eval_every": 5,
    "checkpoint_every": 1,
    "eval_batch_size": 512,
}
_ALPHA = {"recipe": {"alpha": 0.2}}
_COSINE = {"name": "cosine", "warmup_epochs": 5, "milestones": (), "factors": ()}
_LOBM = {"model": {"name": "resnet10"}, "schedule": _COSINE, "recipe": {"alpha": 0.2}}
_DBN = {"recipe": {"alpha": 0.2, "eta": 9.0, "eps": 0.2}}
_DRW = {"recipe": {"alpha": 0.2, "drw_epoch": 80}}
METHOD_OVERRIDES = {
    "mixup": _ALPHA,
    "mixup_drw": _DRW,
    "remix_drw": _DRW,
    "mamix_drw": _DRW,
    "drw": {"recipe": {"drw_epoch": 80}},
    "ldam_drw": {"recipe": {"drw_epoch": 80}},
    "lobm": _LOBM,
    "lobm_star": common.merge(_LOBM, {"recipe": {"defer_epoch": 60}}),
    "dbn_mix": _DBN,
    "sbn_mix": _DBN,
    "cp_mix": {"num_epochs": 180, "batch_size": 192, "optim": {"lr": 0.1, "weight_decay": 5e-4},
               "schedule": _COSINE, "recipe": {"stage2_epoch": 120},
               "finetune": {"num_epochs": 10, "lr": 0.5}},
    "otmix": {"num_epochs": 200, "optim": {"lr": 0.1},
              "schedule": {"milestones": (40, 80, 160), "factors": (0.1, 0.01, 1e-4)}},
}


def get_config(arg=None):
  return common.make_config(arg, dataset=DATASET, base=BASE,
                            method_overrides=METHOD_OVERRIDES, default_rho=256.0)
